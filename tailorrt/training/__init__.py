"""The training side (``pip install 'tailorrt[train]'``): backbones, datasets and the built-in world, the methods
that tailor a task, the training loop, and the ONNX graphs that export writes. It imports torch and torchvision;
the core (the rest of ``tailorrt``: records, runtime, onnx backend, images) and the server import nothing from here,
not even in a function (``tests/test_layers.py`` checks it): this side registers what they reach (the torch and
TensorRT backends, entry points of ``tailorrt.backends``), and the commands compose both sides."""
