"""The HTTP server (installed as ``tailorrt.serving``): comes in a later issue."""
