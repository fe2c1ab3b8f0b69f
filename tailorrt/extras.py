"""The two installs: ``pip install tailorrt`` serves ONNX exports (no torch); ``pip install 'tailorrt[train]'``
adds what training, export, bench and report need. A command of the training side in a serving install stops
with one line naming the install."""

from __future__ import annotations

import functools
import importlib.util

from tailorrt.errors import DependencyMissingError

TRAIN_INSTALL = "pip install 'tailorrt[train]'"
TRAINING_MODULES = ("torch", "torchvision", "onnx")  # what every command of the training side imports


@functools.cache
def missing_training() -> tuple[str, ...]:
    """The modules of the training side that are not installed here (none in a training install), found without
    importing them (``tailor info`` in a training install does not pay for importing torch); asked once per
    process."""
    return tuple(name for name in TRAINING_MODULES if not _installed(name))


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a finder that refuses the name, or a module with no spec
        return False


def require_training(what: str, instead: str = "") -> None:
    """Refuse, in one line, ``what`` (a command, a backend) when the training side is not installed; ``instead``
    names what works without it."""
    missing = missing_training()
    if missing:
        raise DependencyMissingError(f"{what} needs the training side, and {', '.join(missing)} "
                                     f"{'is' if len(missing) == 1 else 'are'} not installed: {TRAIN_INSTALL}"
                                     + (f" ({instead})" if instead else ""))
