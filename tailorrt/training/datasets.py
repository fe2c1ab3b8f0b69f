"""The task registry: built-in generated tasks, torchvision datasets, image folders and COCO.

``load_task(spec, data_dir, preprocess)`` returns a :class:`TaskData` with train/val/test splits
of preprocessed tensors. A dataset that is absent and cannot be downloaded raises
:class:`DatasetMissingError` naming the files expected and where.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset, TensorDataset

from tailorrt.errors import DatasetMissingError, UnknownTaskError
from tailorrt.limits import DEFAULT_FORMATS
from tailorrt.preprocess import Preprocess
from tailorrt.record_fields import TASK_NAME
from tailorrt.registry import Registry
from tailorrt.training.image_check import (
    DECODE_ERRORS,
    CheckCache,
    CheckProgress,
    FileReport,
    Skipped,
    check_files,
    is_image_name,
    listed,
    relative,
)
from tailorrt.training.world import BUILTIN_TASKS, generate


@dataclass
class TaskData:
    """A task's splits (datasets yielding ``(tensor, label)``) and its class names."""

    name: str
    classes: list[str]
    train: Dataset
    val: Dataset
    test: Dataset
    source: str
    files: FileReport | None = None  # what the files check left out (datasets read from image files)

    def summary(self) -> dict:
        out = {"name": self.name, "classes": len(self.classes), "source": self.source,
               "train": len(self.train), "val": len(self.val), "test": len(self.test)}
        if self.files is not None:
            out["files"] = self.files.to_json()
        return out

    def decode_failures(self) -> list[Skipped]:
        """Files that passed the check but did not decode when read (each once), from every split."""
        seen: dict[str, str] = {}
        for split in (self.train, self.val, self.test):
            while isinstance(split, Subset):
                split = split.dataset
            if isinstance(split, Resilient):
                for path, why in split.failed.items():
                    seen.setdefault(path, why)
        return [Skipped(p, why) for p, why in seen.items()]


@dataclass(frozen=True)
class TensorTransform:
    """A task's :class:`~tailorrt.preprocess.Preprocess` as a dataset transform: a PIL image -> the normalised
    ``[3,S,S]`` torch tensor (picklable, for DataLoader workers)."""

    pre: Preprocess

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if not isinstance(image, Image.Image):
            raise TypeError(f"preprocessing takes PIL images, not {type(image).__name__}")
        return torch.from_numpy(self.pre(image))


@dataclass(frozen=True)
class DataCheck:
    """How a dataset's image files are checked before use (:mod:`tailorrt.training.image_check`)."""

    strict: bool = False  # refuse a dataset with unreadable files or empty classes instead of leaving them out
    cache: Path | None = None  # the verdicts' cache (a model dir keeps one); None: check every time
    progress: CheckProgress | None = None  # a long check's progress bar
    report: Callable[[str], None] = field(default=lambda _line: None, compare=False)  # one-line warnings


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
    """Every task offered by name (the built-in world's and torchvision's)."""
    return [n for source in SOURCES if source.names is not None for n in sorted(source.names)]


@dataclass(frozen=True)
class Loading:
    """How a task's data is loaded, whatever its source."""

    data_dir: Path
    preprocess: Preprocess
    download: bool
    val_fraction: float
    seed: int
    check: DataCheck


@dataclass(frozen=True)
class Source:
    """Where a task's data comes from: tasks offered by name (``names``), or ``<source>:<path>`` specs (``names``
    None, ``syntax`` saying how the path is written). ``load(name or path, loading)`` loads its three splits."""

    load: Callable[[str, Loading], TaskData]
    names: Mapping[str, Any] | None = None
    syntax: str = ""


SOURCES: Registry[Source] = Registry("data source")


def load_task(spec: str, *, data_dir: Path, preprocess: Preprocess, download: bool = True,
              val_fraction: float = 0.1, seed: int = 0, check: DataCheck = DataCheck()) -> TaskData:
    """Resolve a task spec and load its three splits; a dataset of image files is checked first (``check``)."""
    loading = Loading(Path(data_dir), preprocess, download, val_fraction, seed, check)
    named = next((s for s in SOURCES if s.names is not None and spec in s.names), None)
    if named is not None:
        return named.load(spec, loading)
    kind, sep, path = spec.partition(":")
    source = SOURCES.find(kind) if sep else None
    if source is None or source.names is not None:
        raise UnknownTaskError(f"unknown task {spec!r}; use one of {', '.join(registered_names())}, "
                               + " or ".join(s.syntax for s in SOURCES if s.names is None))
    return source.load(path, loading)


# --------------------------------------------------------------------------- built-in world


def _load_builtin(name: str, preprocess: Preprocess) -> TaskData:
    task = BUILTIN_TASKS[name]
    splits = {}
    for split in ("train", "val", "test"):
        images, labels = generate(task, split, image_size=preprocess.size)
        splits[split] = TensorDataset(torch.from_numpy(preprocess.normalise_arrays(images)), torch.from_numpy(labels))
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
    except (FileNotFoundError, NotADirectoryError, RuntimeError) as e:  # RuntimeError: "Dataset not found"
        if not download:
            raise DatasetMissingError(f"{name} not found under {root}: expected {entry.expected} "
                                      f"({e}); download it or pass --data-dir") from e
    except (OSError, ValueError, EOFError, KeyError, IndexError) as e:  # there, but a file does not read to its end
        raise DatasetMissingError(f"{name}'s files under {root} cannot be read ({type(e).__name__}: {e}); one "
                                  f"may be truncated or damaged: replace it (expected: {entry.expected})") from e
    try:
        return cls(str(root), transform=transform, download=True, **kwargs)
    except Exception as e:  # URLError, socket errors, checksum failures...
        raise DatasetMissingError(f"{name} is not under {root} and could not be downloaded "
                                  f"({type(e).__name__}: {e}); expected {entry.expected}") from e


def _load_torchvision(name: str, root: Path, preprocess: Preprocess, download: bool, val_fraction: float,
                      seed: int, check: DataCheck) -> TaskData:
    entry = TORCHVISION_TASKS[name]
    tf = TensorTransform(preprocess)
    opened = {split: _open_torchvision(name, kw, root, tf, download) for split, kw in entry.splits.items()}
    report = _check_torchvision(opened, root, check)
    base = opened.get("test", opened["train"])
    classes = entry.classes(base)
    opened = {split: Resilient(ds, root, functools.partial(_torchvision_file, ds)) if report else ds
              for split, ds in opened.items()}
    train = opened["train"]
    if "test" not in opened:
        train, opened["test"] = _split(train, 0.2, seed + 1)
    if "val" not in opened:
        train, opened["val"] = _split(train, val_fraction, seed)
    return TaskData(name, classes, train, opened["val"], opened["test"], f"torchvision:{entry.dataset}", report)


def _torchvision_files(ds: Dataset) -> list[Path] | None:
    """The image file of each item of a torchvision dataset read from image files (None for array datasets)."""
    if hasattr(ds, "_samples"):  # GTSRB
        return [Path(p) for p, _ in ds._samples]
    if hasattr(ds, "_flat_character_images"):  # Omniglot
        return [Path(ds.target_folder, ds._characters[c], n) for n, c in ds._flat_character_images]
    if hasattr(ds, "_image_files"):  # DTD, Flowers102, FGVCAircraft
        return [Path(p) for p in ds._image_files]
    return None


def _torchvision_file(ds: Dataset, i: int) -> Path:
    return _torchvision_files(ds)[i]


def _keep_torchvision(ds: Dataset, keep: list[bool]) -> None:
    """Leave out of ``ds`` the items whose ``keep`` is False (in the list its class reads its files from)."""
    for attr in ("_samples", "_flat_character_images", "_image_files", "_labels"):
        if hasattr(ds, attr):
            setattr(ds, attr, [v for v, k in zip(getattr(ds, attr), keep) if k])


def _check_torchvision(opened: dict[str, Dataset], root: Path, check: DataCheck) -> FileReport | None:
    """The files check of a torchvision dataset read from image files; unreadable files are left out."""
    files = {split: _torchvision_files(ds) for split, ds in opened.items()}
    if any(f is None for f in files.values()):
        return None
    report = FileReport()
    problems = _checked([f for fs in files.values() for f in fs], root, report, check)
    for split, ds in opened.items():
        _keep_torchvision(ds, [f not in problems for f in files[split]])
        if not len(ds):
            raise DatasetMissingError(f"none of the {split} images under {root} can be read")
    _say(report, check)
    return report


def _split(ds: Dataset, fraction: float, seed: int) -> tuple[Subset, Subset]:
    """Seeded random split into (rest, fraction)."""
    n = len(ds)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = max(1, int(round(n * fraction)))
    return Subset(ds, perm[k:]), Subset(ds, perm[:k])


# --------------------------------------------------------------------------- image folders


@dataclass
class _Listing:
    """One folder of class folders: the image files of each class (sorted as torchvision's ImageFolder sorts
    them), images lying directly in the folder, and files that are not images."""

    root: Path
    classes: dict[str, list[Path]]
    loose: list[Path]
    ignored: list[Path]


def _list_folder(root: Path) -> _Listing:
    classes: dict[str, list[Path]] = {}
    loose, ignored = [], []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        path = Path(entry.path)
        if entry.is_dir() and not entry.name.startswith("."):
            files = [Path(d) / f for d, _, names in sorted(os.walk(path, followlinks=True)) for f in sorted(names)]
            classes[entry.name] = [f for f in files if is_image_name(f)]
            ignored += [f for f in files if not is_image_name(f)]
        elif entry.is_file():
            (loose if is_image_name(path) else ignored).append(path)
    return _Listing(root, classes, loose, ignored)


def _folder_layout(root: Path) -> dict[str, _Listing]:
    """The split folders of an image folder (``train``, ``val``, ``test`` where present, else the root as ``all``),
    listed, with one-line errors for layouts that cannot be a dataset."""
    if not root.is_dir():
        raise DatasetMissingError(f"image folder {root} does not exist; expected {root}/<class>/<image> "
                                  f"or {root}/train/<class>/<image>")
    names = [n for n in ("train", "val", "test") if (root / n).is_dir()] if (root / "train").is_dir() else ["all"]
    listings = {n: _list_folder(root if n == "all" else root / n) for n in names}
    first = listings[names[0]]
    if not first.classes:
        where = first.root
        if first.loose:
            raise DatasetMissingError(f"{where} holds {len(first.loose)} images but no class folders; put each "
                                      f"class's images in a folder of its own: {where}/<class>/<image>")
        raise DatasetMissingError(f"no images found in {where}: expected {where}/<class>/<image>")
    for n in names[1:]:
        have, want = set(listings[n].classes), set(first.classes)
        if have != want:
            parts = [f"{n}/ lacks {', '.join(sorted(want - have))}" if want - have else "",
                     f"{n}/ has {', '.join(sorted(have - want))} that train/ lacks" if have - want else ""]
            raise DatasetMissingError(f"{root}: train/ and {n}/ must hold the same class folders: "
                                      f"{'; '.join(p for p in parts if p)}")
    return listings


def _load_imagefolder(root: Path, preprocess: Preprocess, val_fraction: float, seed: int,
                      check: DataCheck) -> TaskData:
    """``ROOT/{train,val,test}/<class>/*`` when those folders exist, else ``ROOT/<class>/*`` split 70/10/20.

    Every image file is checked first (:mod:`tailorrt.training.image_check`); unreadable ones are left out and
    reported (with ``check.strict``, refused), as are class folders left without a readable image.
    """
    listings = _folder_layout(root)
    report = FileReport()
    for listing in listings.values():
        if listing.loose and listing.classes:
            report.warnings.append(f"{len(listing.loose)} images lie directly in {listing.root}, in no class "
                                   f"folder: left out ({relative(listing.loose[0], root)}, ...)")
        report.ignored += [relative(p, root) for p in listing.ignored]
    files = [f for listing in listings.values() for fs in listing.classes.values() for f in fs]
    problems = _checked(files, root, report, check)
    primary = next(iter(listings))  # train/, or the root as "all": the split whose classes are the task's
    first = listings[primary]
    good = {n: {c: [f for f in fs if f not in problems] for c, fs in listing.classes.items()}
            for n, listing in listings.items()}
    empty = [c for c, fs in good[primary].items() if not fs]
    if empty:
        where = ", ".join(relative(first.root / c, root) + "/" for c in empty)
        if check.strict:
            raise DatasetMissingError(f"{root}: class folders without a readable image: {where} (--strict); "
                                      "add images or remove the folders")
        report.warnings.append(f"dropped {len(empty)} class folders without a readable image: {where}")
    classes = [c for c in first.classes if c not in empty]
    for n, by_class in list(good.items())[1:]:
        none = [c for c in classes if not by_class[c]]
        if none:
            report.warnings.append(f"{n}/ has no readable image of {', '.join(none)}")
    carved = ("all" in listings or "test" not in listings) + ("val" not in listings)
    few = [c for c in classes if len(good[primary][c]) < 1 + carved]
    if carved and few:
        report.warnings.append(f"classes with fewer images than the {1 + carved} the train/validation/test split "
                               f"needs (some split will have none of them): {', '.join(few)}")
    index = {c: i for i, c in enumerate(classes)}
    tf = TensorTransform(preprocess)
    splits = {n: Resilient(ImageFiles([(f, index[c]) for c in classes for f in by_class[c]], tf), root)
              for n, by_class in good.items()}
    _say(report, check)
    name, source = pack_name(f"imagefolder:{root}"), f"imagefolder:{root}"
    if "all" in splits:
        if not len(splits["all"]):
            raise DatasetMissingError(f"no readable images in {root}")
        rest, test = _split(splits["all"], 0.2, seed + 1)
        rest, val = _split(rest, val_fraction / 0.8, seed)
        return TaskData(name, classes, rest, val, test, source, report)
    rest: Dataset = splits["train"]
    if not len(rest):
        raise DatasetMissingError(f"no readable images in {root / 'train'}")
    test = splits.get("test")
    if test is None:
        rest, test = _split(rest, 0.2, seed + 1)
    val = splits.get("val")
    if val is None:
        rest, val = _split(rest, val_fraction, seed)
    return TaskData(name, classes, rest, val, test, source, report)


def _checked(files: list[Path], root: Path, report: FileReport, check: DataCheck) -> dict[Path, str]:
    """Check ``files`` (through the cache), record what is left out in ``report``; with ``check.strict``, a
    one-line refusal naming the first few bad files."""
    result = check_files(files, cache=CheckCache(check.cache), progress=check.progress,
                         label=f"checking {len(files):,} images")
    report.images += result.files
    report.cached += result.cached
    report.seconds = round(report.seconds + result.seconds, 3)
    report.skipped += [Skipped(relative(p, root), why) for p, why in result.problems.items()]
    if check.strict and report.skipped:
        raise DatasetMissingError(f"{len(report.skipped)} of {report.images:,} image files cannot be read "
                                  f"(--strict): {listed(report.skipped)}; remove or replace them, or train "
                                  "without --strict to leave them out")
    return result.problems


def _say(report: FileReport, check: DataCheck) -> None:
    for line in report.lines():
        check.report(line)


class ImageFiles(Dataset):
    """``(transform(image), label)`` of image files, each decoded when asked for and made upright RGB by the
    transform (:func:`tailorrt.rgb.to_rgb`), as the server does."""

    def __init__(self, samples: list[tuple[Path, int]], transform: Callable) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def path(self, i: int) -> Path:
        return self.samples[i][0]

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        with Image.open(path, formats=list(DEFAULT_FORMATS)) as img:
            img.load()
            return self.transform(img), label


class Resilient(Dataset):
    """A dataset of files whose item ``i``, if its file no longer decodes (changed under the run), is the next
    item that does; each such file is counted once in :attr:`failed`, and the run goes on."""

    def __init__(self, base: Dataset, root: Path, path_of: Callable[[int], Path] | None = None) -> None:
        self.base, self.root = base, root
        self.path_of = path_of or base.path
        self.failed: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        n = len(self.base)
        for j in range(n):
            try:
                return self.base[(i + j) % n]
            except (*DECODE_ERRORS, Image.DecompressionBombError) as e:
                self.failed.setdefault(relative(self.path_of((i + j) % n), self.root), str(e) or type(e).__name__)
        raise DatasetMissingError(f"none of the {n} images under {self.root} can be read any more")


# --------------------------------------------------------------------------- COCO


def coco_labels(annotations: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Image-level labels from a COCO annotations file: class names, and ``(file_name, label)`` per image, its
    label the category covering the largest total area in it (images without annotations are skipped)."""
    import contextlib
    import io as _io

    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(_io.StringIO()):  # pycocotools prints progress
        coco = COCO(str(annotations))
    cats = sorted(coco.getCatIds())
    classes = [coco.loadCats(c)[0]["name"] for c in cats]
    index = {c: i for i, c in enumerate(cats)}
    samples: list[tuple[str, int]] = []
    for img_id in sorted(coco.getImgIds()):
        area: dict[int, float] = {}
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=None)):
            area[ann["category_id"]] = area.get(ann["category_id"], 0.0) + float(ann.get("area", 0.0))
        if area:
            label = max(sorted(area), key=lambda c: area[c])
            samples.append((coco.loadImgs(img_id)[0]["file_name"], index[label]))
    return classes, samples


def _coco_image_dir(annotations: Path) -> Path:
    """``instances_val2017.json`` in ``annotations/`` -> ``../val2017``; else an ``images`` folder beside it."""
    stem = annotations.stem.split("_")[-1]
    for cand in (annotations.parent.parent / stem, annotations.parent / stem, annotations.parent / "images"):
        if cand.is_dir():
            return cand
    return annotations.parent


def _load_coco(annotations: Path, preprocess: Preprocess, val_fraction: float, seed: int,
               check: DataCheck) -> TaskData:
    if not annotations.is_file():
        raise DatasetMissingError(f"COCO annotations file {annotations} does not exist; expected a COCO "
                                  "instances JSON with its images in ../<split>/ or images/ beside it")
    try:
        classes, samples = coco_labels(annotations)
    except (ValueError, KeyError, TypeError) as e:
        raise DatasetMissingError(f"{annotations} is not a COCO annotations file ({type(e).__name__}: {e})") from e
    if not samples:
        raise DatasetMissingError(f"{annotations} has no annotated images")
    image_dir = _coco_image_dir(annotations)
    files = [(image_dir / name, label) for name, label in samples]
    report = FileReport()
    problems = _checked([f for f, _ in files], image_dir, report, check)
    if len(problems) == len(files):
        raise DatasetMissingError(f"none of the {len(files)} images that {annotations.name} names can be read in "
                                  f"{image_dir} (first: {listed(report.skipped, 1)}); put the images there")
    _say(report, check)
    kept = [(f, y) for f, y in files if f not in problems]
    full = Resilient(ImageFiles(kept, TensorTransform(preprocess)), image_dir)
    rest, test = _split(full, 0.2, seed + 1)
    rest, val = _split(rest, val_fraction / 0.8, seed)
    return TaskData(pack_name(f"coco:{annotations}"), classes, rest, val, test, f"coco:{annotations}", report)


SOURCES.add("builtin", Source(lambda name, how: _load_builtin(name, how.preprocess), BUILTIN_TASKS))
SOURCES.add("torchvision", Source(lambda name, how: _load_torchvision(
    name, how.data_dir, how.preprocess, how.download, how.val_fraction, how.seed, how.check), TORCHVISION_TASKS))
SOURCES.add("imagefolder", Source(lambda path, how: _load_imagefolder(
    Path(path), how.preprocess, how.val_fraction, how.seed, how.check), syntax="imagefolder:PATH"))
SOURCES.add("coco", Source(lambda path, how: _load_coco(
    Path(path), how.preprocess, how.val_fraction, how.seed, how.check), syntax="coco:ANNOTATIONS.json"))
