"""fp32 ONNX graphs (``onnx/``): every task's graph reads the universal weights from ``universal.data``."""

from tailorrt.kinds.checks import onnx_record, shared_summary
from tailorrt.kinds.kind import ExportKind, register

# the fraction of the shared weights' bytes a task graph may copy to fold its batch norms in (tailor export
# --fuse-budget): on a ResNet34 at 224 px it bought as much speed as 0.02 (benchmarks/fuse_budget.py)
FUSE_BUDGET = 0.005

ONNX = register(ExportKind(folder="onnx", record_kind="onnx", backend="onnx", flag="", precision="fp32",
                           shared_file="universal.data", check_record=onnx_record(),
                           wanted=lambda req: True, summary=shared_summary("onnx", "universal.data")))
