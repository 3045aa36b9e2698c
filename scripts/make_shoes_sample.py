"""Write the bundled shoe sample (data/samples/shoes/) in the Hugging Face imagefolder layout.

The images are drawn procedurally with PIL (side views of casual shoes: sole, upper, toe cap,
laces or a strap, in varied colours on light backgrounds), so the repository ships no third-party
photos. Each is drawn at 4x and downsampled to 64x64 for smooth edges. The folder holds:

  - train/*.png + train/metadata.jsonl: 48 images, one line {"file_name", "text"} per image with a
    caption such as "a photo of a red casual sneaker with white laces on a white background";
  - real/*.png: 16 held-out images, drawn the same way with another seed (for FID/KID, no captions);
  - prompts.txt: 8 validation prompts, one per line.

Generation is deterministic (random.Random(64) for train, 65 for real): running the script twice
yields identical bytes. Run once; the output is committed.

    python scripts/make_shoes_sample.py
"""

import json
import random
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

SIZE, SCALE = 64, 4
COLORS = {"red": (200, 40, 45), "blue": (40, 90, 200), "black": (30, 30, 34), "white": (238, 238, 236),
          "green": (50, 140, 70), "yellow": (235, 200, 40), "grey": (128, 128, 132), "pink": (235, 130, 170),
          "navy": (25, 40, 90), "brown": (120, 75, 40), "orange": (240, 130, 30), "purple": (120, 60, 160)}
BACKGROUNDS = {"white": (255, 255, 255), "light grey": (228, 228, 230), "cream": (247, 240, 222),
               "pale blue": (222, 234, 247)}
SOLES = {"white": (245, 245, 245), "black": (35, 35, 35), "gum": (190, 140, 80)}
# style -> (collar height: 0 low .. 1 high-top, laced, heel block)
STYLES = {"casual sneaker": (0.0, True, False), "high-top sneaker": (1.0, True, False),
          "canvas shoe": (0.1, True, False), "slip-on shoe": (0.0, False, False),
          "loafer": (0.0, False, True), "chelsea boot": (0.8, False, True)}
PROMPTS = ["a photo of a red casual sneaker with white laces on a white background",
           "a photo of a black high-top sneaker with white laces on a light grey background",
           "a photo of a blue canvas shoe with a white sole on a cream background",
           "a photo of a brown loafer with a black sole on a white background",
           "a photo of a green slip-on shoe with a gum sole on a pale blue background",
           "a photo of a navy chelsea boot with a black sole on a white background",
           "a photo of a yellow casual sneaker with black laces on a pale blue background",
           "a photo of a pink high-top sneaker with white laces on a cream background"]


def draw_shoe(rng: random.Random, style: str, color: str, accent: str, sole: str, background: str) -> Image.Image:
    """One side view, toe to the right, drawn at SCALE x and downsampled."""
    s = SIZE * SCALE
    img = Image.new("RGB", (s, s), BACKGROUNDS[background])
    d = ImageDraw.Draw(img)
    collar, laced, heel = STYLES[style]
    u = s / 64  # drawing unit: coordinates below are on a 64-pixel grid
    jx, jy = rng.uniform(-3, 3) * u, rng.uniform(-2, 2) * u  # small position jitter

    def p(x, y):
        return (x * u + jx, y * u + jy)

    body, trim, sole_rgb = COLORS[color], COLORS[accent], SOLES[sole]
    shadow = tuple(int(c * 0.85) for c in BACKGROUNDS[background])
    d.ellipse([*p(8, 50), *p(56, 54)], fill=shadow)
    top = 38 - 22 * collar  # collar height at the heel
    upper = [p(9, 47), p(9, top), p(14, top - 1), p(20, top + 4), p(26, top + 2), p(30, 30 - 4 * collar),
             p(36, 34), p(48, 39), p(55, 43), p(56, 47)]
    d.polygon(upper, fill=body)
    d.polygon([p(45, 38), p(53, 41), p(56, 47), p(45, 47)], fill=trim if style == "canvas shoe" else body)  # toe cap
    d.line([p(20, 44), p(46, 44)], fill=trim, width=int(u))  # stitching line
    if laced:  # short crossings along the vamp, from the tongue towards the toe
        n = 3 + int(2 * collar)
        for i in range(n):
            x = 39 - 3 * (n - 1 - i)
            y = 35 - 4 * collar * (n - 1 - i) / max(n - 1, 1) - 0.6 * (n - 1 - i)
            d.line([p(x - 2, y - 2), p(x + 2, y + 2)], fill=trim, width=int(1.5 * u))
    elif style == "loafer":
        d.rectangle([*p(32, 34), *p(40, 37)], fill=trim)  # penny strap
    else:
        d.polygon([p(13, top + 2), p(18, top + 2), p(15.5, 44)], fill=trim)  # elastic gore
    if collar > 0.5:
        d.ellipse([*p(12, 26), *p(17, 31)], fill=trim)  # ankle patch
    if heel:
        d.rectangle([*p(9, 47), *p(17, 53)], fill=sole_rgb)
        d.rounded_rectangle([*p(17, 47), *p(57, 50)], radius=2 * u, fill=sole_rgb)
    else:
        d.rounded_rectangle([*p(7, 46), *p(58, 52)], radius=2.5 * u, fill=sole_rgb)
        d.line([p(9, 49), p(56, 49)], fill=tuple(max(c - 40, 0) for c in sole_rgb), width=int(u))  # foxing
    return img.resize((SIZE, SIZE), Image.LANCZOS)


def caption(style: str, color: str, accent: str, sole: str, background: str) -> str:
    detail = f"{accent} laces" if STYLES[style][1] else f"a {sole} sole"
    article = "an" if color[0] in "aeiou" else "a"
    return f"a photo of {article} {color} {style} with {detail} on a {background} background"


def make_images(seed: int, n: int, out: Path, prefix: str) -> list[dict]:
    rng = random.Random(seed)
    out.mkdir(parents=True)
    rows = []
    for i in range(n):
        style = rng.choice(sorted(STYLES))
        color = rng.choice(sorted(COLORS))
        accent = rng.choice([c for c in ("white", "black", "red", "navy") if c != color])
        sole = rng.choice(sorted(SOLES))
        background = rng.choice(sorted(BACKGROUNDS))
        name = f"{prefix}_{i:03d}.png"
        draw_shoe(rng, style, color, accent, sole, background).save(out / name, optimize=True)
        rows.append({"file_name": name, "text": caption(style, color, accent, sole, background)})
    return rows


def main() -> None:
    out = Path(__file__).resolve().parents[1] / "data" / "samples" / "shoes"
    shutil.rmtree(out, ignore_errors=True)  # regenerate from scratch: no stale images
    rows = make_images(64, 48, out / "train", "shoe")
    with open(out / "train" / "metadata.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    make_images(65, 16, out / "real", "real")
    (out / "prompts.txt").write_text("# validation prompts, one per line (blank lines and # comments ignored)\n"
                                     + "\n".join(PROMPTS) + "\n", encoding="utf-8")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote 48 training images, 16 real images and {len(PROMPTS)} prompts to {out} ({size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
