"""tailorrt: one frozen backbone, many small task networks (NetTailor), exported and served together."""

__version__ = "0.1.0"

__all__ = ["Prediction", "Runtime", "__version__"]


def __getattr__(name: str):
    """``from tailorrt import Runtime`` without importing torch for every ``import tailorrt``."""
    if name in ("Runtime", "Prediction"):
        from tailorrt import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'tailorrt' has no attribute {name!r}")
