"""The HTTP server (installed as ``tailorrt.serving``): ``create_app(runtime)`` in :mod:`tailorrt.serving.app`."""
