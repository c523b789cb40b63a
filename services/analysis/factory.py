"""Choosing the analysis provider from the configuration."""

from __future__ import annotations

from services.analysis.offline_provider import OfflineProvider
from services.analysis.providers import Provider
from services.config import AnalysisConfig


def build_provider(config: AnalysisConfig) -> Provider:
    """Claude when an API key is configured, the offline analyser otherwise.

    The Anthropic SDK is imported only when it is used: it is most of the process's start-up
    time (about 0.9 s) and a good part of its baseline memory.
    """
    if config.anthropic_api_key:
        from services.analysis.anthropic_provider import AnthropicProvider

        return AnthropicProvider(
            api_key=config.anthropic_api_key,
            model=config.model,
            max_tokens=config.max_tokens,
            timeout=config.timeout,
            base_url=config.anthropic_base_url,
        )
    return OfflineProvider(config.offline_tokens_per_second)
