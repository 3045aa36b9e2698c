"""Write the bundled Amazon sample (data/samples/amazon/{trn,tst}.json) in the LF-AmazonTitles layout.

The records are generated from templates so the repository ships no third-party text. They keep
the quirks the cleaning step exists for: HTML tags and entities, doubled whitespace, a few empty
descriptions and exact duplicates. Run once; the output is committed.

    python scripts/make_amazon_sample.py
"""

import json
import random
from pathlib import Path

BRANDS = ["Acme", "Northwind", "Bluepeak", "Solace", "Trailhead", "Kitchenly", "Voltix", "Evergreen",
          "Brightline", "Cozyhome", "Urbanfit", "Aquaflow"]
PRODUCTS = {
    "running shoes": ("footwear", ["breathable mesh upper", "cushioned midsole", "rubber outsole"]),
    "coffee maker": ("kitchen", ["programmable timer", "glass carafe", "auto shut-off"]),
    "wireless earbuds": ("audio", ["noise cancelling", "charging case", "touch controls"]),
    "yoga mat": ("fitness", ["non-slip surface", "extra thick padding", "carrying strap"]),
    "water bottle": ("outdoor", ["double wall insulation", "leak-proof lid", "stainless steel body"]),
    "desk lamp": ("home", ["adjustable arm", "dimmable LED", "USB charging port"]),
    "backpack": ("travel", ["padded laptop sleeve", "water resistant fabric", "hidden pocket"]),
    "chef knife": ("kitchen", ["high carbon blade", "ergonomic handle", "full tang"]),
    "phone case": ("electronics", ["shock absorbing corners", "slim profile", "raised bezel"]),
    "throw blanket": ("home", ["soft fleece", "machine washable", "oversized fit"]),
    "hiking boots": ("footwear", ["waterproof leather", "ankle support", "lug outsole"]),
    "bluetooth speaker": ("audio", ["deep bass", "12 hour battery", "splash proof design"]),
}
COLORS = ["Black", "White", "Navy", "Red", "Grey", "Green", "Blue", "Pink"]
SIZES = ["Small", "Medium", "Large", "2-Pack", "Pro", "Lite", "XL"]
OPENERS = ["The {brand} {product} is designed for everyday use.",
           "Meet the {brand} {product}, built for comfort and durability.",
           "This {color} {product} from {brand} combines style and function."]
USES = {"footwear": "Ideal for walking, running and long days on your feet.",
        "kitchen": "Perfect for busy mornings and home cooking.",
        "audio": "Enjoy clear sound at home, at work or on the go.",
        "fitness": "Great for yoga, pilates and home workouts.",
        "outdoor": "Keeps drinks cold on hikes, trips and at the gym.",
        "home": "Adds comfort and light to any room.",
        "travel": "Made for commuting, school and weekend trips.",
        "electronics": "Protects your phone from drops and scratches."}
HTML_WRAPS = ["<p>{}</p>", "{}<br/>", "<b>{}</b>", "{}"]


def make_record(rng: random.Random, uid: int) -> dict:
    brand = rng.choice(BRANDS)
    product, (category, features) = rng.choice(sorted(PRODUCTS.items()))
    color, size = rng.choice(COLORS), rng.choice(SIZES)
    title = f"{brand} {product.title()} - {color}, {size}"
    feats = rng.sample(features, k=rng.randint(2, 3))
    sentences = [rng.choice(OPENERS).format(brand=brand, product=product, color=color.lower()),
                 f"It features {', '.join(feats[:-1])} and {feats[-1]}.",
                 USES[category]]
    if rng.random() < 0.5:
        sentences.append(f"Available in {color.lower()}, size {size.lower()}.")
    content = "  ".join(rng.choice(HTML_WRAPS).format(s) for s in sentences)
    content = content.replace(" and ", " &amp; ", 1) if rng.random() < 0.3 else content
    return {"uid": f"B{uid:09d}", "title": title, "content": content,
            "target_ind": [rng.randrange(10_000)], "target_rel": [1.0]}


def main() -> None:
    rng = random.Random(1234)
    out = Path(__file__).resolve().parents[1] / "data" / "samples" / "amazon"
    out.mkdir(parents=True, exist_ok=True)
    records = [make_record(rng, i) for i in range(600)]
    for i in (17, 233):  # empty descriptions, as in the real dump
        records[i]["content"] = ""
    records += [dict(records[5]), dict(records[42])]  # exact duplicates
    rng.shuffle(records)
    for name, part in (("trn.json", records[:500]), ("tst.json", records[500:])):
        with open(out / name, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in part)
    print(f"wrote {len(records)} records to {out}")


if __name__ == "__main__":
    main()
