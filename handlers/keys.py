"""Typed application keys. Imports nothing from ``server`` so handlers never depend on it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from handlers.metrics import HttpMetrics
from handlers.realtime.transport import Connection, Flusher
from pubsub.hub import Hub
from pubsub.presence import Presence
from services.alerts.group_commit import GroupCommit
from services.alerts.signatures import SecretBox
from services.analysis.runner import AnalysisRunner
from services.auth.ratelimit import RateLimiter
from services.auth.service_signature import ReplayCache
from services.auth.tokens import TokenService
from services.channels.permissions import ChannelRules
from services.config import HandlersConfig
from services.mail.mailer import Mailer
from services.outbox.relay import OutboxRelay
from services.realtime.admission import UnauthenticatedSockets
from services.realtime.registry import ConnectionRegistry
from services.realtime.session import RealtimeService

config = web.AppKey("config", HandlersConfig)
pool = web.AppKey("pool", asyncpg.Pool)
hub = web.AppKey("hub", Hub)
registry = web.AppKey("registry", CollectorRegistry)
#: renders /metrics: this process's registry, or every worker's under ``serve --workers``
metrics_text: web.AppKey[Callable[[], bytes]] = web.AppKey("metrics_text")
http_metrics = web.AppKey("http_metrics", HttpMetrics)
connections = web.AppKey("connections", ConnectionRegistry)
#: what every real-time session shares (hub, registry, permission rules, limits...)
realtime = web.AppKey("realtime", RealtimeService)
#: writes the queued frames of every WebSocket connection once per loop iteration
flusher = web.AppKey("flusher", Flusher)
relay = web.AppKey("relay", OutboxRelay)
#: commits concurrent webhooks' alerts together (services.alerts.group_commit)
group_commit = web.AppKey("group_commit", GroupCommit)
tokens = web.AppKey("tokens", TokenService)
#: the shared Redis client (a cluster client for a redis+cluster:// URL), only with REDIS_URL
redis: web.AppKey[Redis | RedisCluster] = web.AppKey("redis")
#: encrypts the strategies' webhook signing secrets (key derived from SERVICE_SECRET)
secret_box = web.AppKey("webhook_secret_box", SecretBox)
rate_limiter = web.AppKey("rate_limiter", RateLimiter)
#: the limit of the hot paths (real-time sessions' per-user commands, webhooks per client IP):
#: ``rate_limiter``, or with Redis and RATE_LIMIT_SYNC_SECONDS > 0 a local-first one synced with
#: Redis in the background
local_first_limiter = web.AppKey("local_first_limiter", RateLimiter)
#: signatures of signed service requests already used (Redis when REDIS_URL is set)
replay_cache = web.AppKey("replay_cache", ReplayCache)
#: WebSocket sockets per client address not authenticated yet (WS_MAX_UNAUTHENTICATED_PER_IP)
ws_admission = web.AppKey("ws_admission", UnauthenticatedSockets[Connection])
mailer = web.AppKey("mailer", Mailer)
presence = web.AppKey("presence", Presence)
analysis_runner = web.AppKey("analysis_runner", AnalysisRunner)
#: who may subscribe to which channel
channel_rules = web.AppKey("channel_rules", ChannelRules)
#: what is in use, for logs and /ready: {"database": "embedded"|"postgres", "broker": ...}
backends = web.AppKey("backends", dict[str, Any])
