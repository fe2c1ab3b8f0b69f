"""The check that a precision can run on a backend and device here (the CPU's flags: :mod:`tailorrt.cpu`).

The precisions themselves (fp32 ONNX, int8 ONNX, bf16 under torch autocast), which backend runs each and what
``tailor export`` writes for it are export kinds: :mod:`tailorrt.kinds`, one module each.
"""

from __future__ import annotations

from tailorrt import kinds
from tailorrt.errors import ConfigError


def backend_of(precision: str) -> str:
    """The backend that runs ``precision`` (its export kind's, :mod:`tailorrt.kinds`)."""
    return kinds.for_precision(precision).backend


def check_precision(precision: str, backend: str, device: str = "cpu", flags: set[str] | None = None) -> None:
    """Refuse, in one line, a precision that this backend or this CPU cannot run well."""
    kind = kinds.for_precision(precision)  # an unknown precision: one line naming the choices
    if precision == kinds.DEFAULT_PRECISION:
        return
    if backend != kind.backend:
        raise ConfigError(f"precision {precision} runs on the {kind.backend} backend, not {backend}; "
                          f"use --backend {kind.backend} --precision {precision}")
    kind.check_device(device, flags)
