"""Setpoint's one error tree: each class's docstring is its default message."""

from __future__ import annotations


class SetpointError(Exception):
    """Setpoint failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def reason(self) -> str:
        """The CamelCase reason a status condition shows for this error."""
        return type(self).__name__.removesuffix("Error")


class TransientError(SetpointError):
    """The reconcile failed, and may work on a later attempt: it is retried with backoff."""

    def __init__(self, message: str | None = None, *, retry_after_s: float | None = None) -> None:
        self.retry_after_s = retry_after_s
        """The next attempt comes no sooner than this (a server's Retry-After), even if the backoff is shorter."""
        super().__init__(message)


class PermanentError(SetpointError):
    """Retrying cannot help until the desired state changes: recorded in status and not retried."""


class InvalidSpec(PermanentError):
    """The desired state is invalid, or not allowed on this worker: phase Invalid; the resource is reconciled again
    once its row changes. `reason` says which rule it broke (`InvalidSpec` unless a more precise one is given)."""

    def __init__(self, field: str, message: str, reason: str = "InvalidSpec") -> None:
        self.field = field
        self._reason = reason
        super().__init__(f"{field}: {message}")

    @property
    def reason(self) -> str:
        return self._reason


class StaleConnection(SetpointError):
    """The pooled database connection was closed by the server (a restart) before the reconcile did anything:
    running it again at once, on a new connection, is safe."""


class LockLost(SetpointError):
    """The database ended the session holding the resource's lock in the middle of a reconcile (another worker
    may be reconciling it now): the reconcile stops before its next action and records nothing."""


class UnknownKind(SetpointError):
    """No controller is registered for this kind; register one, or check the kind's spelling."""


class UsageError(SetpointError):
    """The command was given settings or arguments it cannot work with."""


class EmbeddedServiceError(SetpointError):
    """An embedded server could not be set up or started; the message says which one and why."""


class InvalidDocument(SetpointError):
    """A manifest or request body is not valid desired state; the message names the document and the field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


class NotFound(SetpointError):
    """No resource of that kind has that name."""


class AlreadyExists(SetpointError):
    """A resource of that kind already has that name."""


class PreconditionFailed(SetpointError):
    """The resource changed since it was read: its generation is no longer the one If-Match named; read it again."""
