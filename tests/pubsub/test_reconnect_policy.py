"""The pub/sub reconnect backoff: quick first retry, exponential growth, capped, jittered."""

from __future__ import annotations

from pubsub.redis_pubsub import ReconnectPolicy


def test_backoff_grows_exponentially_up_to_the_cap_with_jitter() -> None:
    policy = ReconnectPolicy(minimum=0.1, maximum=5.0)
    for attempt, ceiling in [(0, 0.1), (1, 0.2), (3, 0.8), (6, 5.0), (1000, 5.0)]:
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempt, min(delays))
        assert len(set(delays)) > 100, "jittered, so nodes do not reconnect in step"
