"""Folders as users have them: broken files checked before training, left out and reported (or refused with
--strict), layout problems in one line, and every readable kind of image decoded the same way in training and
serving."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from tailorrt.errors import DatasetMissingError
from tailorrt.images import to_batch
from tailorrt.rgb import EXIF_ORIENTATION, to_rgb
from tailorrt.training import image_check
from tailorrt.training.datasets import DataCheck, ImageFiles, Preprocess, TensorTransform, load_task
from tailorrt.training.image_check import CheckCache, check_files, file_problem
from tests.conftest import QUICK, class_image, make_imagefolder, one_line_error, run_cli
from tests.test_datasets import BUILDERS

PRE = Preprocess(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
RNG = np.random.default_rng(3)


def _jpeg(size=(24, 16)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def awkward_images(d):
    """One readable file of each awkward kind; returns their names."""
    d.mkdir(parents=True, exist_ok=True)
    Image.new("CMYK", (20, 20), (0, 200, 200, 0)).save(d / "cmyk.jpg")
    Image.fromarray((np.arange(400).reshape(20, 20) * 160).astype(np.uint16)).save(d / "grey16.png")
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 220, 128
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    class_image(0, RNG).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(d / "palette.gif")
    upright = Image.new("RGB", (24, 12), (200, 30, 30))
    upright.paste((30, 30, 200), (0, 0, 12, 12))  # left half blue: rotation shows
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored rotated: a viewer turns it 90 degrees clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(d / "rotated.jpg", exif=exif, quality=95)
    return ["cmyk.jpg", "grey16.png", "rgba.png", "palette.gif", "rotated.jpg"]


def broken_files(d):
    """The three unreadable files of the issue and two that are not images; returns {name: reason}."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "empty.jpg").write_bytes(b"")
    data = _jpeg((64, 64))
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "page.jpg").write_text("<html><body>404 Not Found</body></html>")
    (d / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    (d / "notes.txt").write_text("labels checked by hand\n")
    return {"empty.jpg": "empty", "truncated.jpg": "truncated", "page.jpg": "not an image"}


def messy_folder(root, per_class=8):
    """Two colour classes of good PNGs; class0 also holds the awkward and the broken files."""
    make_imagefolder(root, classes=2, per_class=per_class)
    awkward_images(root / "class0")
    return broken_files(root / "class0")


def test_each_kind_of_file_gets_its_verdict(tmp_path):
    broken = broken_files(tmp_path)
    for name in awkward_images(tmp_path):
        assert file_problem(tmp_path / name) is None, name
    for name, why in broken.items():
        assert file_problem(tmp_path / name) == why, name
    Image.new("RGB", (8, 8)).save(tmp_path / "scan.tiff")
    assert file_problem(tmp_path / "scan.tiff").startswith("TIFF is not an allowed format")
    assert file_problem(tmp_path / "gone.jpg").startswith("missing")
    # a JPEG with bytes after its end marker is not proven by its tail: it is decoded in full, and is fine
    (tmp_path / "padded.jpg").write_bytes(_jpeg() + b"trailing junk" * 8)
    assert file_problem(tmp_path / "padded.jpg") is None
    png = (tmp_path / "grey16.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(png[:-30])
    assert file_problem(tmp_path / "cut.png") is not None


def test_to_rgb_scales_16_bit_and_turns_exif_rotated_images_upright(tmp_path):
    awkward_images(tmp_path)
    grey = Image.open(tmp_path / "grey16.png")
    assert grey.mode == "I;16"
    want = np.rint(np.asarray(grey, np.float64) / 257).astype(np.uint8)
    got = np.asarray(to_rgb(grey))
    assert got.shape == (20, 20, 3) and (got[..., 0] == want).all()  # scaled, not clipped at 255
    assert np.asarray(grey.convert("RGB")).mean() > 250 > got.mean()  # what PIL alone would have given
    rotated = Image.open(tmp_path / "rotated.jpg")
    assert rotated.size == (12, 24)
    upright = np.asarray(to_rgb(rotated)).astype(int)
    assert upright.shape == (12, 24, 3)
    assert upright[6, 3, 2] > 150 > upright[6, 20, 2]  # blue on the left, where it was drawn
    for name in ("cmyk.jpg", "rgba.png", "palette.gif"):
        assert to_rgb(Image.open(tmp_path / name)).mode == "RGB"
    assert tuple(np.asarray(to_rgb(Image.open(tmp_path / "rgba.png")))[0, 0]) == (220, 0, 0)  # alpha dropped


def test_training_and_serving_see_the_same_tensor_for_every_kind(tmp_path):
    names = awkward_images(tmp_path)
    files = ImageFiles([(tmp_path / n, 0) for n in names], TensorTransform(PRE))
    served = to_batch([(tmp_path / n).read_bytes() for n in names], PRE)
    for i, name in enumerate(names):
        assert np.array_equal(files[i][0].numpy(), np.asarray(served[i])), name


def test_the_check_reads_its_cache_and_rechecks_changed_files(tmp_path, monkeypatch):
    make_imagefolder(tmp_path / "d", classes=2, per_class=5)
    paths = sorted((tmp_path / "d").rglob("*.png"))
    cache_file = tmp_path / "cache.json"
    first = check_files(paths, cache=CheckCache(cache_file))
    assert first.files == 10 and first.cached == 0 and not first.problems
    calls = []
    real = image_check.file_problem
    monkeypatch.setattr(image_check, "file_problem", lambda p, f: calls.append(p) or real(p, f))
    again = check_files(paths, cache=CheckCache(cache_file))
    assert again.cached == 10 and calls == []  # read from the cache, no file opened
    paths[0].write_bytes(b"")  # changed since: its size and mtime differ
    third = check_files(paths, cache=CheckCache(cache_file))
    assert calls == [paths[0]] and third.problems == {paths[0]: "empty"}


def test_broken_files_are_left_out_and_reported(tmp_path):
    broken = messy_folder(tmp_path / "messy")
    lines = []
    data = load_task(f"imagefolder:{tmp_path / 'messy'}", data_dir=tmp_path, preprocess=PRE,
                     check=DataCheck(report=lines.append))
    assert data.classes == ["class0", "class1"]
    assert len(data.train) + len(data.val) + len(data.test) == 2 * 8 + 5
    skipped = {s.path: s.reason for s in data.files.skipped}
    assert skipped == {f"class0/{n}": why for n, why in broken.items()}
    assert any(l.startswith("skipped 3 of 24 image files: class0/empty.jpg (empty), ") for l in lines), lines
    assert any(l.startswith("ignored 2 files that are not images") for l in lines), lines
    for split in (data.train, data.val, data.test):  # every image that is left decodes
        for i in range(len(split)):
            assert split[i][0].shape == (3, 16, 16)
    with pytest.raises(DatasetMissingError, match=r"^3 of 24 image files cannot be read \(--strict\): class0/emp"):
        load_task(f"imagefolder:{tmp_path / 'messy'}", data_dir=tmp_path, preprocess=PRE,
                  check=DataCheck(strict=True))


def test_layout_problems_are_one_line_each(tmp_path):
    root = make_imagefolder(tmp_path / "a", classes=3, per_class=6)
    (root / "empty-class").mkdir()
    (root / "broken-class").mkdir()
    (root / "broken-class" / "x.jpg").write_bytes(b"")
    class_image(0, RNG).save(root / "stray.png")
    lines = []
    data = load_task(f"imagefolder:{root}", data_dir=tmp_path, preprocess=PRE, check=DataCheck(report=lines.append))
    assert data.classes == ["class0", "class1", "class2"]
    assert "dropped 2 class folders without a readable image: broken-class/, empty-class/" in lines
    assert any("images lie directly in" in l and "stray.png" in l for l in lines)
    with pytest.raises(DatasetMissingError, match=r"1 of 19 image files cannot be read \(--strict\): broken-cl"):
        load_task(f"imagefolder:{root}", data_dir=tmp_path, preprocess=PRE, check=DataCheck(strict=True))
    (root / "broken-class" / "x.jpg").unlink()
    with pytest.raises(DatasetMissingError, match="class folders without a readable image: broken-class/, empty"):
        load_task(f"imagefolder:{root}", data_dir=tmp_path, preprocess=PRE, check=DataCheck(strict=True))

    split = tmp_path / "split"
    make_imagefolder(split / "train", classes=3, per_class=4)
    make_imagefolder(split / "test", classes=2, per_class=2)
    with pytest.raises(DatasetMissingError, match=r"train/ and test/ must hold the same class folders: test/ "
                                                  r"lacks class2$"):
        load_task(f"imagefolder:{split}", data_dir=tmp_path, preprocess=PRE)

    flat = tmp_path / "flat"
    flat.mkdir()
    class_image(0, RNG).save(flat / "a.png")
    with pytest.raises(DatasetMissingError, match="holds 1 images but no class folders"):
        load_task(f"imagefolder:{flat}", data_dir=tmp_path, preprocess=PRE)
    (tmp_path / "none").mkdir()
    with pytest.raises(DatasetMissingError, match="no images found in"):
        load_task(f"imagefolder:{tmp_path / 'none'}", data_dir=tmp_path, preprocess=PRE)

    few = make_imagefolder(tmp_path / "few", classes=2, per_class=6)
    for p in list((few / "class1").iterdir())[1:]:
        p.unlink()
    lines.clear()
    load_task(f"imagefolder:{few}", data_dir=tmp_path, preprocess=PRE, check=DataCheck(report=lines.append))
    assert any(l.startswith("classes with fewer images than the 3 the train/validation/test split needs") and
               l.endswith(": class1") for l in lines), lines


def test_a_file_that_breaks_during_training_is_replaced_and_counted(tmp_path):
    root = make_imagefolder(tmp_path / "d", classes=2, per_class=3)
    data = load_task(f"imagefolder:{root}", data_dir=tmp_path, preprocess=PRE)
    test = data.test  # a Subset of the whole folder
    path = test.dataset.base.samples[test.indices[0]][0]
    path.write_bytes(b"not any more")
    x, _ = test[0]
    assert x.shape == (3, 16, 16)  # the next image instead
    test[0]
    assert [s.path for s in data.decode_failures()] == [str(path.relative_to(root))]


def test_coco_annotations_naming_missing_or_broken_files(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    doc = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    for i in range(8):
        if i != 3:
            class_image(i % 2, RNG).save(images / f"{i}.jpg")
        doc["images"].append({"id": i, "file_name": f"{i}.jpg", "width": 20, "height": 20})
        doc["annotations"].append({"id": i, "image_id": i, "category_id": 1 + i % 2, "area": 9.0,
                                   "bbox": [0, 0, 3, 3], "iscrowd": 0})
    (images / "5.jpg").write_bytes(b"")
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(doc))
    lines = []
    data = load_task(f"coco:{ann}", data_dir=tmp_path, preprocess=PRE, check=DataCheck(report=lines.append))
    assert {s.path: s.reason.split(" ")[0] for s in data.files.skipped} == {"3.jpg": "missing", "5.jpg": "empty"}
    assert len(data.train) + len(data.val) + len(data.test) == 6 and lines


@pytest.mark.parametrize("name", ["gtsrb", "dtd", "omniglot"])
def test_torchvision_image_files_that_are_truncated_are_left_out(tmp_path, name):
    build, _ = BUILDERS[name]
    build(tmp_path)
    victim = sorted(p for p in tmp_path.rglob("*") if p.suffix in (".ppm", ".jpg", ".png"))[0]
    victim.write_bytes(victim.read_bytes()[:20])
    data = load_task(name, data_dir=tmp_path, preprocess=PRE, download=False)
    assert [s.path for s in data.files.skipped] == [str(victim.relative_to(tmp_path))]
    for split in (data.train, data.val, data.test):
        for i in range(len(split)):
            split[i]


@pytest.mark.parametrize("name", ["svhn", "cifar100"])
def test_truncated_array_files_are_one_line(tmp_path, name):
    BUILDERS[name][0](tmp_path)
    f = tmp_path / ("train_32x32.mat" if name == "svhn" else "cifar-100-python/train")
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(DatasetMissingError) as e:
        load_task(name, data_dir=tmp_path, preprocess=PRE, download=False)
    assert "\n" not in str(e.value) and ("truncated" in str(e.value) or "replace it" in str(e.value))


def test_train_on_a_messy_folder_reports_and_strict_refuses(tmp_path):
    broken = messy_folder(tmp_path / "messy")
    model_dir = tmp_path / "runs"
    proc = run_cli("train", "--task", f"imagefolder:{tmp_path / 'messy'}", "--model-dir", str(model_dir), *QUICK,
                   check=True)
    assert "Traceback" not in proc.stderr
    said = [l for l in proc.stderr.splitlines() if l.startswith("skipped 3 of 24 image files")]
    assert len(said) == 1 and "the list is in task.json" in said[0], proc.stderr
    meta = json.loads((model_dir / "tasks" / "messy" / "task.json").read_text())
    files = meta["data"]["files"]
    assert {s["path"]: s["reason"] for s in files["skipped"]} == {f"class0/{n}": w for n, w in broken.items()}
    assert files["ignored"] == 2 and files["cached"] == 0
    assert (model_dir / ".cache" / "image-check.json").is_file()
    # the same run again (as --resume does) reads the cache
    again = load_task(f"imagefolder:{tmp_path / 'messy'}", data_dir=tmp_path, preprocess=PRE,
                      check=DataCheck(cache=model_dir / ".cache" / "image-check.json"))
    assert again.files.cached == 24

    line = one_line_error(run_cli("train", "--task", f"imagefolder:{tmp_path / 'messy'}", "--model-dir",
                                  str(tmp_path / "strict"), "--strict", *QUICK))
    assert "3 of 24 image files cannot be read (--strict): class0/empty.jpg (empty)" in line
    assert not (tmp_path / "strict" / "backbone.safetensors").exists()  # refused before anything was written

    (tmp_path / "messy" / "class2").mkdir()  # an empty class folder: one line, before training
    proc = run_cli("train", "--task", f"imagefolder:{tmp_path / 'messy'}", "--model-dir", str(tmp_path / "more"),
                   *QUICK, check=True)
    said = proc.stderr.index("dropped 1 class folders without a readable image: class2/")
    assert said < proc.stderr.index("teacher") and "Traceback" not in proc.stderr
    assert json.loads((tmp_path / "more" / "tasks" / "messy" / "task.json").read_text())["classes"] == \
        ["class0", "class1"]
    proc = run_cli("eval", "--task", "messy", "--model-dir", str(model_dir), "--data-dir", str(tmp_path))
    assert proc.returncode == 0 and "dropped 1 class folders without a readable image: class2/" in proc.stderr
