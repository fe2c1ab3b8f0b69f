"""The training side (``pip install 'tailorrt[train]'``): backbones, datasets and the built-in world, the methods
that tailor a task, the training loop, and the ONNX graphs that export writes. It imports torch and torchvision;
the serving side (the rest of ``tailorrt``: records, runtime, onnx backend, images, server) imports nothing from
here except in the functions that need it (the torch backend, rebuilding a network), which a serving install never
calls (``tests/test_layers.py`` checks that it does not reach here)."""
