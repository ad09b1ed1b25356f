"""Errors typed by who is at fault, each carrying what the client sees.

One handler (edge.node.app) turns any EdgeError into the JSON error response; the CLI prints
`message` for the ones that reach a user.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base class. `status` is the HTTP status the client gets; `reason` a stable short code."""

    status = 500
    reason = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- The client's fault -------------------------------------------------------------------------


class BadRequest(EdgeError):
    status = 400
    reason = "bad_request"


class UsageError(BadRequest):
    """A command line that does not parse: a missing argument, a bad option value."""

    reason = "usage_error"


class NoRoute(EdgeError):
    status = 404
    reason = "no_route"


class RequestBodyTooLarge(EdgeError):
    status = 413
    reason = "request_body_too_large"


class MethodNotAllowed(EdgeError):
    """A node's own endpoint (/healthz, /readyz, /metrics) asked with a method it lacks."""

    status = 405
    reason = "method_not_allowed"


# --- The function's fault (its author's) --------------------------------------------------------


class FunctionError(EdgeError):
    """The function misbehaved at request time. The node keeps serving."""

    status = 500
    reason = "function_error"


class FunctionTrapped(FunctionError):
    reason = "trap"


class FunctionException(FunctionError):
    """The function's code raised an exception it did not catch (its SDK reported it before
    the trap, see edge.sandbox.uncaught). `message` names the exception's type only: what it
    says and its traceback can hold secrets or other users' data, so they go to the
    function's log (and `edge dev`'s answer), never to a client of a node."""

    reason = "function_exception"

    def __init__(self, exception_type: str, request_id: str) -> None:
        where = f" under request id {request_id}" if request_id else ""
        super().__init__(
            f"function raised an uncaught exception: {exception_type}; "
            f"the traceback is in the function's log{where}"
        )
        self.exception_type = exception_type


class NoResponse(FunctionError):
    """The handler returned a Promise that never settled: the engine ran out of work to run
    with no answer to give (see edge.sandbox.awaiting). As Workers' "The script will never
    generate a response"."""

    reason = "no_response"

    def __init__(self, request_id: str) -> None:
        where = f" (request id {request_id})" if request_id else ""
        super().__init__(
            "function gave no response: its handler's Promise never settled, as nothing left "
            "to run could settle it (an await on a Promise nothing resolves, or an event that "
            f"never comes){where}"
        )


class MemoryLimitExceeded(FunctionError):
    reason = "memory_limit"


class DeadlineExceeded(FunctionError):
    status = 504
    reason = "deadline_exceeded"


class ResponseTooLarge(FunctionError):
    status = 502
    reason = "response_too_large"


class InvalidResponse(FunctionError):
    status = 502
    reason = "invalid_response"


# --- The node's fault ---------------------------------------------------------------------------


class NodeOutOfMemory(EdgeError):
    """The node could not allocate what a request needs (not the function's memory limit,
    which is MemoryLimitExceeded): retry, here or elsewhere."""

    status = 503
    reason = "node_out_of_memory"


class FunctionOverloaded(EdgeError):
    """More requests of one function at once than the node gives it workers for, and its
    queue is full or the wait ran out (edge.node.fairshare): retry after `retry_after_s`."""

    status = 503
    reason = "overloaded"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


# --- Rejected before any request: bad artifacts and configuration -------------------------------


class ComponentRejected(EdgeError):
    """A component that cannot be loaded: corrupt, wrong exports, or imports outside the world."""

    status = 503
    reason = "component_rejected"


class ConfigError(EdgeError):
    """A config file is wrong. The message names the file, the key and what is allowed."""

    reason = "config_error"


class ListenFailed(ConfigError):
    """A server cannot bind its address: taken, privileged, or not this host's."""

    reason = "listen_failed"


# --- Building functions -------------------------------------------------------------------------


class ToolchainMissing(EdgeError):
    reason = "toolchain_missing"


class BuildFailed(EdgeError):
    reason = "build_failed"

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output
