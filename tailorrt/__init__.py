"""tailorrt: one frozen backbone, many small task networks (NetTailor), exported and served together."""

__version__ = "0.1.0"
