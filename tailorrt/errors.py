"""Typed errors. Each message says what went wrong and what to do; the CLI prints it on one line.

Each class carries what every front end answers with it: its HTTP status, its gRPC status code (by name, so that
this module needs no ``grpc``) and the CLI's exit code. Anything else a server meets is a 500 / ``INTERNAL``.
"""


class TailorError(Exception):
    """Base class of every error tailorrt raises on purpose."""

    http_status = 500
    grpc_code = "INTERNAL"
    exit_code = 1


class UnknownTaskError(TailorError):
    """A task name that is neither registered nor a valid ``imagefolder:``/``coco:`` spec."""

    http_status = 404
    grpc_code = "NOT_FOUND"


class DatasetMissingError(TailorError):
    """A dataset is absent locally and cannot be downloaded."""


class BackboneMismatchError(TailorError):
    """A task pack was trained on a different backbone than the one loaded."""

    http_status = 409  # the model directory cannot give what was asked (corrupt, stale or another backbone)
    grpc_code = "FAILED_PRECONDITION"


class CheckpointError(TailorError):
    """A weights file is unreadable, corrupt, or its keys/shapes do not fit the model."""

    http_status = 409  # the model directory cannot give what was asked (corrupt, stale or another backbone)
    grpc_code = "FAILED_PRECONDITION"


class PackError(TailorError):
    """A task pack or model directory is missing, malformed or of an unknown format version."""

    http_status = 409  # the model directory cannot give what was asked (corrupt, stale or another backbone)
    grpc_code = "FAILED_PRECONDITION"


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

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class InputTooLargeError(TailorError):
    """A body, batch or image over the configured limits, decompression bombs included (HTTP 413)."""

    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class OverloadedError(TailorError):
    """A task's request queue is full, or the decode budget is taken; try again later (HTTP 503)."""

    http_status = 503
    grpc_code = "RESOURCE_EXHAUSTED"

    retry_after_s = 1


class RequestTimeoutError(TailorError):
    """A request body that did not arrive in time (HTTP 408)."""

    http_status = 408
    grpc_code = "DEADLINE_EXCEEDED"


class UnauthorizedError(TailorError):
    """A request without the server's API key, or with a wrong one (HTTP 401, gRPC UNAUTHENTICATED)."""

    http_status = 401
    grpc_code = "UNAUTHENTICATED"
