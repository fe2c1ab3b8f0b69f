"""The task registry: built-in generated tasks, torchvision datasets, image folders and COCO.

``load_task(spec, data_dir, preprocess)`` returns a :class:`TaskData` with train/val/test splits
of preprocessed tensors. A dataset that is absent and cannot be downloaded raises
:class:`DatasetMissingError` naming the files expected and where.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from tailorrt.errors import DatasetMissingError, UnknownTaskError
from tailorrt.world import BUILTIN_TASKS, generate

TASK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Preprocess:
    """How a task's images become the network's input: resize to a square, scale to [0,1], normalise."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_json(self) -> dict:
        return {"resize": [self.size, self.size], "mean": list(self.mean), "std": list(self.std),
                "layout": "NCHW", "dtype": "float32", "color": "RGB", "scale": "1/255"}

    @classmethod
    def from_json(cls, data: dict) -> Preprocess:
        return cls(int(data["resize"][0]), tuple(data["mean"]), tuple(data["std"]))

    def transform(self) -> Callable:
        """A torchvision transform from a PIL image to the normalised tensor (built once per setting:
        the runtime asks for it on every image)."""
        return _transform(self)

    def normalise_uint8(self, images: np.ndarray) -> torch.Tensor:
        """``[N,H,W,3]`` uint8 (already at size) -> normalised ``[N,3,H,W]`` float32."""
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
        if x.shape[-1] != self.size:
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear",
                                                antialias=True, align_corners=False)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std


@functools.lru_cache(maxsize=64)
def _transform(pre: Preprocess) -> Callable:
    from torchvision.transforms import v2

    return v2.Compose([v2.Lambda(_to_rgb), v2.ToImage(), v2.Resize((pre.size, pre.size), antialias=True),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(pre.mean), list(pre.std))])


def _to_rgb(image):
    """Grey or palette PIL images (Omniglot, some PNGs) become RGB; tensors pass through."""
    return image.convert("RGB") if hasattr(image, "convert") and image.mode != "RGB" else image


@dataclass
class TaskData:
    """A task's splits (datasets yielding ``(tensor, label)``) and its class names."""

    name: str
    classes: list[str]
    train: Dataset
    val: Dataset
    test: Dataset
    source: str

    def summary(self) -> dict:
        return {"name": self.name, "classes": len(self.classes), "source": self.source,
                "train": len(self.train), "val": len(self.val), "test": len(self.test)}


def pack_name(spec: str) -> str:
    """The task-pack name for a task spec: ``imagefolder:/data/pets`` -> ``pets``."""
    name = spec
    if ":" in spec:
        kind, _, path = spec.partition(":")
        p = Path(path)
        name = (p.stem if kind == "coco" else p.name).lower()
        name = re.sub(r"[^a-z0-9_-]+", "-", name).strip("-_") or kind
    if not TASK_NAME.match(name):
        raise UnknownTaskError(f"task name {name!r} must match [a-z0-9][a-z0-9_-]{{0,63}}")
    return name


def builtin_names() -> list[str]:
    return [n for n in BUILTIN_TASKS if n != "synth-source"]


def registered_names() -> list[str]:
    return sorted(BUILTIN_TASKS) + sorted(TORCHVISION_TASKS)


def load_task(spec: str, *, data_dir: Path, preprocess: Preprocess, download: bool = True,
              val_fraction: float = 0.1, seed: int = 0) -> TaskData:
    """Resolve a task spec and load its three splits."""
    if spec in BUILTIN_TASKS:
        return _load_builtin(spec, preprocess)
    if spec in TORCHVISION_TASKS:
        return _load_torchvision(spec, Path(data_dir), preprocess, download, val_fraction, seed)
    if spec.startswith("imagefolder:"):
        return _load_imagefolder(Path(spec.split(":", 1)[1]), preprocess, val_fraction, seed)
    if spec.startswith("coco:"):
        return _load_coco(Path(spec.split(":", 1)[1]), preprocess, val_fraction, seed)
    raise UnknownTaskError(f"unknown task {spec!r}; use one of {', '.join(registered_names())}, "
                           "imagefolder:PATH or coco:ANNOTATIONS.json")


# --------------------------------------------------------------------------- built-in world


def _load_builtin(name: str, preprocess: Preprocess) -> TaskData:
    task = BUILTIN_TASKS[name]
    splits = {}
    for split in ("train", "val", "test"):
        images, labels = generate(task, split, image_size=preprocess.size)
        splits[split] = TensorDataset(preprocess.normalise_uint8(images), torch.from_numpy(labels))
    return TaskData(name, list(task.classes), splits["train"], splits["val"], splits["test"], "generated")


# --------------------------------------------------------------------------- torchvision datasets


@dataclass(frozen=True)
class TorchvisionTask:
    """How to open one torchvision dataset: class name, split keyword per split, files expected."""

    dataset: str
    splits: dict[str, dict]  # our split -> constructor kwargs; "val" missing = carved from train
    expected: str
    classes: Callable[[Dataset], list[str]] = lambda ds: [str(c) for c in getattr(ds, "classes", [])]


def _n_classes(n: int) -> Callable[[Dataset], list[str]]:
    return lambda ds: [str(i) for i in range(n)]


TORCHVISION_TASKS: dict[str, TorchvisionTask] = {
    "gtsrb": TorchvisionTask("GTSRB", {"train": {"split": "train"}, "test": {"split": "test"}},
                             "gtsrb/GTSRB/Training/<class>/*.ppm and gtsrb/GTSRB/Final_Test/Images/*.ppm "
                             "with gtsrb/GT-final_test.csv", _n_classes(43)),
    "svhn": TorchvisionTask("SVHN", {"train": {"split": "train"}, "test": {"split": "test"}},
                            "train_32x32.mat and test_32x32.mat", _n_classes(10)),
    "omniglot": TorchvisionTask("Omniglot", {"train": {"background": True}},
                                "omniglot-py/images_background/<alphabet>/<character>/*.png",
                                lambda ds: [f"{a}/{c}" for a, c in
                                            (p.split("/") for p in ds._characters)]),
    "dtd": TorchvisionTask("DTD", {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}},
                           "dtd/dtd/images/<class>/*.jpg and dtd/dtd/labels/{train,val,test}1.txt"),
    "flowers102": TorchvisionTask("Flowers102", {"train": {"split": "train"}, "val": {"split": "val"},
                                                 "test": {"split": "test"}},
                                  "flowers-102/jpg/image_*.jpg, flowers-102/imagelabels.mat, flowers-102/setid.mat",
                                  _n_classes(102)),
    "cifar100": TorchvisionTask("CIFAR100", {"train": {"train": True}, "test": {"train": False}},
                                "cifar-100-python/{train,test,meta}"),
    "fgvc-aircraft": TorchvisionTask("FGVCAircraft", {"train": {"split": "train"}, "val": {"split": "val"},
                                                      "test": {"split": "test"}},
                                     "fgvc-aircraft-2013b/data/images/*.jpg and "
                                     "fgvc-aircraft-2013b/data/images_variant_{train,val,test}.txt"),
}


def _files_present(ds: Dataset) -> bool:
    """Layout check replacing torchvision's MD5 checks of the official archives (see :func:`_lenient`)."""
    root = Path(ds.root)
    name = type(ds).__mro__[1].__name__
    if name == "SVHN":
        return (root / ds.filename).is_file()
    if name == "Omniglot":
        return (root / ds._get_target_folder()).is_dir()
    if name == "Flowers102":
        return ds._images_folder.is_dir() and all((ds._base_folder / ds._file_dict[k][0]).is_file()
                                                  for k in ("label", "setid"))
    files = [f for f, _ in ds.train_list + ds.test_list] + [ds.meta["filename"]]  # CIFAR
    return all((root / ds.base_folder / f).is_file() for f in files)


def _cifar_arrays(path: Path) -> dict:
    """One file of the official CIFAR archive: a pickled dict of lists, strings and numpy arrays.

    Read with an unpickler that builds numpy arrays and nothing else (torchvision calls ``pickle.load``, which
    imports and calls whatever a file names): any other class or function in the file is refused.
    """
    import pickle

    reconstruct = np.ndarray((0,)).__reduce__()[0]  # numpy's array rebuilders, whatever module holds them
    frombuffer = np.ndarray((1,)).__reduce_ex__(5)[0]  # pickle protocol 5
    allowed = {(f"numpy{core}.{module}", fn.__name__): fn for core in (".core", "._core")
               for module, fn in (("multiarray", reconstruct), ("numeric", frombuffer))}
    allowed.update({("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype})

    class ArraysOnly(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if (module, name) not in allowed:
                raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR file never does")
            return allowed[module, name]

    try:
        with open(path, "rb") as f:
            data = ArraysOnly(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise DatasetMissingError(f"{path} is not a file of the official CIFAR archive ({e}); replace it") from e
    if not isinstance(data, dict):
        raise DatasetMissingError(f"{path} is not a file of the official CIFAR archive (no dict inside)")
    return data


def _cifar_init(ds: Dataset, root: str, train: bool = True, transform: Callable | None = None,
                target_transform: Callable | None = None, download: bool = False) -> None:
    """torchvision's CIFAR ``__init__``, reading the files with :func:`_cifar_arrays` instead of ``pickle.load``."""
    from torchvision.datasets.vision import VisionDataset

    VisionDataset.__init__(ds, root, transform=transform, target_transform=target_transform)
    ds.train = train
    if download:
        ds.download()
    if not ds._check_integrity():
        raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
    data, ds.targets = [], []
    for name, _ in ds.train_list if train else ds.test_list:
        entry = _cifar_arrays(Path(ds.root) / ds.base_folder / name)
        data.append(entry["data"])
        ds.targets.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
    ds.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))  # HWC, as torchvision keeps it
    ds._load_meta()


def _cifar_meta(ds: Dataset) -> None:
    ds.classes = _cifar_arrays(Path(ds.root) / ds.base_folder / ds.meta["filename"])[ds.meta["key"]]
    ds.class_to_idx = {c: i for i, c in enumerate(ds.classes)}


def _lenient(cls: type) -> type:
    """torchvision checks the MD5 of SVHN/Omniglot/Flowers102/CIFAR files; a copy prepared locally in the
    same layout (re-packed, subsampled, or a test's tiny copy) would be refused. We check the layout only."""
    if cls.__name__ not in ("SVHN", "Omniglot", "Flowers102", "CIFAR100"):
        return cls
    body: dict = {"_check_integrity": _files_present}
    if cls.__name__ == "CIFAR100":
        body.update(__init__=_cifar_init, _load_meta=_cifar_meta)
    return type(f"Local{cls.__name__}", (cls,), body)


def _open_torchvision(name: str, kwargs: dict, root: Path, transform: Callable, download: bool) -> Dataset:
    import torchvision.datasets as tvd

    entry = TORCHVISION_TASKS[name]
    cls = _lenient(getattr(tvd, entry.dataset))
    if entry.dataset == "FGVCAircraft":
        kwargs = {**kwargs, "annotation_level": "variant"}
    try:
        return cls(str(root), transform=transform, download=False, **kwargs)
    except (RuntimeError, FileNotFoundError, OSError) as first:
        if not download:
            raise DatasetMissingError(f"{name} not found under {root}: expected {entry.expected} "
                                      f"({first}); download it or pass --data-dir") from first
    try:
        return cls(str(root), transform=transform, download=True, **kwargs)
    except Exception as e:  # URLError, socket errors, checksum failures...
        raise DatasetMissingError(f"{name} is not under {root} and could not be downloaded "
                                  f"({type(e).__name__}: {e}); expected {entry.expected}") from e


def _load_torchvision(name: str, root: Path, preprocess: Preprocess, download: bool, val_fraction: float,
                      seed: int) -> TaskData:
    entry = TORCHVISION_TASKS[name]
    tf = preprocess.transform()
    opened = {split: _open_torchvision(name, kw, root, tf, download) for split, kw in entry.splits.items()}
    train = opened["train"]
    if "test" not in opened:
        train, opened["test"] = _split(train, 0.2, seed + 1)
    if "val" not in opened:
        train, opened["val"] = _split(train, val_fraction, seed)
    base = opened["test"].dataset if isinstance(opened["test"], Subset) else opened["test"]
    return TaskData(name, entry.classes(base), train, opened["val"], opened["test"], f"torchvision:{entry.dataset}")


def _split(ds: Dataset, fraction: float, seed: int) -> tuple[Subset, Subset]:
    """Seeded random split into (rest, fraction)."""
    n = len(ds)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = max(1, int(round(n * fraction)))
    return Subset(ds, perm[k:]), Subset(ds, perm[:k])


# --------------------------------------------------------------------------- image folders


def _load_imagefolder(root: Path, preprocess: Preprocess, val_fraction: float, seed: int) -> TaskData:
    """``ROOT/{train,val,test}/<class>/*`` when those folders exist, else ``ROOT/<class>/*`` split 70/10/20."""
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        raise DatasetMissingError(f"image folder {root} does not exist; expected {root}/<class>/<image> "
                                  f"or {root}/train/<class>/<image>")
    tf = preprocess.transform()
    try:
        if (root / "train").is_dir():
            train = ImageFolder(str(root / "train"), transform=tf)
            classes = train.classes
            test = ImageFolder(str(root / "test"), transform=tf) if (root / "test").is_dir() else None
            val = ImageFolder(str(root / "val"), transform=tf) if (root / "val").is_dir() else None
            for other in (test, val):
                if other is not None and other.classes != classes:
                    raise DatasetMissingError(f"{root}: train/val/test folders must hold the same class folders")
            rest: Dataset = train
            if test is None:
                rest, test = _split(rest, 0.2, seed + 1)
            if val is None:
                rest, val = _split(rest, val_fraction, seed)
            return TaskData(pack_name(f"imagefolder:{root}"), classes, rest, val, test, f"imagefolder:{root}")
        full = ImageFolder(str(root), transform=tf)
    except FileNotFoundError as e:
        raise DatasetMissingError(f"no images found in {root}: expected {root}/<class>/<image> ({e})") from e
    rest, test = _split(full, 0.2, seed + 1)
    rest, val = _split(rest, val_fraction / 0.8, seed)
    return TaskData(pack_name(f"imagefolder:{root}"), full.classes, rest, val, test, f"imagefolder:{root}")


# --------------------------------------------------------------------------- COCO


class CocoImageLabels(Dataset):
    """Image-level labels from a COCO annotations file: each image's label is the category covering
    the largest total area in it (images without annotations are skipped)."""

    def __init__(self, annotations: Path, transform: Callable, image_dir: Path | None = None) -> None:
        import contextlib
        import io as _io

        from pycocotools.coco import COCO

        with contextlib.redirect_stdout(_io.StringIO()):  # pycocotools prints progress
            coco = COCO(str(annotations))
        cats = sorted(coco.getCatIds())
        self.classes = [coco.loadCats(c)[0]["name"] for c in cats]
        index = {c: i for i, c in enumerate(cats)}
        self.image_dir = image_dir or _coco_image_dir(annotations)
        self.samples: list[tuple[str, int]] = []
        for img_id in sorted(coco.getImgIds()):
            area: dict[int, float] = {}
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=None)):
                area[ann["category_id"]] = area.get(ann["category_id"], 0.0) + float(ann.get("area", 0.0))
            if area:
                label = max(sorted(area), key=lambda c: area[c])
                self.samples.append((coco.loadImgs(img_id)[0]["file_name"], index[label]))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image

        name, label = self.samples[i]
        with Image.open(self.image_dir / name) as im:
            return self.transform(im.convert("RGB")), label


def _coco_image_dir(annotations: Path) -> Path:
    """``instances_val2017.json`` in ``annotations/`` -> ``../val2017``; else an ``images`` folder beside it."""
    stem = annotations.stem.split("_")[-1]
    for cand in (annotations.parent.parent / stem, annotations.parent / stem, annotations.parent / "images"):
        if cand.is_dir():
            return cand
    return annotations.parent


def _load_coco(annotations: Path, preprocess: Preprocess, val_fraction: float, seed: int) -> TaskData:
    if not annotations.is_file():
        raise DatasetMissingError(f"COCO annotations file {annotations} does not exist; expected a COCO "
                                  "instances JSON with its images in ../<split>/ or images/ beside it")
    try:
        full = CocoImageLabels(annotations, preprocess.transform())
    except (ValueError, KeyError, TypeError) as e:
        raise DatasetMissingError(f"{annotations} is not a COCO annotations file ({type(e).__name__}: {e})") from e
    if len(full) == 0:
        raise DatasetMissingError(f"{annotations} has no annotated images")
    missing = [n for n, _ in full.samples[:50] if not (full.image_dir / n).is_file()]
    if missing:
        raise DatasetMissingError(f"COCO images missing: {full.image_dir / missing[0]} (and {len(missing) - 1} more "
                                  "among the first 50); put the images in that folder")
    rest, test = _split(full, 0.2, seed + 1)
    rest, val = _split(rest, val_fraction / 0.8, seed)
    return TaskData(pack_name(f"coco:{annotations}"), full.classes, rest, val, test, f"coco:{annotations}")
