"""Deployable files (installed as ``tailorrt.export``): ONNX task graphs sharing one universal weight file,
and TensorRT engines. Entry point: :func:`tailorrt.export.exporter.export_model` (``tailor export``)."""
