"""Typed errors. Each message says what went wrong and what to do; the CLI prints it on one line."""


class TailorError(Exception):
    """Base class of every error tailorrt raises on purpose."""


class UnknownTaskError(TailorError):
    """A task name that is neither registered nor a valid ``imagefolder:``/``coco:`` spec."""


class DatasetMissingError(TailorError):
    """A dataset is absent locally and cannot be downloaded."""


class BackboneMismatchError(TailorError):
    """A task pack was trained on a different backbone than the one loaded."""


class CheckpointError(TailorError):
    """A weights file is unreadable, corrupt, or its keys/shapes do not fit the model."""


class PackError(TailorError):
    """A task pack or model directory is missing, malformed or of an unknown format version."""


class IntegrityError(PackError):
    """A file does not match the sha256 recorded for it: it was changed, truncated or corrupted after it was
    written. Nothing read from it is used."""


class ConfigError(TailorError):
    """An invalid option or combination of options."""


class TrainingError(TailorError):
    """Training could not produce a pack that can be trusted."""


class TrainingDivergedError(TrainingError):
    """The loss became NaN or infinite."""


class ExportError(TailorError):
    """An export failed: an unsupported module, an invalid graph, or outputs that do not match PyTorch."""


class DependencyMissingError(TailorError):
    """An optional dependency or device (TensorRT, a CUDA GPU) is not available; exit code 2."""

    exit_code = 2


class BadInputError(TailorError):
    """A request or image that cannot be used: undecodable, truncated, wrong dtype or shape, empty (HTTP 400)."""


class InputTooLargeError(TailorError):
    """A body, batch or image over the configured limits, decompression bombs included (HTTP 413)."""


class OverloadedError(TailorError):
    """A task's request queue is full, or the decode budget is taken; try again later (HTTP 503)."""

    retry_after_s = 1


class RequestTimeoutError(TailorError):
    """A request body that did not arrive in time (HTTP 408)."""


class UnauthorizedError(TailorError):
    """A request without the server's API key, or with a wrong one (HTTP 401, gRPC UNAUTHENTICATED)."""
