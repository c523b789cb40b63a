"""The container files agree with the code: docker-compose.yml, the Dockerfile, nginx, the
settings module and docs/configuration.md name the same variables and wire the same services.

Docker itself is not needed: the files are parsed, and the compose environment is fed through
the real settings loader.
"""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from server import settings as settings_module
from server.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


def settings_variables() -> set[str]:
    """Every environment variable the settings module reads (``_int(env, "PORT", ...)``)."""
    source = inspect.getsource(settings_module)
    return set(re.findall(r'\(\s*env,\s*"([A-Z][A-Z0-9_]*)"', source))


def documented_variables() -> set[str]:
    text = (ROOT / "docs" / "configuration.md").read_text()
    return set(re.findall(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|", text, flags=re.MULTILINE))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def app_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services built from this repository (the app replicas)."""
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


def interpolate(value: str, given: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``, with ``given`` as the
    shell environment. A required variable that is not given is an error, as in compose."""

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        if given.get(name):
            return given[name]
        if op == ":?":
            raise LookupError(f"{name}: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\{([A-Z0-9_]+)(?:(:-|:\?)([^}]*))?\}", replace, value)


def test_settings_and_docs_name_the_same_variables() -> None:
    read = settings_variables()
    documented = documented_variables()
    assert len(read) > 40  # the regex really finds the settings
    assert read - documented == set(), "read by server/settings.py but not documented"
    assert documented - read == set(), "documented but never read by server/settings.py"


@pytest.mark.parametrize(
    "name",
    [
        "HOST",
        "PORT",
        "DATABASE_URL",
        "REDIS_URL",
        "DATA_DIR",
        "JWT_SECRET",
        "SERVICE_SECRET",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        "ALLOWED_ORIGINS",
        "LOG_LEVEL",
        "ENV",
    ],
)
def test_the_issue_variables_exist(name: str) -> None:
    assert name in settings_variables()


def test_compose_has_the_multi_node_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    apps = app_services(compose)
    replicas = sum(svc.get("deploy", {}).get("replicas", 1) for svc in apps.values())
    assert replicas == 2, apps.keys()
    lb = services["lb"]
    assert lb["image"].startswith("nginx:")
    assert "8080:8080" in lb["ports"]
    assert set(lb["depends_on"]) == set(apps)
    for app in apps.values():
        assert "ports" not in app, "replicas are reached through the load balancer only"
        assert app["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert app["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ["postgres", "redis", "lb", *app_services(compose)]:
        test = services[name]["healthcheck"]["test"]
        assert test[0] in {"CMD", "CMD-SHELL"}, name
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "ping" in services["redis"]["healthcheck"]["test"]
    for app in app_services(compose).values():
        assert "/ready" in " ".join(app["healthcheck"]["test"])
    for dependent in app_services(compose):
        assert services["lb"]["depends_on"][dependent]["condition"] == "service_healthy"


def test_compose_environment_uses_only_real_settings(compose: dict[str, Any]) -> None:
    known = settings_variables()
    for name, app in app_services(compose).items():
        unknown = set(app["environment"]) - known
        assert unknown == set(), f"{name} sets variables server/settings.py never reads"


def test_compose_environment_loads_and_points_at_the_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    given = {"JWT_SECRET": "j" * 48, "SERVICE_SECRET": "s" * 48}
    for app in app_services(compose).values():
        env = {key: interpolate(str(value), given) for key, value in app["environment"].items()}
        loaded = load_settings(env)
        assert loaded.production
        assert loaded.host == "0.0.0.0"  # noqa: S104 - inside the container
        assert loaded.port == 8080
        assert loaded.database_url is not None
        assert urlsplit(loaded.database_url).hostname in services
        assert services[urlsplit(loaded.database_url).hostname]["image"].startswith("postgres")
        assert loaded.redis_url is not None
        assert urlsplit(loaded.redis_url).hostname == "redis"
        assert loaded.handlers.http.trusted_proxies == (
            services["lb"]["networks"]["arena"]["ipv4_address"],
        )
        # production refuses to start without the secrets, and so does compose
        with pytest.raises(LookupError, match="JWT_SECRET"):
            interpolate(str(app["environment"]["JWT_SECRET"]), {})


def test_nginx_balances_both_replicas_and_passes_websockets(compose: dict[str, Any]) -> None:
    mounts = compose["services"]["lb"]["volumes"]
    source = next(m.split(":")[0] for m in mounts if m.endswith("/etc/nginx/nginx.conf:ro"))
    conf = (ROOT / source).read_text()
    upstream = re.search(r"upstream arena \{(.*?)\}", conf, flags=re.DOTALL)
    assert upstream is not None
    servers = set(re.findall(r"server\s+([\w.-]+):8080", upstream.group(1)))
    assert servers == set(app_services(compose))
    assert "ip_hash" not in conf, "no sticky sessions: recovery works across nodes"
    assert "proxy_http_version 1.1;" in conf
    assert "proxy_set_header Upgrade $http_upgrade;" in conf
    assert "proxy_set_header Connection $connection_upgrade;" in conf
    assert "proxy_set_header X-Request-ID" in conf
    assert conf.count("{") == conf.count("}")


def dockerfile() -> list[str]:
    """Dockerfile instructions, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def test_dockerfile_is_multi_stage_slim_non_root_with_healthcheck() -> None:
    lines = dockerfile()
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) >= 2
    assert all("-slim" in stage for stage in stages)
    final = lines[lines.index(stages[-1]) :]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users, "the runtime stage sets a user"
    assert users[-1] not in {"root", "0"}
    assert any(line.startswith("COPY --from=") for line in final)
    healthcheck = next(line for line in final if line.startswith("HEALTHCHECK "))
    assert "/health" in healthcheck
    assert any(line == "EXPOSE 8080" for line in final)
    assert any("HOST=0.0.0.0" in line for line in final if line.startswith("ENV "))
    assert any(line.startswith("ENTRYPOINT") and "arena-realtime" in line for line in final)
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", ".data", ".env", "tests"):
        assert entry in ignored


def test_console_script_and_layout() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["arena-realtime"] == "server.cli:main"
    assert project["project"]["requires-python"] == ">=3.11"
    for folder in ("server", "handlers", "pubsub", "storage", "tests", "docs"):
        assert (ROOT / folder).is_dir(), folder
    for path in ("Dockerfile", "docker-compose.yml", "README.md", ".ci/run", "dev.py"):
        assert (ROOT / path).is_file(), path
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "python3 dev.py serve" in quick_start
    assert "python3 dev.py test" in quick_start


def test_nginx_never_logs_secrets_from_urls() -> None:
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    log_format = conf.split("log_format", 1)[1].split(";", 1)[0]
    assert "$request_uri" not in log_format
    assert "$request" not in log_format.replace("$request_method", "").replace("$request_time", "")
    assert "$args" not in log_format
    assert "$uri" not in log_format, "raw paths carry webhook secrets; log the route"
    assert '~^/webhooks/tv/  "/webhooks/tv/{secret}"' in conf
    assert re.search(r"error_log \S+ (crit|alert|emerg);", conf)


def test_compose_cluster_profile_runs_a_redis_cluster_for_the_replicas(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    nodes = {name: svc for name, svc in services.items() if name.startswith("redis-node-")}
    assert len(nodes) == 6, "3 masters + 3 replicas"
    for name, node in nodes.items():
        assert node["profiles"] == ["cluster"]
        assert node["image"].startswith("redis:7"), "sharded pub/sub needs Redis 7"
        assert "--cluster-enabled yes" in node["command"]
        assert f"--cluster-announce-hostname {name}" in node["command"]
        assert "ping" in node["healthcheck"]["test"]
    init = services["redis-cluster-init"]
    assert init["profiles"] == ["cluster"]
    script = " ".join(init["command"])
    assert "--cluster create" in script
    assert "--cluster-replicas 1" in script
    assert "for n in 1 2 3 4 5 6" in script
    assert set(init["depends_on"]) == set(nodes)
    # the documented REDIS_URL of the profile loads and names cluster nodes as seeds
    header = (ROOT / "docker-compose.yml").read_text().split("\nname:", 1)[0]
    url = re.search(r"REDIS_URL=(redis\+cluster://\S+)", header)
    assert url is not None
    given = {"JWT_SECRET": "j" * 48, "SERVICE_SECRET": "s" * 48, "REDIS_URL": url.group(1)}
    for app in app_services(compose).values():
        env = {key: interpolate(str(value), given) for key, value in app["environment"].items()}
        loaded = load_settings(env)
        assert loaded.redis_cluster
        seeds = url.group(1).split("://", 1)[1].split(",")
        assert {seed.split(":")[0] for seed in seeds} <= set(nodes)
        waits = app["depends_on"]["redis-cluster-init"]
        assert waits == {"condition": "service_completed_successfully", "required": False}
