"""Settings come from environment variables; bad or missing values stop startup with a clear
message that names the variable."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from server import cli
from server.lifecycle import make_broker
from server.settings import SettingsError, load_settings

SECRET = "s" * 48
OTHER_SECRET = "o" * 48


def production_env(tmp_path: Path, **changes: str) -> dict[str, str]:
    """A complete production environment; ``changes`` override (``""`` means unset)."""
    env = {
        "ENV": "production",
        "DATA_DIR": str(tmp_path),
        "JWT_SECRET": SECRET,
        "SERVICE_SECRET": OTHER_SECRET,
        "PUBLIC_BASE_URL": "https://arena.example.com",
        "DATABASE_URL": "postgresql://arena@db/arena",
    }
    env.update(changes)
    return {name: value for name, value in env.items() if value}


def test_development_defaults(tmp_path: Path) -> None:
    settings = load_settings({"DATA_DIR": str(tmp_path)})
    assert settings.env == "development"
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.database_url is None  # embedded PostgreSQL
    assert settings.redis_url is None  # in-process broker
    assert settings.data_dir == tmp_path.resolve()
    assert settings.handlers.http.hsts is False
    assert settings.handlers.http.public_base_url == "http://127.0.0.1:8080"
    assert "http://localhost:8080" in settings.handlers.http.allowed_origins


def test_development_secrets_are_generated_once_and_kept(tmp_path: Path) -> None:
    first = load_settings({"DATA_DIR": str(tmp_path)})
    second = load_settings({"DATA_DIR": str(tmp_path)})
    assert first.handlers.auth.jwt_keys == second.handlers.auth.jwt_keys
    assert first.handlers.auth.service_secret == second.handlers.auth.service_secret
    path = tmp_path / "secrets.json"
    assert set(json.loads(path.read_text())) == {"JWT_SECRET", "SERVICE_SECRET"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    other = load_settings({"DATA_DIR": str(tmp_path / "elsewhere")})
    assert other.handlers.auth.jwt_keys != first.handlers.auth.jwt_keys


def test_complete_production_environment(tmp_path: Path) -> None:
    settings = load_settings(production_env(tmp_path, ALLOWED_ORIGINS="https://a.example, "))
    assert settings.production
    assert settings.handlers.production
    assert settings.handlers.http.hsts is True
    assert settings.handlers.http.allowed_origins == ("https://a.example",)
    assert settings.handlers.auth.jwt_keys == {"k1": SECRET}
    assert settings.handlers.email.backend == "smtp"
    assert not (tmp_path / "secrets.json").exists(), "production never writes secrets"


def test_production_origins_default_to_none(tmp_path: Path) -> None:
    assert load_settings(production_env(tmp_path)).handlers.http.allowed_origins == ()


@pytest.mark.parametrize("name", ["JWT_SECRET", "SERVICE_SECRET", "PUBLIC_BASE_URL"])
def test_production_requires(tmp_path: Path, name: str) -> None:
    with pytest.raises(SettingsError, match=f"{name} is required when ENV=production"):
        load_settings(production_env(tmp_path, **{name: ""}))
    assert not (tmp_path / "secrets.json").exists()


@pytest.mark.parametrize("name", ["JWT_SECRET", "SERVICE_SECRET"])
@pytest.mark.parametrize("env", ["development", "production"])
def test_short_secrets_are_rejected(tmp_path: Path, name: str, env: str) -> None:
    with pytest.raises(SettingsError, match=f"{name} must be at least 32 bytes"):
        load_settings(production_env(tmp_path, ENV=env, **{name: "x" * 31}))


@pytest.mark.parametrize("name", ["JWT_SECRET", "SERVICE_SECRET", "HTTP_API_KEY"])
def test_production_refuses_the_placeholders_of_the_example_env_file(
    tmp_path: Path, name: str
) -> None:
    # deploy/env.example ships placeholders long enough to pass the length check; a deployment
    # that copied the file without replacing them must not start with publicly known secrets.
    example = (Path(__file__).resolve().parents[2] / "deploy" / "env.example").read_text()
    secrets = ("JWT_SECRET=", "SERVICE_SECRET=")
    placeholders = dict(
        line.split("=", 1) for line in example.splitlines() if line.startswith(secrets)
    )
    value = placeholders.get(name, "Replace_Me-" + "x" * 40)
    with pytest.raises(SettingsError, match=f"{name} still holds a placeholder"):
        load_settings(production_env(tmp_path, **{name: value}))
    development = load_settings(production_env(tmp_path, ENV="development", **{name: value}))
    assert not development.production, "development accepts them (local docker-compose runs)"


@pytest.mark.parametrize("env", ["development", "production"])
def test_the_two_secrets_must_differ(tmp_path: Path, env: str) -> None:
    # One leaked secret must not give both powers: minting user tokens and signing service
    # requests (and decrypting alert-feed secrets).
    with pytest.raises(SettingsError, match="SERVICE_SECRET must differ from JWT_SECRET"):
        load_settings(production_env(tmp_path, ENV=env, SERVICE_SECRET=SECRET))


@pytest.mark.parametrize("other", ["JWT_SECRET", "SERVICE_SECRET"])
def test_the_http_api_key_must_differ_from_the_secrets(tmp_path: Path, other: str) -> None:
    same = SECRET if other == "JWT_SECRET" else OTHER_SECRET
    with pytest.raises(SettingsError, match=f"HTTP_API_KEY must differ from {other}"):
        load_settings(production_env(tmp_path, HTTP_API_KEY=same))


def test_an_old_jwt_key_must_not_be_the_service_secret(tmp_path: Path) -> None:
    with pytest.raises(
        SettingsError, match="JWT_OLD_SECRETS key 'k0' must differ from SERVICE_SECRET"
    ):
        load_settings(production_env(tmp_path, JWT_OLD_SECRETS=f"k0={OTHER_SECRET}"))


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PORT", "80a", "PORT must be an integer, got '80a'"),
        ("PORT", "-1", "PORT must be >= 0, got -1"),
        ("DB_POOL_MAX", "0", "DB_POOL_MAX must be >= 1"),
        ("MAX_BODY_BYTES", "1e6", "MAX_BODY_BYTES must be an integer"),
        ("SHUTDOWN_TIMEOUT", "soon", "SHUTDOWN_TIMEOUT must be a number"),
        ("HSTS", "maybe", "HSTS must be true or false"),
        ("ENV", "staging", "ENV must be development or production"),
        ("JWT_ALGORITHM", "none", "JWT_ALGORITHM must be HS256, RS256 or EdDSA"),
        ("EMAIL_BACKEND", "console", "EMAIL_BACKEND=console is not allowed"),
        ("JWT_OLD_SECRETS", "k0", "JWT_OLD_SECRETS must be a comma-separated list of kid=secret"),
        ("JWT_OLD_SECRETS", "k0=short", "JWT_OLD_SECRETS key 'k0' is shorter than 32 bytes"),
        ("REDIS_URL", "redis+cluster://a:s3cret@h1", "REDIS_URL: cluster node 'h1' must be"),
        ("REDIS_URL", "redis+cluster://h1:7000/2", "REDIS_URL: Redis Cluster has only database 0"),
        ("REDIS_CLUSTER_PARTITIONS", "0", "REDIS_CLUSTER_PARTITIONS must be >= 1"),
        ("REDIS_CLUSTER_PARTITIONS", "20000", "REDIS_CLUSTER_PARTITIONS must be <= 16384"),
    ],
)
def test_malformed_values_name_the_variable(
    tmp_path: Path, name: str, value: str, message: str
) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        load_settings(production_env(tmp_path, **{name: value}))


def test_values_are_parsed(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "DATA_DIR": str(tmp_path),
            "HOST": "::1",
            "PORT": " 9000 ",
            "LOG_LEVEL": "debug",
            "HSTS": "yes",
            "REDIS_URL": "redis://cache:6379/0",
            "JWT_SECRET": SECRET,
            "JWT_KID": "k2",
            "JWT_OLD_SECRETS": f"k1={OTHER_SECRET}",
            "ANTHROPIC_API_KEY": "sk-test",
            "ANTHROPIC_BASE_URL": "http://127.0.0.1:9999",
            "SHUTDOWN_TIMEOUT": "2.5",
        }
    )
    assert (settings.host, settings.port, settings.log_level) == ("::1", 9000, "DEBUG")
    assert settings.redis_url == "redis://cache:6379/0"
    assert settings.handlers.http.hsts is True
    assert settings.handlers.http.public_base_url == "http://127.0.0.1:9000"
    assert settings.handlers.auth.jwt_keys == {"k2": SECRET, "k1": OTHER_SECRET}
    assert settings.handlers.analysis.anthropic_api_key == "sk-test"
    assert settings.handlers.analysis.anthropic_base_url == "http://127.0.0.1:9999"
    assert settings.shutdown_timeout == 2.5
    assert not settings.redis_cluster


def test_a_cluster_url_selects_redis_cluster(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "DATA_DIR": str(tmp_path),
            "REDIS_URL": "rediss+cluster://app:pw@r1:7000,r2:7001",
            "REDIS_CLUSTER_PARTITIONS": "128",
        }
    )
    assert settings.redis_cluster
    assert settings.redis_cluster_partitions == 128


def test_cli_reports_configuration_errors_without_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in production_env(tmp_path, JWT_SECRET="").items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("JWT_SECRET", raising=False)
    assert cli.main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert "configuration error: JWT_SECRET is required when ENV=production" in err
    assert "Traceback" not in err


def test_channel_namespaces_override_and_extend_the_defaults(tmp_path: Path) -> None:
    env = {
        "DATA_DIR": str(tmp_path),
        "CHANNEL_NAMESPACES": (
            '{"alerts": {"history_size": 5000}, "news": {"history_ttl": 60, "recovery": false}}'
        ),
    }
    namespaces = load_settings(env).namespaces
    assert namespaces["alerts"].history_size == 5000
    assert namespaces["alerts"].history_ttl == 24 * 3600  # untouched options keep defaults
    assert namespaces["news"].history_ttl == 60
    assert namespaces["news"].recovery is False
    assert namespaces["user"].history_size == 200


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("{", "not valid JSON"),
        ("[1]", "JSON object"),
        ('{"Bad Name": {}}', "bad namespace name"),
        ('{"news": {"history_size": -1}}', "non-negative integer"),
        ('{"news": {"history_size": true}}', "non-negative integer"),
        ('{"news": {"recovery": "no"}}', "boolean"),
        ('{"news": {"colour": 1}}', "unknown option"),
    ],
)
def test_bad_channel_namespaces_name_the_variable(tmp_path: Path, raw: str, fragment: str) -> None:
    with pytest.raises(SettingsError, match="CHANNEL_NAMESPACES") as info:
        load_settings({"DATA_DIR": str(tmp_path), "CHANNEL_NAMESPACES": raw})
    assert fragment in str(info.value)


def test_redis_keepalive_settings_reach_the_broker(tmp_path: Path) -> None:
    env = {"DATA_DIR": str(tmp_path), "REDIS_URL": "redis://127.0.0.1:6379/0"}
    default = make_broker(load_settings(env)).pubsub.liveness  # not started: no connection
    assert (default.interval, default.timeout) == (10.0, 10.0)
    env |= {"REDIS_KEEPALIVE_INTERVAL": "2.5", "REDIS_KEEPALIVE_TIMEOUT": "7"}
    liveness = make_broker(load_settings(env)).pubsub.liveness
    assert (liveness.interval, liveness.timeout) == (2.5, 7.0)
    with pytest.raises(SettingsError, match=r"REDIS_KEEPALIVE_TIMEOUT must be >= 0\.1"):
        load_settings(env | {"REDIS_KEEPALIVE_TIMEOUT": "0"})


def test_connection_timeouts_default_to_values_that_survive_a_busy_host(tmp_path: Path) -> None:
    settings = load_settings({"DATA_DIR": str(tmp_path), "REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert settings.redis_connect_timeout == 10.0, "not sub-second: a loaded host connects slowly"
    assert settings.redis_command_timeout == 10.0
    assert settings.redis_subscribe_timeout == 10.0
    assert settings.db_connect_timeout == 10.0
    assert settings.db_command_timeout == 30.0
    assert settings.handlers.email.smtp_timeout == 30.0
    assert settings.handlers.http.ready_timeout == 2.0
    pool = make_broker(settings)._pool  # not started: no connection is made
    assert pool.connection_kwargs["socket_connect_timeout"] == 10.0
    assert pool.connection_kwargs["socket_timeout"] == 10.0


def test_connection_timeouts_are_read_from_the_environment(tmp_path: Path) -> None:
    env = {
        "DATA_DIR": str(tmp_path),
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "REDIS_CONNECT_TIMEOUT": "7",
        "REDIS_COMMAND_TIMEOUT": "8",
        "REDIS_SUBSCRIBE_TIMEOUT": "9",
        "DB_CONNECT_TIMEOUT": "11",
        "DB_COMMAND_TIMEOUT": "12",
        "SMTP_TIMEOUT": "13",
        "READY_TIMEOUT": "1.5",
    }
    settings = load_settings(env)
    assert (settings.db_connect_timeout, settings.db_command_timeout) == (11.0, 12.0)
    assert settings.handlers.email.smtp_timeout == 13.0
    assert settings.handlers.http.ready_timeout == 1.5
    broker = make_broker(settings)
    assert broker._pool.connection_kwargs["socket_connect_timeout"] == 7.0
    assert broker._pool.connection_kwargs["socket_timeout"] == 8.0
    assert broker.pubsub._subscribe_timeout == 9.0
    with pytest.raises(SettingsError, match="REDIS_CONNECT_TIMEOUT must be a number"):
        load_settings(env | {"REDIS_CONNECT_TIMEOUT": "soon"})
