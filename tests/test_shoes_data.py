"""Shoe image datamodule: imagefolder captions, transforms, prompt library, real images, errors, config."""

import csv
import json

import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from src.datamodules.shoes import DEFAULT_PROMPTS, ShoeImagesDataModule
from src.errors import UserError
from tests.conftest import ROOT, compose_config, connect

RED, BLUE, WHITE, BLACK = (255, 0, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def half_and_half(size=(40, 40), left=RED, right=BLUE) -> Image.Image:
    img = Image.new("RGB", size, right)
    img.paste(left, (0, 0, size[0] // 2, size[1]))
    return img


def make_folder(path, names, metadata=None, image=None):
    """Images ``names`` in ``path``; ``metadata`` "jsonl" or "csv" writes captions "caption of <name>"."""
    path.mkdir(parents=True, exist_ok=True)
    for name in names:
        (image or half_and_half()).save(path / name)
    rows = [{"file_name": n, "text": f"caption of {n}"} for n in names]
    if metadata == "jsonl":
        (path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif metadata == "csv":
        with open(path / "metadata.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, ["file_name", "text"])
            writer.writeheader()
            writer.writerows(rows)
    return path


def make_dm(data_dir, resolution=16, **kwargs):
    kwargs = {"real_dir": None, "batch_size": 4, **kwargs}
    dm = connect(ShoeImagesDataModule(data_dir=str(data_dir), **kwargs), family="diffusion", resolution=resolution)
    dm.prepare_data()
    dm.setup()
    return dm


def all_training_items(dm):
    batches = list(dm.train_dataloader())
    return torch.cat([b["pixel_values"] for b in batches]), [c for b in batches for c in b["caption"]]


def test_training_batches_are_square_float_tensors_in_minus_one_to_one(tmp_path):
    data = make_folder(tmp_path / "train", [f"s{i}.png" for i in range(6)], "jsonl",
                       image=Image.new("RGB", (30, 20), (200, 100, 0)))
    real = make_folder(tmp_path / "real", ["r0.png", "r1.png"])
    batch = next(iter(make_dm(data, real_dir=str(real)).train_dataloader()))
    assert set(batch) == {"pixel_values", "caption"}
    pixels = batch["pixel_values"]
    assert pixels.shape == (4, 3, 16, 16) and pixels.dtype == torch.float32
    assert pixels.min() >= -1 and pixels.max() <= 1
    # (200, 100, 0) maps to 200/127.5-1, 100/127.5-1, -1: the scaling is exact, not just in range
    assert torch.allclose(pixels[0, :, 8, 8], torch.tensor([200 / 127.5 - 1, 100 / 127.5 - 1, -1.0]), atol=0.02)
    assert isinstance(batch["caption"], list) and all(isinstance(c, str) for c in batch["caption"])


@pytest.mark.parametrize("metadata", ["jsonl", "csv"])
def test_captions_come_from_the_metadata_file(tmp_path, metadata):
    names = ["a.png", "b.png", "c.png"]
    data = make_folder(tmp_path / "train", names, metadata)
    make_folder(tmp_path / "train", ["not_listed.png"])  # imagefolder: only listed images are used
    dm = make_dm(data, real_dir=str(make_folder(tmp_path / "real", ["r.png"])))
    _, captions = all_training_items(dm)
    assert sorted(captions) == [f"caption of {n}" for n in names]


def test_captions_come_from_the_template_without_metadata(tmp_path):
    data = make_folder(tmp_path / "train", ["red_suede-loafer.png", "blue_sneaker.png"])
    dm = make_dm(data, real_dir=str(make_folder(tmp_path / "real", ["r.png"])), caption_template="a photo of {name}, product shot")
    _, captions = all_training_items(dm)
    assert sorted(captions) == ["a photo of blue sneaker, product shot", "a photo of red suede loafer, product shot"]


def test_center_crop_of_a_wide_image_keeps_the_centre(tmp_path):
    # 96x64: red bands on the outer 16 px each side, a white square in the middle, black elsewhere.
    # Resized to 24x16 (shorter side 16) the bands are the outer 4 px: a centre crop drops them entirely.
    img = Image.new("RGB", (96, 64), BLACK)
    img.paste(RED, (0, 0, 16, 64))
    img.paste(RED, (80, 0, 96, 64))
    img.paste(WHITE, (32, 16, 64, 48))
    data = make_folder(tmp_path / "train", ["wide.png"], image=img)
    dm = make_dm(data, real_dir=str(make_folder(tmp_path / "real", ["wide.png"], image=img)), random_flip=False)
    pixels, _ = all_training_items(dm)
    crop = ((pixels[0] + 1) * 127.5).round()
    assert crop.shape == (3, 16, 16)
    red = (crop[0] > 128) & (crop[1] < 64) & (crop[2] < 64)
    assert not red.any(), "the crop reached the red side bands: not centred"
    assert (crop[:, 8, 8] > 200).all() and (crop[:, 0, 8] < 60).all()  # white centre, black above it
    real = dm.real_images()[0]  # the real images use the same centre crop
    assert real.dtype == torch.uint8 and not ((real[0] > 128) & (real[1] < 64)).any()


def test_random_flip_flips_some_images_reproducibly_from_the_seed(tmp_path):
    names = [f"s{i:02d}.png" for i in range(16)]
    data = make_folder(tmp_path / "train", names)  # every image: red left half, blue right half
    real = str(make_folder(tmp_path / "real", ["r.png"]))

    def flipped(dm):
        pixels, _ = all_training_items(dm)
        return (pixels[:, 2, :, 0] > 0).all(dim=1).tolist()  # blue on the left edge: mirrored

    first = flipped(make_dm(data, real_dir=real, seed=7))
    assert 0 < sum(first) < len(names)
    assert flipped(make_dm(data, real_dir=real, seed=7)) == first  # the datamodule's seed decides the flips
    assert not any(flipped(make_dm(data, real_dir=real, seed=7, random_flip=False)))
    torch.manual_seed(0)
    a = flipped(make_dm(data, real_dir=real, seed=7))
    torch.manual_seed(1)
    assert flipped(make_dm(data, real_dir=real, seed=7)) == a  # independent of torch's global RNG


def test_shuffle_order_depends_on_seed_and_epoch(tmp_path):
    data = make_folder(tmp_path / "train", [f"s{i:02d}.png" for i in range(12)], "jsonl")
    real = str(make_folder(tmp_path / "real", ["r.png"]))
    dm = make_dm(data, real_dir=real, seed=3, random_flip=False)
    loader = dm.train_dataloader()
    epoch0 = [c for b in loader for c in b["caption"]]
    epoch1 = [c for b in loader for c in b["caption"]]
    assert epoch0 != epoch1 and sorted(epoch0) == sorted(epoch1)
    loader.sampler.set_epoch(0)  # what Lightning does on resume
    assert [c for b in loader for c in b["caption"]] == epoch0
    assert all_training_items(make_dm(data, real_dir=real, seed=3))[1] == epoch0


def test_val_and_test_batches_are_prompts_with_fixed_seeds(tmp_path):
    data = make_folder(tmp_path / "train", ["a.png", "b.png"])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# a comment\nfirst prompt\n\n  second prompt  \nthird prompt\nfourth prompt\n")
    dm = make_dm(data, prompts_file=str(prompts), eval_batch_size=2, limit_val_prompts=3)
    first = list(dm.val_dataloader())
    assert first == [{"prompt": ["first prompt", "second prompt"], "seed": [0, 1]},
                     {"prompt": ["third prompt"], "seed": [2]}]
    assert list(dm.val_dataloader()) == first and list(dm.test_dataloader()) == first
    for missing in (None, str(tmp_path / "no_such_prompts.txt")):
        dm = make_dm(data, prompts_file=missing, eval_batch_size=8)
        (batch,) = list(dm.val_dataloader())
        assert batch["prompt"] == list(DEFAULT_PROMPTS) and batch["seed"] == [0, 1, 2, 3]


def test_real_images_are_uint8_and_computed_once(tmp_path):
    data = make_folder(tmp_path / "train", ["a.png", "b.png"])
    real = make_folder(tmp_path / "real", ["r0.png", "r1.png", "r2.png"], image=half_and_half((50, 30)))
    dm = make_dm(data, real_dir=str(real), resolution=24)
    images = dm.real_images()
    assert images.shape == (3, 3, 24, 24) and images.dtype == torch.uint8
    assert dm.real_images() is images
    assert images[:, 0, :, 0].min() > 200 and images[:, 2, :, -1].min() > 200  # never flipped: red stays left
    assert dm.report() == {"name": "ShoeImagesDataModule", "train_images": 2, "real_images": 3,
                           "real_source": str(real), "prompts": 4, "resolution": 24}


def test_without_real_dir_the_last_fifth_by_name_is_held_out(tmp_path):
    names = [f"img_{i:02d}.png" for i in range(10)]
    data = make_folder(tmp_path / "train", list(reversed(names)), "jsonl")  # metadata order must not matter
    dm = make_dm(data, real_dir=None)
    assert [p.name for p in dm.real_paths] == names[8:]
    _, captions = all_training_items(dm)
    assert sorted(captions) == [f"caption of {n}" for n in names[:8]]
    assert dm.real_images().shape == (2, 3, 16, 16)
    dm.setup()  # idempotent
    assert dm.report()["train_images"] == 8 and dm.report()["real_images"] == 2


def test_a_metadata_row_naming_a_missing_file_stops_at_setup(tmp_path):
    data = make_folder(tmp_path / "train", ["a.png", "b.png"], "jsonl")
    (data / "b.png").unlink()
    with pytest.raises(UserError) as err:
        make_dm(data)
    message = str(err.value)
    assert "\n" not in message and str(data / "b.png") in message and "metadata row" in message


def test_a_truncated_png_is_named_when_read(tmp_path):
    data = make_folder(tmp_path / "train", [f"s{i}.png" for i in range(5)], image=Image.effect_noise((32, 32), 64))
    bad = data / "s1.png"
    bad.write_bytes(bad.read_bytes()[:200])
    dm = make_dm(data, real_dir=str(make_folder(tmp_path / "real", ["r.png"])))  # existence is all setup checks
    with pytest.raises(UserError) as err:
        all_training_items(dm)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"cannot read image {bad}: ") and "fix or remove" in message
    with pytest.raises(UserError, match="cannot read image .*s1.png"):  # a bad real image too
        make_dm(tmp_path / "real", real_dir=str(data)).real_images()


def test_missing_folders_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="image folder not found: .*nowhere — set data.data_dir"):
        ShoeImagesDataModule(data_dir=str(tmp_path / "nowhere")).prepare_data()
    data = make_folder(tmp_path / "train", ["a.png"])
    with pytest.raises(UserError, match="real-image folder not found"):
        ShoeImagesDataModule(data_dir=str(data), real_dir=str(tmp_path / "nope")).prepare_data()
    with pytest.raises(UserError, match="no images"):
        make_dm(make_folder(tmp_path / "empty", []))


def test_images_are_read_at_the_models_resolution_and_a_different_data_resolution_is_one_line(tmp_path):
    data = make_folder(tmp_path / "train", [f"s{i}.png" for i in range(5)])
    assert next(iter(make_dm(data, resolution=24).train_dataloader()))["pixel_values"].shape[-1] == 24
    with pytest.raises(UserError) as err:
        connect(ShoeImagesDataModule(data_dir=str(data), resolution=32), family="diffusion", resolution=64)
    assert str(err.value) == ("data.resolution=32 but model.resolution=64: the images are read at the model's "
                              "resolution — set model.resolution, and leave data.resolution=null")
    connect(ShoeImagesDataModule(data_dir=str(data), resolution=64), family="diffusion", resolution=64)  # runs saved
    # before the model owned the resolution set both to the same value
    with pytest.raises(RuntimeError, match="not connected to a model"):
        ShoeImagesDataModule(data_dir=str(data)).setup()


def test_bundled_sample_through_the_config(tmp_path):
    cfg = compose_config("train", ["data=shoes"], tmp_path)
    dm = connect(instantiate(cfg.data), family="diffusion", resolution=64)
    assert isinstance(dm, ShoeImagesDataModule) and dm.hparams.seed == cfg.seed
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (4, 3, 64, 64) and len(batch["caption"]) == 4
    assert all(c.startswith("a photo of a") for c in batch["caption"])
    val = next(iter(dm.val_dataloader()))
    assert val["seed"] == [0, 1, 2, 3] and all("shoe" in p or "sneaker" in p or "loafer" in p or "boot" in p
                                                 for p in val["prompt"])
    assert dm.report() == {"name": "ShoeImagesDataModule", "train_images": 48, "real_images": 16,
                           "real_source": str(ROOT / "data/samples/shoes/real"), "prompts": 8, "resolution": 64}
    assert dm.real_images().shape == (16, 3, 64, 64)
    size = sum(f.stat().st_size for f in (ROOT / "data/samples/shoes").rglob("*") if f.is_file())
    assert size < 1_000_000
