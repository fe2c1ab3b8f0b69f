"""fp32 ONNX graphs (``onnx/``): every task's graph reads the universal weights from ``universal.data``."""

from tailorrt.kinds import ExportKind, register
from tailorrt.kinds.checks import onnx_record, shared_summary

ONNX = register(ExportKind(folder="onnx", record_kind="onnx", backend="onnx", flag="", precision="fp32",
                           shared_file="universal.data", check_record=onnx_record(), export="tailorrt.export.exporter:onnx_step",
                           wanted=lambda req: True, summary=shared_summary("onnx", "universal.data")))
