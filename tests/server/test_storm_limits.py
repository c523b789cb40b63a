"""What a server needs to take thousands of clients reconnecting at once: a deep listen queue
(``LISTEN_BACKLOG``) and an open-files limit raised to the hard limit."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from server.settings import SettingsError, load_settings


def test_listen_backlog_defaults_to_2048_and_is_configurable(tmp_path: Path) -> None:
    assert load_settings({"DATA_DIR": str(tmp_path)}).listen_backlog == 2048
    settings = load_settings({"DATA_DIR": str(tmp_path), "LISTEN_BACKLOG": "4096"})
    assert settings.listen_backlog == 4096


@pytest.mark.parametrize("value", ["0", "many"])
def test_a_bad_listen_backlog_is_refused_by_name(tmp_path: Path, value: str) -> None:
    with pytest.raises(SettingsError, match="LISTEN_BACKLOG"):
        load_settings({"DATA_DIR": str(tmp_path), "LISTEN_BACKLOG": value})


def test_serve_raises_the_open_files_soft_limit_to_the_hard_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no finite hard limit to raise to")
    low = min(256, hard)

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))

    probe = (
        "import resource; from server.cli import raise_open_files_limit; "
        "print(raise_open_files_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        preexec_fn=lower,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    assert [int(n) for n in out] == [hard, hard, hard]
