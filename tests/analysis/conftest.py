"""Fixtures for analysis tests: a fake Anthropic API and apps wired to it or to the offline
provider."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from server.app import create_app
from server.settings import Settings
from tests.analysis.fake_anthropic import API_KEY, FakeAnthropic


@pytest.fixture
async def fake_anthropic() -> AsyncIterator[FakeAnthropic]:
    fake = FakeAnthropic()
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
def claude_settings(
    make_settings: Callable[..., Settings], fake_anthropic: FakeAnthropic
) -> Callable[..., Settings]:
    """Settings factory for an app whose provider is the fake Anthropic API."""

    def factory(**env: str) -> Settings:
        values = {
            "ANTHROPIC_API_KEY": API_KEY,
            "ANTHROPIC_BASE_URL": fake_anthropic.url,
            "ANTHROPIC_MODEL": "claude-test-1",
            "ANALYSIS_FLUSH_MS": "20",
        }
        values.update(env)
        return make_settings(**values)

    return factory


@pytest.fixture
async def claude_client(
    fake_anthropic: FakeAnthropic, aiohttp_client: Any, claude_settings: Callable[..., Settings]
) -> Any:
    # fake_anthropic first: it is then torn down after the app, which may still stream from it.
    return await aiohttp_client(create_app(claude_settings()))


@pytest.fixture
async def offline_client(aiohttp_client: Any, make_settings: Callable[..., Settings]) -> Any:
    """The app with no API key (offline provider), streaming fast."""
    return await aiohttp_client(create_app(make_settings(ANALYSIS_OFFLINE_TPS="5000")))
