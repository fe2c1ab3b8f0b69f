"""int8 ONNX graphs (``onnx-int8/``, ``tailor export --precision int8``): one int8 copy of the universal weights,
and images stored per task that every load re-runs (int8 kernels differ between CPUs)."""

from tailorrt.errors import ConfigError
from tailorrt.kinds.checks import onnx_record, shared_summary
from tailorrt.kinds.kind import ExportKind, register


def _device(device: str, flags: set[str] | None) -> None:
    if device.startswith("cuda"):
        raise ConfigError("int8 graphs run on the CPU; on a GPU use TensorRT (tailor export --trt --fp16)")


INT8 = register(ExportKind(folder="onnx-int8", record_kind="onnx-int8", backend="onnx", flag=" --precision int8",
                           precision="int8", shared_file="universal-int8.data", checks_on_load=True,
                           prepacks_shared=False, check_record=onnx_record(check_file=True),
                           wanted=lambda req: req.precision == "int8", check_device=_device,
                           summary=shared_summary("onnx-int8", "universal-int8.data")))
