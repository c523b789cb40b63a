"""Typed application keys. Imports nothing from ``server`` so handlers never depend on it."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from handlers.analysis.runner import AnalysisRunner
from handlers.config import HandlersConfig
from handlers.email import Mailer
from handlers.metrics import HttpMetrics
from handlers.outbox_relay import OutboxRelay
from handlers.ratelimit import RateLimiter
from handlers.service_signature import ReplayCache
from handlers.tokens import TokenService
from handlers.ws_admission import UnauthenticatedSockets
from handlers.ws_connection import Connection
from handlers.ws_registry import ConnectionRegistry
from pubsub.hub import Hub
from pubsub.presence import Presence

config = web.AppKey("config", HandlersConfig)
pool = web.AppKey("pool", asyncpg.Pool)
hub = web.AppKey("hub", Hub)
registry = web.AppKey("registry", CollectorRegistry)
http_metrics = web.AppKey("http_metrics", HttpMetrics)
connections = web.AppKey("connections", ConnectionRegistry)
relay = web.AppKey("relay", OutboxRelay)
tokens = web.AppKey("tokens", TokenService)
#: the shared Redis client, present only when REDIS_URL is set
redis = web.AppKey("redis", Redis)
rate_limiter = web.AppKey("rate_limiter", RateLimiter)
#: signatures of signed service requests already used (Redis when REDIS_URL is set)
replay_cache = web.AppKey("replay_cache", ReplayCache)
#: WebSocket sockets per client address not authenticated yet (WS_MAX_UNAUTHENTICATED_PER_IP)
ws_admission = web.AppKey("ws_admission", UnauthenticatedSockets[Connection])
mailer = web.AppKey("mailer", Mailer)
presence = web.AppKey("presence", Presence)
analysis_runner = web.AppKey("analysis_runner", AnalysisRunner)
#: what is in use, for logs and /ready: {"database": "embedded"|"postgres", "broker": ...}
backends = web.AppKey("backends", dict[str, Any])
