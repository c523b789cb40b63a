"""Server instructions per connection (open + authenticate + subscribe), counted by callgrind:
the twin of ``bench/connect_cost.py``'s server CPU that the machine's load barely moves.

Each server runs under ``valgrind --tool=callgrind`` with instrumentation off; after its
start-up and one connection (lazy per-process state), instrumentation is switched on
(``callgrind_control -i on``) for ``-n`` connections from the load generator (100 at a time,
each authenticating and subscribing to ``alerts:bench``), then dumped. Instructions divided by
``-n`` is the server's user-space work per connection: the interpreter, aiohttp, uvloop, libc;
not the kernel's (system calls are counted as calls, not as work). A server is about 50 times
slower under callgrind, so ``-n 1000`` takes a minute or two per target. How many
connections' events one loop iteration handles still depends on timing: the naive server's
count repeats within 0.2 %, the project's within about 5 %, so compare medians of a few
``--rounds``::

    .venv/bin/python -m bench.connect_instructions -n 1000
    .venv/bin/python -m bench.connect_instructions -n 1000 --baseline /tmp/arena-base   # A/B

Targets: ``arena-memory`` (this checkout's ``python -m server.cli serve``, memory broker),
``arena-memory@<name>`` with ``--baseline DIR`` (the same from the checkout in ``DIR``, whose
folder's name is ``<name>``; repeatable) and
``raw-aiohttp`` (``bench/raw_server.py``, the naive server).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import DATABASE_URL, ROOT, free_port
from bench.fanout import _cli, _raise_nofile, bench_database, project_env
from bench.loadgen import Workers

CHANNEL = "alerts:bench"


def _wait_listening(process: subprocess.Popen[bytes], port: int, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the server exited during start-up")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.5)
    raise RuntimeError(f"the server did not listen within {timeout}s")


def _control(pid: int, env: dict[str, str], *args: str) -> None:
    # vgdb finds the server by a file name made of its pid, $USER and $HOST: the server's env
    subprocess.run(["callgrind_control", *args, str(pid)], env=env, check=True, capture_output=True)


def count(
    name: str,
    command: list[str],
    env: dict[str, str],
    cwd: Path,
    port: int,
    token: str,
    workers: Workers,
    n: int,
    keep: Path | None = None,
) -> float:
    """Instructions per connection of one server."""
    with tempfile.TemporaryDirectory(prefix="connect-cg-") as folder:
        out = os.path.join(folder, "cg.out")
        log = open(os.path.join(folder, "server.log"), "wb")  # noqa: SIM115
        process = subprocess.Popen(
            [
                *("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"),
                *("--instr-atstart=no", "--dump-instr=no"),
                *command,
            ],
            env={**env, "PYTHONHASHSEED": "0"},
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_raise_nofile,
        )
        try:
            _wait_listening(process, port)
            workers.connect("127.0.0.1", port, token, [[CHANNEL]], timeout=300.0)
            time.sleep(1.0)
            _control(process.pid, env, "-i", "on")
            result = workers.connect(
                "127.0.0.1", port, token, [[CHANNEL]] * n, concurrency=100, timeout=300.0
            )
            _control(process.pid, env, "-d")
            _control(process.pid, env, "-i", "off")
            if result["connected"] != n:
                raise RuntimeError(f"{name}: {result['connected']}/{n} connected")
            workers.call("close")
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
            log.close()
        dumps = sorted(p for p in glob.glob(out + "*") if p != out)
        if not dumps:
            log_text = Path(folder, "server.log").read_text()[-3000:]
            raise RuntimeError(f"{name}: no callgrind dump in {os.listdir(folder)}: {log_text}")
        text = Path(dumps[0]).read_text()
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            (keep / f"callgrind.{name}.out").write_text(text)
        match = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.MULTILINE)
        assert match is not None
        return int(match.group(1)) / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--targets", nargs="+", default=["arena-memory", "raw-aiohttp"])
    parser.add_argument(
        "--baseline",
        type=Path,
        action="append",
        default=[],
        help="another checkout to compare with, as <target>@<its folder's name> (repeatable)",
    )
    parser.add_argument("--database-url", default=DATABASE_URL)
    parser.add_argument(
        "--keep", type=Path, default=None, help="save each dump here (for callgrind_annotate)"
    )
    args = parser.parse_args(argv)
    _raise_nofile()
    workers = Workers(2)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bench-connect-cg-") as tmp,
            bench_database(args.database_url) as database_url,
        ):
            env = {
                **project_env(database_url, None, Path(tmp)),
                "PYTHONPATH": str(ROOT),
                "WS_HEARTBEAT": "25",
            }
            token = ""
            runs: list[tuple[str, list[str], dict[str, str], Path, bool]] = []
            for target in args.targets:
                if target == "raw-aiohttp":
                    runs.append(
                        (target, [sys.executable, "-m", "bench.raw_server"], {}, ROOT, False)
                    )
                    continue
                command = [sys.executable, "-m", "server.cli", "serve"]
                runs.append((target, command, env, ROOT, True))
                for baseline in args.baseline:
                    base = baseline.resolve()
                    base_env = {**env, "PYTHONPATH": str(base)}
                    runs.append((f"{target}@{base.name}", command, base_env, base, True))
            for round_ in range(args.rounds):
                for name, command, run_env, cwd, project in runs:
                    port = free_port()
                    if project:
                        if not token:
                            _cli(env, "migrate")
                            token = _cli(
                                env, "token", "--email", "bench@example.com", "--role", "admin"
                            )
                        full = command
                        run_env = {**run_env, "PORT": str(port)}
                        used_token = token
                    else:
                        full = [*command, f"--port={port}"]
                        used_token = "any"  # noqa: S105 - the naive server takes any token
                    per = count(
                        name, full, run_env, cwd, port, used_token, workers, args.n, args.keep
                    )
                    print(
                        f"round {round_ + 1} {name:22} {per:12,.0f} instructions per connection",
                        flush=True,
                    )
    finally:
        workers.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
