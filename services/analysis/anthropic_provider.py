"""Claude through the official SDK's streaming Messages API (``AsyncAnthropic.messages.stream``).

SDK exceptions become :class:`~services.analysis.providers.ProviderError` codes::

    OverloadedError (529) or an ``overloaded_error`` SSE event   -> overloaded
    RateLimitError (429) or a ``rate_limit_error`` SSE event     -> rate_limited
    APITimeoutError, 408, 504                                    -> timeout
    any other APIStatusError, APIConnectionError, bad stream     -> provider_error

An ``error`` event in the middle of a stream arrives as an ``APIStatusError`` carrying the HTTP
status of the (successful) response, so the error ``type`` in its body decides, not the status.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anthropic

from services.analysis.prompt import build_prompt
from services.analysis.providers import (
    OVERLOADED,
    PROVIDER_ERROR,
    RATE_LIMITED,
    TIMEOUT,
    Completion,
    ProviderError,
)
from storage.analyses import AnalysisInput

log = logging.getLogger(__name__)

_BY_TYPE = {
    "overloaded_error": OVERLOADED,
    "rate_limit_error": RATE_LIMITED,
    "timeout_error": TIMEOUT,
}
_BY_STATUS = {529: OVERLOADED, 429: RATE_LIMITED, 408: TIMEOUT, 504: TIMEOUT}
_MESSAGES = {
    OVERLOADED: "the AI provider is overloaded; try again in a moment",
    RATE_LIMITED: "the AI provider's rate limit was reached; try again later",
    TIMEOUT: "the AI provider did not answer in time",
}


def map_error(exc: anthropic.AnthropicError) -> ProviderError:
    """The :class:`ProviderError` for an SDK exception (see the module docstring)."""
    if isinstance(exc, anthropic.APITimeoutError):
        return ProviderError(TIMEOUT, _MESSAGES[TIMEOUT])
    if isinstance(exc, anthropic.APIStatusError):
        code = _BY_TYPE.get(str(exc.type)) or _BY_STATUS.get(exc.status_code, PROVIDER_ERROR)
        if code in _MESSAGES:
            return ProviderError(code, _MESSAGES[code])
        detail = exc.api_message or f"status {exc.status_code}"
        return ProviderError(PROVIDER_ERROR, f"the AI provider refused the request: {detail}")
    if isinstance(exc, anthropic.APIConnectionError):
        return ProviderError(PROVIDER_ERROR, "the AI provider could not be reached")
    return ProviderError(PROVIDER_ERROR, f"the AI provider failed: {type(exc).__name__}")


def _usage(usage: Any) -> dict[str, Any]:
    fields = (
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    )
    return {name: getattr(usage, name) for name in fields if getattr(usage, name, None) is not None}


class AnthropicProvider:
    """Streams an analysis from Claude.

    ``timeout`` bounds each HTTP operation (connect, each read); the runner bounds the whole
    analysis. ``max_retries`` applies only before the stream starts (the SDK retries 429, 529
    and 5xx answers honouring ``retry-after``); a stream that fails midway is not retried
    because its text has already been published.
    """

    name = "anthropic"

    def __init__(
        self,
        *,
        api_key: str,
        model: str,
        max_tokens: int,
        timeout: float,
        base_url: str | None = None,
        max_retries: int = 2,
    ) -> None:
        self.model = model
        self.max_tokens = max_tokens
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries
        )

    async def stream(
        self,
        kind: str,
        data: AnalysisInput,
        on_text: Callable[[str], None],
        *,
        question: str | None = None,
    ) -> Completion:
        """Stream the analysis; cancelling closes the HTTP response at once."""
        prompt = build_prompt(kind, data, question)
        try:
            async with self._client.messages.stream(
                model=self.model,
                max_tokens=self.max_tokens,
                system=prompt.system,
                messages=[{"role": "user", "content": prompt.user}],
            ) as stream:
                async for text in stream.text_stream:
                    on_text(text)
                message = await stream.get_final_message()
        except anthropic.AnthropicError as exc:
            error = map_error(exc)
            log.warning(
                "analysis provider failed",
                extra={"code": error.code, "error_type": type(exc).__name__},
            )
            raise error from exc
        return Completion(_usage(message.usage), message.stop_reason)

    async def close(self) -> None:
        """Close the SDK's HTTP connection pool."""
        await self._client.close()
