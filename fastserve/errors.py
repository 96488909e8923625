"""Canonical status codes, the one table that maps them to HTTP, and the error type.

Every part raises ServingError; each transport turns it into its own wire form
(gRPC status, HTTP status + {"error": ...}) through this table only.
"""
from grpc import StatusCode

# Canonical code -> HTTP status, as TensorFlow Serving's REST API maps them.
HTTP_STATUS: dict[StatusCode, int] = {
    StatusCode.OK: 200,
    StatusCode.CANCELLED: 499,
    StatusCode.UNKNOWN: 500,
    StatusCode.INVALID_ARGUMENT: 400,
    StatusCode.DEADLINE_EXCEEDED: 504,
    StatusCode.NOT_FOUND: 404,
    StatusCode.ALREADY_EXISTS: 409,
    StatusCode.PERMISSION_DENIED: 403,
    StatusCode.RESOURCE_EXHAUSTED: 429,
    StatusCode.FAILED_PRECONDITION: 400,
    StatusCode.ABORTED: 409,
    StatusCode.OUT_OF_RANGE: 400,
    StatusCode.UNIMPLEMENTED: 501,
    StatusCode.INTERNAL: 500,
    StatusCode.UNAVAILABLE: 503,
    StatusCode.DATA_LOSS: 500,
    StatusCode.UNAUTHENTICATED: 401,
}

# Canonical code number (as TensorFlow's error_code and the Status proto carry it) -> code.
BY_NUMBER: dict[int, StatusCode] = {code.value[0]: code for code in StatusCode}


# Messages echo what requests sent (names, values): a 10 KB model name in a gRPC status message
# passes the 8 KB metadata limit of clients, which then see RESOURCE_EXHAUSTED instead.
MAX_MESSAGE = 1024


class ServingError(Exception):
    """A request failed with a canonical status code and a message a user can act on."""

    def __init__(self, code: StatusCode, message: str, http_status: int | None = None, retry_after: int = 0):
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 15] + " ... (truncated)"
        super().__init__(message)
        self.code = code
        self.message = message
        self._http_status = http_status  # only where HTTP has a more exact status (413)
        self.retry_after = retry_after  # seconds after which a refused request may succeed (HTTP Retry-After); 0: unknown

    @property
    def http_status(self) -> int:
        return self._http_status or HTTP_STATUS.get(self.code, 500)

    def __repr__(self) -> str:
        return f"ServingError({self.code.name}, {self.message!r})"


class LoadError(Exception):
    """A version could not be loaded; the message says why, the code is TF Serving's."""

    def __init__(self, message: str, code: StatusCode = StatusCode.UNKNOWN):
        super().__init__(message)
        self.code = code


def invalid_argument(message: str) -> ServingError:
    return ServingError(StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(StatusCode.NOT_FOUND, message)


def internal(exc: BaseException) -> ServingError:
    """An unexpected failure (a bug), as the one request it happened to answers it."""
    return ServingError(StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")


def from_tensorflow(exc: Exception) -> ServingError:
    """Map a TensorFlow OpError (which carries a canonical code) to a ServingError."""
    code = BY_NUMBER.get(getattr(exc, "error_code", -1), StatusCode.INTERNAL)
    message = getattr(exc, "message", None) or str(exc)
    return ServingError(code, message)
