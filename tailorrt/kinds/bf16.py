"""bf16 (``bf16/``, ``tailor export --precision bf16``): no weights of its own; the torch backend runs the fp32
packs under ``torch.autocast(bfloat16)``, for tasks whose accuracy the export checked."""

from tailorrt.errors import DependencyMissingError
from tailorrt.kinds.checks import onnx_record
from tailorrt.kinds.kind import ExportKind, register


def _device(device: str, flags: set[str] | None) -> None:
    """Emulated bf16 runs at about 0.01x ONNX Runtime fp32 (benchmarks/precision.py): refused on such CPUs."""
    from tailorrt.cpu import BF16_FLAGS, cpu_flags, cpu_summary

    if device.startswith("cuda"):
        return
    flags = cpu_flags() if flags is None else flags
    if not any(f in flags for f in BF16_FLAGS):
        raise DependencyMissingError(
            f"bf16 needs a CPU with AVX512-BF16 or AMX (this one: {cpu_summary(flags)}); emulated it runs at "
            "a fraction of fp32's speed; use --precision int8 or fp32")


BF16 = register(ExportKind(folder="bf16", record_kind="bf16", backend="torch", flag=" --precision bf16",
                           precision="bf16", task_files=False, autocast="bfloat16",
                           check_record=onnx_record(files=False),
                           wanted=lambda req: req.precision == "bf16", check_device=_device))
