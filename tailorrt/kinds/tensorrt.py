"""TensorRT engines (``trt/``, ``tailor export --trt``): one engine per task, built from its ONNX graph."""

from tailorrt.kinds.checks import Invalid, field_of, file_entry, sha
from tailorrt.kinds.kind import ExportKind, register


def _record(data: dict) -> None:
    sha(data, "backbone_sha256")
    field_of(data, "fp16", bool)
    field_of(data, "tensorrt", str)
    field_of(data, "gpu", str)
    if field_of(data, "max_batch", int) < 1:
        raise Invalid("'max_batch' must be at least 1")
    for name, entry in field_of(data, "tasks", dict).items():
        file_entry(entry, f"tasks.{name}.")


def _summary(record) -> str:
    precision = "fp16" if record.engines.fp16 else "fp32"
    return f"trt/: {len(record.tasks)} engines ({precision}) {record.bytes / 1e6:.2f} MB"


TENSORRT = register(ExportKind(folder="trt", record_kind="tensorrt", backend="tensorrt", flag=" --trt",
                               backbone_key=("backbone_sha256",), check_record=_record,
                               wanted=lambda req: req.trt, summary=_summary))
