"""tailorrt: one frozen backbone, many small task networks (NetTailor), exported and served together."""

from tailorrt.version import __version__

__all__ = ["Prediction", "Runtime", "__version__"]


def __getattr__(name: str):
    """``from tailorrt import Runtime`` without importing torch for every ``import tailorrt``."""
    if name in ("Runtime", "Prediction"):
        from tailorrt import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'tailorrt' has no attribute {name!r}")
