"""Configuration the handlers need, as plain frozen dataclasses.

``server.settings`` fills these from the environment; handlers read them from
``request.app[keys.config]``. Defaults here are the documented defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class HttpConfig:
    allowed_origins: tuple[str, ...] = ("http://127.0.0.1:8080", "http://localhost:8080")
    public_base_url: str = "http://127.0.0.1:8080"
    hsts: bool = False
    trusted_proxies: tuple[str, ...] = ()
    max_body_bytes: int = 1024 * 1024
    #: requests taking at least this long log a "slow request" warning (0: never)
    slow_request_seconds: float = 1.0
    #: seconds each /ready check (database, broker) may take
    ready_timeout: float = 2.0


@dataclass(frozen=True, slots=True)
class AuthConfig:
    jwt_algorithm: str = "HS256"
    #: kid -> HMAC secret; the first entry signs, all verify.
    jwt_keys: dict[str, str] = field(default_factory=dict)
    jwt_private_key_file: str | None = None
    jwt_public_keys_dir: str | None = None
    jwt_issuer: str = "arena-realtime"
    jwt_audience: str = "arena-realtime"
    access_ttl: int = 15 * 60
    refresh_ttl: int = 7 * 24 * 3600
    magic_link_ttl: int = 15 * 60
    leeway: int = 10
    service_secret: str = ""
    #: static key accepted by the Centrifugo-compatible server API besides service tokens
    http_api_key: str | None = None
    #: seconds a signed service request's ``x-timestamp`` may be off the server clock
    signature_tolerance: int = 120
    #: per (e-mail, client IP) pair
    login_rate_per_email: int = 5
    #: per e-mail across every client IP
    login_rate_per_email_global: int = 50
    login_rate_per_ip: int = 20
    login_rate_window: int = 900


@dataclass(frozen=True, slots=True)
class EmailConfig:
    backend: str = "console"
    smtp_host: str = "localhost"
    smtp_port: int = 587
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = True
    smtp_timeout: float = 30.0
    sender: str = "Arena Realtime <no-reply@localhost>"


@dataclass(frozen=True, slots=True)
class WsConfig:
    auth_timeout: float = 10.0
    heartbeat: float = 25.0
    max_frame_bytes: int = 64 * 1024
    max_subscriptions: int = 256
    max_queue_messages: int = 10_000
    max_queue_bytes: int = 4 * 1024 * 1024
    command_rate: float = 50.0
    command_burst: int = 100
    max_connections_per_user: int = 20
    #: sockets per client address that have not sent ``authenticate`` yet (per node)
    max_unauthenticated_per_ip: int = 50
    #: per user across every instance (the shared rate limiter), on top of the per-connection bucket
    user_command_rate: float = 100.0
    user_command_burst: int = 200
    #: seconds between re-checks of every live subscription against the channel rules
    recheck_seconds: float = 300.0


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    max_body_bytes: int = 64 * 1024
    dedup_window: int = 60
    timestamp_tolerance: int = 300
    rotation_grace: int = 24 * 3600
    rate_per_ip: int = 600


@dataclass(frozen=True, slots=True)
class AnalysisConfig:
    anthropic_api_key: str | None = None
    anthropic_base_url: str | None = None
    model: str = "claude-sonnet-4-5"
    max_tokens: int = 2048
    timeout: float = 120.0
    concurrency: int = 4
    queue_size: int = 16
    per_user: int = 2
    flush_interval: float = 0.04
    offline_tokens_per_second: float = 60.0


@dataclass(frozen=True, slots=True)
class HandlersConfig:
    production: bool = False
    http: HttpConfig = field(default_factory=HttpConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    email: EmailConfig = field(default_factory=EmailConfig)
    ws: WsConfig = field(default_factory=WsConfig)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
