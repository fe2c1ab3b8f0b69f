"""Bounds on what a caller may send: one image, one request, and the decoding of every request at once.

No heavy imports: the CLI reads the defaults for its ``--help``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tailorrt.errors import ConfigError

MIB = 1024 * 1024  # the unit of every size limit (--max-body-mb, --max-decode-mb)
MB = 1_000_000  # the unit sizes are reported in (tailor bench, tailor info)
DEFAULT_MAX_PIXELS = 40_000_000
# JPEG includes the MPO files of phone cameras; PPM is GTSRB's format
DEFAULT_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "PPM")


@dataclass(frozen=True)
class Limits:
    """Bounds on one image, on one request, and on the decoding of every request at once."""

    max_pixels: int = DEFAULT_MAX_PIXELS  # one image
    max_images: int = 256  # one request
    max_request_pixels: int = 100_000_000  # all images of one request (they are decoded one after another)
    max_decode_bytes: int = 1024 * MIB  # decodes in flight at once, over all requests (0: unbounded)
    decode_wait_s: float = 2.0  # how long a decode waits for budget before answering "overloaded"
    formats: tuple[str, ...] = DEFAULT_FORMATS

    @classmethod
    def from_json(cls, data: dict) -> Limits:
        """The limits from their fields as JSON gives them back (``formats`` a list; a missing field its default)."""
        return cls(**{**data, "formats": tuple(data.get("formats", DEFAULT_FORMATS))})

    def __post_init__(self) -> None:
        from PIL import Image

        numbers = {"max_pixels": self.max_pixels, "max_images": self.max_images,
                   "max_request_pixels": self.max_request_pixels}
        for name, value in numbers.items():
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, not {value}")
        if self.max_decode_bytes < 0 or self.decode_wait_s < 0:
            raise ConfigError("the decode budget and its wait must not be negative")
        if self.formats == DEFAULT_FORMATS:  # known to PIL; and Limits() is a default argument: no work at import
            return
        Image.init()
        unknown = [f for f in self.formats if f not in Image.OPEN]
        if unknown or not self.formats:
            raise ConfigError(f"unknown image format(s) {', '.join(unknown) or '(none given)'}; PIL reads "
                              f"{', '.join(sorted(Image.OPEN))}")
