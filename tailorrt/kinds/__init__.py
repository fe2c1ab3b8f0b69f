"""The export kinds and the precisions they serve: one module and one registration each, as for methods.

An :class:`ExportKind` holds everything about one output of ``tailor export``: its folder in the model dir, the
``kind`` its ``export.json`` records, the precision and backend that serve it, the flag that makes it, the shared
file its graphs read, how its record is checked, how it is exported and what ``tailor info`` shows of it. Code
elsewhere asks the registry (:func:`get`, :func:`for_precision`, :func:`kinds`) and compares no kind or
precision names of its own.

A new precision is a module here that calls :func:`register` with its :class:`ExportKind`, its import at the end
of this file (the import order is the registration order), and its export step: a function of an
:class:`~tailorrt.export.exporter.ExportContext` in ``tailorrt/export/`` registered for the kind by
:func:`tailorrt.export.common.export_step` (the core does not import the export layer).
"""

from __future__ import annotations

from tailorrt.errors import ConfigError
from tailorrt.kinds.kind import DEFAULT_PRECISION, KINDS, ExportKind, register

__all__ = ["DEFAULT_PRECISION", "ExportKind", "by_record_kind", "for_precision", "get", "kinds", "precisions",
           "register"]


def kinds() -> list[ExportKind]:
    """Every export kind, in registration order."""
    return list(KINDS)


def get(folder: str) -> ExportKind:
    return KINDS.get(folder)


def by_record_kind(record_kind: str) -> ExportKind | None:
    return next((k for k in kinds() if k.record_kind == record_kind), None)


def precisions() -> tuple[str, ...]:
    """The values of ``--precision``, the default first."""
    return tuple(k.precision for k in kinds() if k.precision is not None)


def for_precision(precision: str) -> ExportKind:
    """The export kind that serves ``precision`` (a ConfigError naming the choices for another)."""
    for k in kinds():
        if k.precision == precision:
            return k
    raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(precisions())}")


# the kinds, in registration order (each module registers itself; imported here, after what they import from here)
from tailorrt.kinds import onnx, onnx_int8, bf16, tensorrt  # noqa: E402, F401, I001
