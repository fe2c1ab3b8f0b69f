"""fp32 ONNX graphs (``onnx/``): every task's graph reads the universal weights from ``universal.data``."""

from tailorrt.kinds import ExportKind, register
from tailorrt.kinds.checks import onnx_record, shared_summary


def _export(ctx) -> dict:
    from tailorrt.export.exporter import export_onnx

    return export_onnx(ctx.mdir, ctx.bmeta, ctx.shared, ctx.networks, ctx.req, ctx.report)


ONNX = register(ExportKind(folder="onnx", record_kind="onnx", backend="onnx", flag="", precision="fp32",
                           shared_file="universal.data", check_record=onnx_record(), export=_export,
                           wanted=lambda req: True, summary=shared_summary("onnx", "universal.data")))
