"""Every registry entry loads a tiny copy built in that dataset's real on-disk layout."""

import json
import pickle

import numpy as np
import pytest
import scipy.io
from PIL import Image

from tailorrt.errors import DatasetMissingError, UnknownTaskError
from tailorrt.training.datasets import Preprocess, load_task, pack_name
from tests.conftest import class_image, make_imagefolder

PRE = Preprocess(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
RNG = np.random.default_rng(0)


def _img(label: int, size: int = 20) -> Image.Image:
    return class_image(label % 4, RNG, size)


def _svhn(root):
    for split, n in (("train", 12), ("test", 6)):
        x = np.stack([np.asarray(_img(i, 32)) for i in range(n)], axis=3)
        y = (np.arange(n) % 3 + 1).reshape(-1, 1)  # SVHN labels are 1..10
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})


def _gtsrb(root):
    base = root / "gtsrb" / "GTSRB"
    for c in range(3):
        d = base / "Training" / f"{c:05d}"
        d.mkdir(parents=True)
        for i in range(4):
            _img(c).save(d / f"{c:05d}_{i:05d}.ppm")
    test = base / "Final_Test" / "Images"
    test.mkdir(parents=True)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i in range(5):
        _img(i % 3).save(test / f"{i:05d}.ppm")
        rows.append(f"{i:05d}.ppm;20;20;0;0;19;19;{i % 3}")
    (root / "gtsrb" / "GT-final_test.csv").write_text("\n".join(rows) + "\n")


def _omniglot(root):
    for a in ("Alpha", "Beta"):
        for c in ("character01", "character02"):
            d = root / "omniglot-py" / "images_background" / a / c
            d.mkdir(parents=True)
            for i in range(5):
                _img(i).convert("L").save(d / f"{i}.png")


def _dtd(root):
    base = root / "dtd" / "dtd"
    lists = {"train": [], "val": [], "test": []}
    for c in ("banded", "dotted", "woven"):
        (base / "images" / c).mkdir(parents=True)
        for i in range(6):
            _img(i).save(base / "images" / c / f"{c}_{i}.jpg")
            lists[("train", "train", "val", "test", "train", "test")[i]].append(f"{c}/{c}_{i}.jpg")
    (base / "labels").mkdir()
    for split, lines in lists.items():
        (base / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")


def _flowers(root):
    base = root / "flowers-102"
    (base / "jpg").mkdir(parents=True)
    n = 12
    for i in range(1, n + 1):
        _img(i).save(base / "jpg" / f"image_{i:05d}.jpg")
    scipy.io.savemat(base / "imagelabels.mat", {"labels": np.array([[1 + i % 3 for i in range(n)]])})
    scipy.io.savemat(base / "setid.mat", {"trnid": np.array([[1, 2, 3, 4, 5, 6]]), "valid": np.array([[7, 8, 9]]),
                                          "tstid": np.array([[10, 11, 12]])})


def _cifar100(root):
    base = root / "cifar-100-python"
    base.mkdir()
    for split, n in (("train", 10), ("test", 5)):
        data = np.stack([np.asarray(_img(i, 32)).transpose(2, 0, 1).reshape(-1) for i in range(n)])
        with open(base / split, "wb") as f:
            pickle.dump({"data": data, "fine_labels": [i % 3 for i in range(n)]}, f)
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": ["apple", "bee", "cup"]}, f)


def _aircraft(root):
    data = root / "fgvc-aircraft-2013b" / "data"
    (data / "images").mkdir(parents=True)
    variants = ["707-320", "A320", "Cessna 172"]
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    k = 0
    for split, n in (("train", 6), ("val", 3), ("test", 3)):
        lines = []
        for i in range(n):
            name = f"{1000000 + k}"
            _img(i).save(data / "images" / f"{name}.jpg")
            lines.append(f"{name} {variants[i % 3]}")
            k += 1
        (data / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")


BUILDERS = {"svhn": (_svhn, 3), "gtsrb": (_gtsrb, 3), "omniglot": (_omniglot, 4), "dtd": (_dtd, 3),
            "flowers102": (_flowers, 3), "cifar100": (_cifar100, 3), "fgvc-aircraft": (_aircraft, 3)}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_torchvision_task_loads_real_layout(tmp_path, name):
    build, n_labels = BUILDERS[name]
    build(tmp_path)
    data = load_task(name, data_dir=tmp_path, preprocess=PRE, download=False)
    assert len(data.train) and len(data.val) and len(data.test)
    x, y = data.train[0]
    assert tuple(x.shape) == (3, 16, 16)
    labels = {int(data.train[i][1]) for i in range(len(data.train))}
    assert labels and max(labels) < len(data.classes)
    if name in ("cifar100", "fgvc-aircraft", "dtd"):
        assert len(data.classes) == n_labels


@pytest.mark.parametrize("name,expected", [("svhn", "train_32x32.mat"), ("gtsrb", "GT-final_test.csv"),
                                           ("cifar100", "cifar-100-python")])
def test_missing_dataset_names_the_files(tmp_path, name, expected):
    with pytest.raises(DatasetMissingError, match=expected):
        load_task(name, data_dir=tmp_path, preprocess=PRE, download=False)


def test_failed_download_is_a_dataset_error(tmp_path, monkeypatch):
    import torchvision.datasets.svhn as svhn_mod

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(svhn_mod, "download_url", offline)
    with pytest.raises(DatasetMissingError, match="could not be downloaded.*train_32x32.mat"):
        load_task("svhn", data_dir=tmp_path, preprocess=PRE, download=True)


def test_imagefolder_flat_and_split_layouts(tmp_path):
    flat = make_imagefolder(tmp_path / "Flat Pets", classes=3, per_class=10)
    data = load_task(f"imagefolder:{flat}", data_dir=tmp_path, preprocess=PRE)
    assert data.name == "flat-pets" and data.classes == ["class0", "class1", "class2"]
    assert len(data.train) + len(data.val) + len(data.test) == 30
    split = tmp_path / "split"
    make_imagefolder(split / "train", per_class=6)
    make_imagefolder(split / "test", per_class=2, seed=1)
    data = load_task(f"imagefolder:{split}", data_dir=tmp_path, preprocess=PRE)
    assert len(data.test) == 6 and len(data.train) + len(data.val) == 18


def test_coco_image_labels_take_the_largest_category(tmp_path):
    images = tmp_path / "val2017"
    images.mkdir()
    (tmp_path / "annotations").mkdir()
    doc = {"images": [], "annotations": [], "categories": [{"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]}
    for i in range(8):
        _img(i).save(images / f"{i:012d}.jpg")
        doc["images"].append({"id": i, "file_name": f"{i:012d}.jpg", "width": 20, "height": 20})
        big, small = (18, 3) if i % 2 else (3, 18)
        for j, (cat, area) in enumerate(((big, 200.0), (small, 50.0))):
            doc["annotations"].append({"id": 10 * i + j, "image_id": i, "category_id": cat, "area": area,
                                       "bbox": [0, 0, 10, 10], "iscrowd": 0})
    doc["images"].append({"id": 99, "file_name": "unlabelled.jpg", "width": 20, "height": 20})
    ann = tmp_path / "annotations" / "instances_val2017.json"
    ann.write_text(json.dumps(doc))
    data = load_task(f"coco:{ann}", data_dir=tmp_path, preprocess=PRE)
    assert data.classes == ["car", "dog"] and data.name == "instances_val2017"
    full = data.test.dataset
    assert len(full) == 8
    assert [label for _, label in full.base.samples] == [0, 1] * 4


def test_unknown_and_badly_named_tasks():
    with pytest.raises(UnknownTaskError, match="unknown task 'mnist'"):
        load_task("mnist", data_dir=".", preprocess=PRE)
    with pytest.raises(UnknownTaskError):
        pack_name("Has Spaces!")


class _Exploit:
    def __reduce__(self):
        import os

        return os.system, ("touch pwned",)


def test_cifar_files_are_unpickled_as_arrays_only(tmp_path, monkeypatch):
    _cifar100(tmp_path)
    base = tmp_path / "cifar-100-python"
    with open(base / "train", "wb") as f:  # protocol 5 keeps array bytes out of band: still just arrays
        pickle.dump({"data": np.zeros((10, 3072), np.uint8), "fine_labels": [i % 3 for i in range(10)]}, f,
                    protocol=5)
    assert len(load_task("cifar100", data_dir=tmp_path, preprocess=PRE, download=False).train)
    monkeypatch.chdir(tmp_path)
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": _Exploit()}, f)
    with pytest.raises(DatasetMissingError, match=r"meta is not a file of the official CIFAR archive \(it names "
                                                  r"posix.system"):
        load_task("cifar100", data_dir=tmp_path, preprocess=PRE, download=False)
    assert not (tmp_path / "pwned").exists()
