"""What this CPU has: its model, its instruction-set flags (for low precision above all) and the threads a backend
takes by default, read from Linux ``/proc/cpuinfo``; benchmarks print them beside every figure."""

from __future__ import annotations

from pathlib import Path

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


def cpu_threads() -> int:
    """Threads for a backend that is not told how many: this process's physical cores (as PyTorch's default),
    at most the CPUs it may run on."""
    import os

    import psutil

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(psutil.cpu_count(logical=False) or usable, usable))


def cpu_summary(flags: set[str] | None = None) -> str:
    """What this CPU has for low precision, in a few words (``AVX2, no VNNI, no bf16``)."""
    flags = cpu_flags() if flags is None else flags
    width = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    have = [f for f in (*INT8_FLAGS, *BF16_FLAGS) if f in flags]
    return f"{width}, " + (", ".join(have) if have else "no VNNI, AMX or bf16 instructions")
