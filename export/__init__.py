"""Writers for deployable files (installed as ``tailorrt.export``): ONNX and TensorRT come in a later issue."""
