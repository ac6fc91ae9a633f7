"""One error base for inferpack and a subclass per condition.

No HTTP imports here: `inferpack.server.errors` is the single place that maps these to status codes.
"""

from __future__ import annotations


class InferpackError(Exception):
    """Base of every error inferpack raises on purpose. `hint` tells the user what to do next."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message} ({self.hint})"


class InvalidModelId(InferpackError):
    """A model id outside the documented character set or length (e.g. path-like ids)."""


class ModelNotFound(InferpackError):
    """No model (or version) of that id exists in the repository or on this server.

    `model_id` is set when the model itself is unknown (listing the server's models helps), not merely one
    of its versions; transports turn that into their own how-to.
    """

    def __init__(self, message: str, *, hint: str | None = None, model_id: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.model_id = model_id


class ModelNotReady(InferpackError):
    """The model exists but is not loaded (unloaded, still loading, or its load failed).

    `model_id` is set when loading that model is the remedy; transports turn that into their own how-to.
    """

    def __init__(self, message: str, *, hint: str | None = None, model_id: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.model_id = model_id


class ModelLoadFailed(InferpackError):
    """Loading a model's files failed; the reason is kept and reported."""


class RepositoryError(InferpackError):
    """The model repository (layout, manifest, backend) is broken or unreachable."""


class InvalidInput(InferpackError):
    """A request whose body, tensors, shapes, datatypes or text cannot be used."""


class PayloadTooLarge(InferpackError):
    """A request body over the configured limit."""


class Overloaded(InferpackError):
    """A request shed at arrival: its model's queue is full, the expected wait would miss its deadline, or
    the memory budget is full of busy models.

    `reason` says which (`queue_full`, `deadline`, `memory_budget`), `retry_after_s` when
    the queue ahead is expected to have drained, `expected_wait_s` and `expected_service_s` the wait and
    compute the estimate found, `lateness` how much longer than estimated admitted requests took lately
    (the factor admission applied).
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float = 1.0,
        hint: str | None = None,
        model_id: str | None = None,
        reason: str = "queue_full",
        expected_wait_s: float | None = None,
        expected_service_s: float = 0.0,
        lateness: float = 1.0,
    ) -> None:
        super().__init__(message, hint=hint)
        self.retry_after_s = retry_after_s
        self.model_id = model_id
        self.reason = reason
        self.expected_wait_s = expected_wait_s
        self.expected_service_s = expected_service_s
        self.lateness = lateness


class DeadlineExceeded(InferpackError):
    """A queued request whose deadline passed (or would pass before its batch ends) before it ran: it is
    dropped instead of running work its caller has stopped waiting for."""

    def __init__(self, message: str, *, hint: str | None = None, model_id: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.model_id = model_id


class ClientDisconnected(InferpackError):
    """The caller closed its connection before the answer was ready; its queued work was dropped."""


class Unauthorized(InferpackError):
    """Missing or wrong bearer token."""


class Forbidden(InferpackError):
    """The operation is switched off (e.g. the repository API)."""


class ShuttingDown(InferpackError):
    """The server is draining and accepts no new work."""


class CompileError(InferpackError):
    """Tracing/compiling a model failed, or its output disagreed with eager mode."""


class ImportFailed(InferpackError):
    """A model could not be imported (`inferpack models import`); the repository is left unchanged."""


class ConfigError(InferpackError):
    """A settings file or plan file that cannot be used."""


class DeviceUnavailable(ConfigError):
    """The processor a server was asked to run on (a GPU, Neuron cores) is absent or unusable here."""


class FleetError(InferpackError):
    """The local fleet could not start, or its state cannot be acted on. `log_tail` holds the failing log."""

    def __init__(self, message: str, *, hint: str | None = None, log_tail: str = "") -> None:
        super().__init__(message, hint=hint)
        self.log_tail = log_tail


class PlanError(InferpackError):
    """A placement problem with no feasible solution, or a malformed plan."""


class InsufficientStorage(ModelLoadFailed):
    """A model cannot be held here at all: retrying on this server cannot help (HTTP 507)."""


class ModelTooLarge(InsufficientStorage):
    """A model needs more memory than the server's whole memory budget."""


class CacheFull(InsufficientStorage):
    """The disk of the local model cache (S3 repositories) has no room for a model's files."""
