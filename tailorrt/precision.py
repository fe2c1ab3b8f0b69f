"""Numeric precisions of the runtime, which backend runs each, and what this CPU can do.

- ``fp32``: every backend (the default).
- ``int8``: the ``onnx`` backend, from ``tailor export --precision int8`` (``<model-dir>/onnx-int8``).
  Weights are 7-bit (ONNX Runtime's reduce_range), so CPUs without VNNI, whose AVX2 u8 x s8 products
  saturate at int16 with full 8-bit weights, compute the same answers as CPUs with it. Every load re-runs
  a few stored images and refuses a task whose int8 logits differ from the export's.
- ``bf16``: the ``torch`` backend under ``torch.autocast``, after ``tailor export --precision bf16``
  checked it (``<model-dir>/bf16``). Needs a CPU with bf16 instructions (AVX512-BF16 or AMX) or a GPU:
  elsewhere oneDNN emulates bf16 at about 0.01x the speed of ONNX Runtime fp32 (measured on an AVX2 CPU, see
  ``benchmarks/precision.py``), so it is refused.
"""

from __future__ import annotations

from pathlib import Path

from tailorrt.errors import ConfigError, DependencyMissingError

PRECISIONS = ("fp32", "bf16", "int8")
BACKEND_OF = {"bf16": "torch", "int8": "onnx"}  # the one backend that runs each low precision
EXPORT_KIND = {"fp32": "onnx", "bf16": "bf16", "int8": "onnx-int8"}
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def _cpuinfo_field(name: str, cpuinfo: Path) -> str:
    """The first ``name : value`` of Linux ``/proc/cpuinfo`` ("" where it cannot be read)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return ""


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The instruction-set flags of this CPU (Linux ``/proc/cpuinfo``; empty where it cannot be read)."""
    return set(_cpuinfo_field("flags", cpuinfo).split())


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """This CPU's model name ("" where it cannot be read)."""
    return _cpuinfo_field("model name", cpuinfo)


def cpu_summary(flags: set[str] | None = None) -> str:
    """What this CPU has for low precision, in a few words (``AVX2, no VNNI, no bf16``)."""
    flags = cpu_flags() if flags is None else flags
    width = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    have = [f for f in (*INT8_FLAGS, *BF16_FLAGS) if f in flags]
    return f"{width}, " + (", ".join(have) if have else "no VNNI, AMX or bf16 instructions")


def check_precision(precision: str, backend: str, device: str = "cpu", flags: set[str] | None = None) -> None:
    """Refuse, in one line, a precision that this backend or this CPU cannot run well."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return
    want = BACKEND_OF[precision]
    if backend != want:
        raise ConfigError(f"precision {precision} runs on the {want} backend, not {backend}; "
                          f"use --backend {want} --precision {precision}")
    if precision == "bf16" and not device.startswith("cuda"):
        flags = cpu_flags() if flags is None else flags
        if not any(f in flags for f in BF16_FLAGS):
            raise DependencyMissingError(
                f"bf16 needs a CPU with AVX512-BF16 or AMX (this one: {cpu_summary(flags)}); emulated it runs at "
                "a fraction of fp32's speed; use --precision int8 or fp32")
    if precision == "int8" and device.startswith("cuda"):
        raise ConfigError("int8 graphs run on the CPU; on a GPU use TensorRT (tailor export --trt --fp16)")
