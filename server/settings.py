"""Settings read from environment variables.

Every variable is documented in ``docs/configuration.md``; a test checks that the two agree.
In production (``ENV=production``) a missing secret is a startup error, never a silent default;
in development missing secrets are generated once and kept in ``DATA_DIR/secrets.json`` so that
tokens survive a restart.
"""

from __future__ import annotations

import hmac
import json
import math
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from handlers.client_ip import parse_networks
from pubsub.namespaces import NamespaceOptions, default_namespaces
from pubsub.redis_url import is_cluster_url, parse_cluster_url
from services.auth.tokens import KeyConfigError, TokenService
from services.config import (
    AnalysisConfig,
    AuthConfig,
    EmailConfig,
    HandlersConfig,
    HttpConfig,
    WebhookConfig,
    WsConfig,
)


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


#: Variables that must be set explicitly in production.
PRODUCTION_SECRETS = ("JWT_SECRET", "SERVICE_SECRET")

MIN_SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service needs to start, grouped by the layer that uses it."""

    env: str = "development"
    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str | None = None
    redis_url: str | None = None
    redis_prefix: str = "arena"
    redis_cluster_partitions: int = 64
    #: Seconds to open a Redis connection (TCP connect).
    redis_connect_timeout: float = 10.0
    #: Seconds a Redis command may take (socket reads and writes, waiting for a free connection).
    redis_command_timeout: float = 10.0
    #: Seconds a channel subscribe waits for Redis to confirm it (or for a reconnect).
    redis_subscribe_timeout: float = 10.0
    #: Seconds of silence before the pub/sub connection is PINGed.
    redis_keepalive_interval: float = 10.0
    #: Seconds a keepalive PING may go unanswered before the connection is replaced.
    redis_keepalive_timeout: float = 10.0
    #: Seconds between syncs of the per-user command limit with Redis (local-first); <= 0: every
    #: command asks Redis (exact).
    rate_limit_sync_seconds: float = 0.1
    data_dir: Path = Path(".data")
    log_level: str = "INFO"
    db_pool_min: int = 1
    db_pool_max: int = 10
    #: Seconds to open a PostgreSQL connection (TCP connect and authentication).
    db_connect_timeout: float = 10.0
    #: Seconds a PostgreSQL statement may run before it is cancelled.
    db_command_timeout: float = 30.0
    shutdown_timeout: float = 10.0
    #: pending TCP connections the kernel queues for the listening socket (capped by somaxconn)
    listen_backlog: int = 2048
    uvloop: bool = True
    #: worker processes sharing the port (``serve --workers``); more than one needs REDIS_URL
    workers: int = 1
    #: prometheus-client's multiprocess folder; set (by the supervisor) when workers share /metrics
    prometheus_multiproc_dir: Path | None = None
    migrate_on_start: bool = True
    presence_ttl: float = 30.0
    presence_unique_users: bool = True
    namespaces: dict[str, NamespaceOptions] = field(default_factory=default_namespaces)
    handlers: HandlersConfig = field(default_factory=HandlersConfig)

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def redis_cluster(self) -> bool:
        """Whether ``REDIS_URL`` names a Redis Cluster (``redis+cluster://``)."""
        return self.redis_url is not None and is_cluster_url(self.redis_url)

    def with_handlers(self, **changes: Any) -> Settings:
        """Copy with some handler config sections replaced (used by tests)."""
        return replace(self, handlers=replace(self.handlers, **changes))


def _str(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value or default


def _opt(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    return value


def _path(env: Mapping[str, str], name: str) -> Path | None:
    value = _opt(env, name)
    return Path(value) if value else None


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _list(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _dev_secrets(data_dir: Path) -> dict[str, str]:
    """Load or create the development secrets file so restarts keep tokens valid."""
    path = data_dir / "secrets.json"
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text())
    changed = False
    for name in PRODUCTION_SECRETS:
        if name not in stored:
            stored[name] = secrets.token_urlsafe(48)
            changed = True
    if changed:
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stored, indent=2))
        path.chmod(0o600)
    return stored


_GENERATE_HINT = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
#: Words of the placeholders in ``deploy/env.example`` (and the usual ones): a production secret
#: containing one was copied from an example, and everybody who read the example knows it.
_PLACEHOLDER = re.compile(r"replace[-_ ]?me|change[-_ ]?me", re.IGNORECASE)


def _refuse_placeholder(name: str, value: str, production: bool) -> None:
    if production and _PLACEHOLDER.search(value):
        raise SettingsError(
            f"{name} still holds a placeholder (as in deploy/env.example); {_GENERATE_HINT}"
        )


def _secret(env: Mapping[str, str], name: str, production: bool, data_dir: Path) -> str:
    value = _opt(env, name)
    if value is None:
        if production:
            raise SettingsError(f"{name} is required when ENV=production ({_GENERATE_HINT})")
        value = _dev_secrets(data_dir)[name]
    if len(value.encode()) < MIN_SECRET_BYTES:
        raise SettingsError(f"{name} must be at least {MIN_SECRET_BYTES} bytes long")
    _refuse_placeholder(name, value, production)
    return value


def _redis_url(env: Mapping[str, str]) -> str | None:
    """``REDIS_URL``: one Redis (``redis://``, ``rediss://``) or a Redis Cluster
    (``redis+cluster://host:port,host:port``, ``rediss+cluster://`` with TLS)."""
    url = _opt(env, "REDIS_URL")
    if url is not None and is_cluster_url(url):
        try:
            parse_cluster_url(url)
        except ValueError as exc:
            raise SettingsError(f"REDIS_URL: {exc}") from None
    return url


def _partitions(env: Mapping[str, str]) -> int:
    count = _int(env, "REDIS_CLUSTER_PARTITIONS", 64, minimum=1)
    if count > 16384:
        raise SettingsError(f"REDIS_CLUSTER_PARTITIONS must be <= 16384 (hash slots), got {count}")
    return count


def _jwt_keys(env: Mapping[str, str], primary: str, service_secret: str) -> dict[str, str]:
    """``JWT_SECRET`` is the signing key (kid ``k1`` unless ``JWT_KID``); ``JWT_OLD_SECRETS``
    holds ``kid=secret`` pairs still accepted for verification during a rotation.

    No JWT key may equal ``SERVICE_SECRET``: whoever learns one secret must not get both powers
    (minting user tokens, and signing service requests / decrypting alert-feed secrets).
    """
    if hmac.compare_digest(primary.encode(), service_secret.encode()):
        raise SettingsError("SERVICE_SECRET must differ from JWT_SECRET (use two random secrets)")
    kid = _str(env, "JWT_KID", "k1")
    keys = {kid: primary}
    for item in _list(env, "JWT_OLD_SECRETS", ()):
        old_kid, sep, secret = item.partition("=")
        if not sep or not old_kid or not secret:
            raise SettingsError("JWT_OLD_SECRETS must be a comma-separated list of kid=secret")
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise SettingsError(f"JWT_OLD_SECRETS key {old_kid!r} is shorter than 32 bytes")
        if hmac.compare_digest(secret.encode(), service_secret.encode()):
            raise SettingsError(f"JWT_OLD_SECRETS key {old_kid!r} must differ from SERVICE_SECRET")
        keys[old_kid] = secret
    return keys


def _http_api_key(
    env: Mapping[str, str], secrets_in_use: Mapping[str, str], production: bool
) -> str | None:
    """``HTTP_API_KEY``: optional static key of the Centrifugo-compatible server API; like the
    other secrets at least 32 bytes, and none of them (one leak must not grant several powers)."""
    value = _opt(env, "HTTP_API_KEY")
    if value is None:
        return None
    if len(value.encode()) < MIN_SECRET_BYTES:
        raise SettingsError(f"HTTP_API_KEY must be at least {MIN_SECRET_BYTES} bytes long")
    _refuse_placeholder("HTTP_API_KEY", value, production)
    for name, secret in secrets_in_use.items():
        if hmac.compare_digest(value.encode(), secret.encode()):
            raise SettingsError(f"HTTP_API_KEY must differ from {name}")
    return value


_NAMESPACE_FIELDS: dict[str, type] = {
    "history_size": int,
    "history_ttl": int,
    "recovery": bool,
    "presence": bool,
    "join_leave": bool,
    "client_publish": bool,
}
_NAMESPACE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def _namespaces(env: Mapping[str, str]) -> dict[str, NamespaceOptions]:
    """The built-in namespaces, overridden or extended by ``CHANNEL_NAMESPACES`` (a JSON object:
    ``{"alerts": {"history_size": 5000}, "news": {"history_ttl": 3600, "recovery": false}}``)."""
    namespaces = default_namespaces()
    raw = _str(env, "CHANNEL_NAMESPACES", "")
    if not raw:
        return namespaces
    try:
        overrides = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"CHANNEL_NAMESPACES is not valid JSON: {exc.msg}") from None
    if not isinstance(overrides, dict):
        raise SettingsError("CHANNEL_NAMESPACES must be a JSON object of namespace -> options")
    for name, options in overrides.items():
        if not _NAMESPACE_NAME.match(name):
            raise SettingsError(f"CHANNEL_NAMESPACES: bad namespace name {name!r}")
        if not isinstance(options, dict):
            raise SettingsError(f"CHANNEL_NAMESPACES: options of {name!r} must be an object")
        values: dict[str, Any] = {}
        for key, value in options.items():
            kind = _NAMESPACE_FIELDS.get(key)
            if kind is None:
                raise SettingsError(f"CHANNEL_NAMESPACES: unknown option {key!r} in {name!r}")
            negative = isinstance(value, int) and value < 0
            if type(value) is not kind or negative:
                raise SettingsError(
                    f"CHANNEL_NAMESPACES: {name}.{key} must be a "
                    + ("non-negative integer" if kind is int else "boolean")
                )
            values[key] = value
        base = namespaces.get(name, NamespaceOptions())
        namespaces[name] = replace(base, **values)
    return namespaces


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from ``env`` (default ``os.environ``).

    Raises :class:`SettingsError` with the variable's name when a value is malformed, or when
    a secret is missing in production.
    """
    env = os.environ if env is None else env
    mode = _str(env, "ENV", "development").lower()
    if mode not in {"development", "production"}:
        raise SettingsError(f"ENV must be development or production, got {mode!r}")
    production = mode == "production"
    data_dir = Path(_str(env, "DATA_DIR", ".data")).expanduser().resolve()
    port = _int(env, "PORT", 8080, minimum=0)
    public_base_url = _str(env, "PUBLIC_BASE_URL", f"http://127.0.0.1:{port}").rstrip("/")
    if production and not _opt(env, "PUBLIC_BASE_URL"):
        raise SettingsError("PUBLIC_BASE_URL is required when ENV=production (magic links use it)")
    default_origins = () if production else (public_base_url, f"http://localhost:{port}")
    jwt_secret = _secret(env, "JWT_SECRET", production, data_dir)
    service_secret = _secret(env, "SERVICE_SECRET", production, data_dir)
    email_backend = _str(env, "EMAIL_BACKEND", "smtp" if production else "console")
    if email_backend not in {"console", "smtp"}:
        raise SettingsError(f"EMAIL_BACKEND must be console or smtp, got {email_backend!r}")
    if production and email_backend == "console":
        raise SettingsError("EMAIL_BACKEND=console is not allowed when ENV=production")
    jwt_algorithm = _str(env, "JWT_ALGORITHM", "HS256")
    if jwt_algorithm not in {"HS256", "RS256", "EdDSA"}:
        raise SettingsError(f"JWT_ALGORITHM must be HS256, RS256 or EdDSA, got {jwt_algorithm!r}")

    handlers = HandlersConfig(
        production=production,
        http=HttpConfig(
            allowed_origins=_list(env, "ALLOWED_ORIGINS", default_origins),
            public_base_url=public_base_url,
            hsts=_bool(env, "HSTS", production),
            trusted_proxies=_list(env, "TRUSTED_PROXIES", ()),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", 1024 * 1024, minimum=1024),
            slow_request_seconds=_float(env, "SLOW_REQUEST_SECONDS", 1.0),
            ready_timeout=_float(env, "READY_TIMEOUT", 2.0, minimum=0.1),
        ),
        auth=AuthConfig(
            jwt_algorithm=jwt_algorithm,
            jwt_keys=_jwt_keys(env, jwt_secret, service_secret),
            jwt_private_key_file=_opt(env, "JWT_PRIVATE_KEY_FILE"),
            jwt_public_keys_dir=_opt(env, "JWT_PUBLIC_KEYS_DIR"),
            jwt_issuer=_str(env, "JWT_ISSUER", "arena-realtime"),
            jwt_audience=_str(env, "JWT_AUDIENCE", "arena-realtime"),
            access_ttl=_int(env, "ACCESS_TOKEN_TTL", 15 * 60, minimum=30),
            refresh_ttl=_int(env, "REFRESH_TOKEN_TTL", 7 * 24 * 3600, minimum=60),
            magic_link_ttl=_int(env, "MAGIC_LINK_TTL", 15 * 60, minimum=60),
            leeway=_int(env, "JWT_LEEWAY", 10),
            service_secret=service_secret,
            signature_tolerance=_int(env, "SIGNATURE_TOLERANCE_SECONDS", 120, minimum=1),
            login_rate_per_email=_int(env, "LOGIN_RATE_PER_EMAIL", 5, minimum=1),
            login_rate_per_email_global=_int(env, "LOGIN_RATE_PER_EMAIL_GLOBAL", 50, minimum=1),
            login_rate_per_ip=_int(env, "LOGIN_RATE_PER_IP", 20, minimum=1),
            login_rate_window=_int(env, "LOGIN_RATE_WINDOW", 900, minimum=1),
            http_api_key=_http_api_key(
                env, {"JWT_SECRET": jwt_secret, "SERVICE_SECRET": service_secret}, production
            ),
        ),
        email=EmailConfig(
            backend=email_backend,
            smtp_host=_str(env, "SMTP_HOST", "localhost"),
            smtp_port=_int(env, "SMTP_PORT", 587, minimum=1),
            smtp_username=_opt(env, "SMTP_USERNAME"),
            smtp_password=_opt(env, "SMTP_PASSWORD"),
            smtp_starttls=_bool(env, "SMTP_STARTTLS", True),
            smtp_timeout=_float(env, "SMTP_TIMEOUT", 30.0, minimum=0.1),
            sender=_str(env, "EMAIL_FROM", "Arena Realtime <no-reply@localhost>"),
        ),
        ws=WsConfig(
            auth_timeout=_float(env, "WS_AUTH_TIMEOUT", 10.0, minimum=0.1),
            heartbeat=_float(env, "WS_HEARTBEAT", 25.0, minimum=1.0),
            max_frame_bytes=_int(env, "WS_MAX_FRAME_BYTES", 64 * 1024, minimum=1024),
            max_subscriptions=_int(env, "WS_MAX_SUBSCRIPTIONS", 256, minimum=1),
            max_queue_messages=_int(env, "WS_MAX_QUEUE_MESSAGES", 10_000, minimum=10),
            max_queue_bytes=_int(env, "WS_MAX_QUEUE_BYTES", 4 * 1024 * 1024, minimum=64 * 1024),
            command_rate=_float(env, "WS_COMMAND_RATE", 50.0, minimum=1.0),
            command_burst=_int(env, "WS_COMMAND_BURST", 100, minimum=1),
            max_connections_per_user=_int(env, "WS_MAX_CONNECTIONS_PER_USER", 20, minimum=1),
            max_unauthenticated_per_ip=_int(env, "WS_MAX_UNAUTHENTICATED_PER_IP", 50, minimum=1),
            user_command_rate=_float(env, "WS_USER_COMMAND_RATE", 100.0, minimum=1.0),
            user_command_burst=_int(env, "WS_USER_COMMAND_BURST", 200, minimum=1),
            recheck_seconds=_float(env, "WS_RECHECK_SECONDS", 300.0, minimum=1.0),
        ),
        webhook=WebhookConfig(
            max_body_bytes=_int(env, "WEBHOOK_MAX_BODY_BYTES", 64 * 1024, minimum=1024),
            dedup_window=_int(env, "WEBHOOK_DEDUP_WINDOW", 60),
            timestamp_tolerance=_int(env, "WEBHOOK_TIMESTAMP_TOLERANCE", 300, minimum=1),
            rotation_grace=_int(env, "WEBHOOK_ROTATION_GRACE", 24 * 3600),
            rate_per_ip=_int(env, "WEBHOOK_RATE_PER_IP", 600, minimum=1),
        ),
        analysis=AnalysisConfig(
            anthropic_api_key=_opt(env, "ANTHROPIC_API_KEY"),
            anthropic_base_url=_opt(env, "ANTHROPIC_BASE_URL"),
            model=_str(env, "ANTHROPIC_MODEL", "claude-sonnet-4-5"),
            max_tokens=_int(env, "ANTHROPIC_MAX_TOKENS", 2048, minimum=1),
            timeout=_float(env, "ANTHROPIC_TIMEOUT", 120.0, minimum=1.0),
            concurrency=_int(env, "ANALYSIS_CONCURRENCY", 4, minimum=1),
            queue_size=_int(env, "ANALYSIS_QUEUE_SIZE", 16),
            per_user=_int(env, "ANALYSIS_PER_USER", 2, minimum=1),
            flush_interval=_float(env, "ANALYSIS_FLUSH_MS", 40.0, minimum=1.0) / 1000,
            offline_tokens_per_second=_float(env, "ANALYSIS_OFFLINE_TPS", 60.0, minimum=1.0),
        ),
    )
    try:
        TokenService(handlers.auth)  # fail at startup, naming the variable, not at first login
    except KeyConfigError as exc:
        raise SettingsError(str(exc)) from None
    try:
        parse_networks(handlers.http.trusted_proxies)
    except ValueError as exc:
        raise SettingsError(f"TRUSTED_PROXIES: {exc}") from None
    return Settings(
        env=mode,
        host=_str(env, "HOST", "127.0.0.1"),
        port=port,
        database_url=_opt(env, "DATABASE_URL"),
        redis_url=_redis_url(env),
        redis_prefix=_str(env, "REDIS_PREFIX", "arena"),
        redis_cluster_partitions=_partitions(env),
        redis_connect_timeout=_float(env, "REDIS_CONNECT_TIMEOUT", 10.0, minimum=0.1),
        redis_command_timeout=_float(env, "REDIS_COMMAND_TIMEOUT", 10.0, minimum=0.1),
        redis_subscribe_timeout=_float(env, "REDIS_SUBSCRIBE_TIMEOUT", 10.0, minimum=0.1),
        redis_keepalive_interval=_float(env, "REDIS_KEEPALIVE_INTERVAL", 10.0, minimum=0.1),
        redis_keepalive_timeout=_float(env, "REDIS_KEEPALIVE_TIMEOUT", 10.0, minimum=0.1),
        rate_limit_sync_seconds=_float(env, "RATE_LIMIT_SYNC_SECONDS", 0.1, minimum=-math.inf),
        data_dir=data_dir,
        log_level=_str(env, "LOG_LEVEL", "INFO").upper(),
        db_pool_min=_int(env, "DB_POOL_MIN", 1),
        db_pool_max=_int(env, "DB_POOL_MAX", 10, minimum=1),
        db_connect_timeout=_float(env, "DB_CONNECT_TIMEOUT", 10.0, minimum=0.1),
        db_command_timeout=_float(env, "DB_COMMAND_TIMEOUT", 30.0, minimum=0.1),
        shutdown_timeout=_float(env, "SHUTDOWN_TIMEOUT", 10.0),
        listen_backlog=_int(env, "LISTEN_BACKLOG", 2048, minimum=1),
        uvloop=_bool(env, "UVLOOP", True),
        workers=_int(env, "WORKERS", 1, minimum=1),
        prometheus_multiproc_dir=_path(env, "PROMETHEUS_MULTIPROC_DIR"),
        migrate_on_start=_bool(env, "MIGRATE_ON_START", True),
        presence_ttl=_float(env, "PRESENCE_TTL", 30.0, minimum=0.3),
        presence_unique_users=_bool(env, "PRESENCE_UNIQUE_USERS", True),
        namespaces=_namespaces(env),
        handlers=handlers,
    )
