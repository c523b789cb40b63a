#!/usr/bin/env python3
"""Two commands for a fresh clone (only Python 3.11+ and pip needed).

    python3 dev.py serve   # install into .venv and run the service on http://127.0.0.1:8080
    python3 dev.py test    # install test dependencies into .venv and run the whole suite

Both create ``.venv`` on first use and reinstall only when ``pyproject.toml`` changes.
Extra arguments after ``test`` go to pytest.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("ARENA_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"


def ensure_venv(extras: str) -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be run by an older python3
        sys.exit("Python 3.11 or newer is required")
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    stamp = VENV / f".installed-{extras or 'base'}"
    if stamp.exists() and stamp.read_text() == digest:
        return
    print("installing dependencies (first run takes a minute)", flush=True)
    target = f"{ROOT}[{extras}]" if extras else str(ROOT)
    subprocess.run(
        [
            str(PYTHON),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-e",
            target,
        ],
        check=True,
    )
    stamp.write_text(digest)


def run(args: list[str]) -> int:
    """Run ``args`` in place of this process where possible, so that SIGTERM and Ctrl-C reach
    the service itself (a parent python would get KeyboardInterrupt and kill it mid-shutdown)."""
    if os.name == "posix":
        sys.stdout.flush()
        os.execv(args[0], args)  # noqa: S606 - fixed argv, no shell
    return subprocess.call(args)  # pragma: no cover - Windows


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "help"
    os.chdir(ROOT)
    if command == "serve":
        ensure_venv("")
        return run([str(BIN / "arena-realtime"), "serve", *argv[1:]])
    if command == "test":
        ensure_venv("test")
        return run(
            [
                str(PYTHON),
                "-m",
                "pytest",
                "--cov",
                "--cov-report=term",
                "--cov-fail-under=85",
                *argv[1:],
            ]
        )
    print(__doc__)
    return 0 if command == "help" else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
