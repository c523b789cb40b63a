"""The interface every analysis provider implements, and the errors it may raise.

::

    ProviderError(code, message)     the provider failed; ``code`` is one of ERROR_CODES
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from storage.analyses import AnalysisInput

#: Error codes an analysis can end with (the ``code`` of the ``error`` event).
OVERLOADED = "overloaded"
RATE_LIMITED = "rate_limited"
TIMEOUT = "timeout"
CANCELLED = "cancelled"
PROVIDER_ERROR = "provider_error"
INTERRUPTED = "interrupted"
INTERNAL = "internal_error"
ERROR_CODES = (OVERLOADED, RATE_LIMITED, TIMEOUT, CANCELLED, PROVIDER_ERROR, INTERRUPTED, INTERNAL)


class ProviderError(Exception):
    """The provider could not complete the analysis. ``message`` is safe to show users."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Completion:
    """How a finished stream ended: token ``usage`` and the provider's ``stop_reason``."""

    usage: dict[str, Any] = field(default_factory=dict)
    stop_reason: str | None = None


class Provider(Protocol):
    """Produces the text of an analysis as a stream of deltas.

    ``name`` is reported to users (``anthropic``, ``offline``), ``model`` the model used.
    """

    name: str
    model: str

    async def stream(
        self,
        kind: str,
        data: AnalysisInput,
        on_text: Callable[[str], None],
        *,
        question: str | None = None,
    ) -> Completion:
        """Generate analysis ``kind`` of ``data`` (answering ``question`` for kind
        ``question``), calling ``on_text`` with each text delta in order, and return how it
        ended.

        Raises :class:`ProviderError`. Cancelling the calling task must stop the upstream work
        promptly (close the HTTP stream) and propagate ``CancelledError``.
        """
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
