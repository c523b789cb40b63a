"""``arena-realtime serve --workers N``: N worker processes share one port on one host.

Each worker is a whole service process (``arena-realtime serve`` with ``ARENA_WORKER`` set)
that binds the port with ``SO_REUSEPORT``, so the kernel spreads new connections over the
workers. They share nothing in memory: the broker (Redis or Redis Cluster) carries
publications, presence and control messages between them exactly as between nodes, which is
why more than one worker needs ``REDIS_URL``.

The supervisor (this module) does what a process manager would:

* applies migrations once, then starts the workers (an embedded PostgreSQL, when
  ``DATABASE_URL`` is unset, is started here and shared);
* restarts a worker that exits on its own, with a backoff that grows while it keeps crashing
  (1 s doubling to 30 s; reset once a worker has stayed up for a minute);
* forwards SIGTERM/SIGINT to every worker, waits for their graceful shutdown (each closes its
  WebSockets with 1001) and kills what is still running after ``SHUTDOWN_TIMEOUT`` + 5 s;
* gives the workers one ``PROMETHEUS_MULTIPROC_DIR`` so that ``/metrics`` on any worker shows
  every worker's series (prometheus-client's multiprocess mode), and marks a dead worker's
  files so its live gauges disappear.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from server.settings import Settings

log = logging.getLogger("arena.workers")

#: set in a worker's environment: its index (0..N-1); the worker binds with SO_REUSEPORT
WORKER_ENV = "ARENA_WORKER"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

RESTART_BACKOFF_MIN = 1.0
RESTART_BACKOFF_MAX = 30.0
#: a worker that stayed up this long is healthy again: its next crash restarts it at once
STABLE_AFTER = 60.0


class WorkersRefused(Exception):
    """``--workers N`` cannot run with these settings; the message says why and what to do."""


def check_workers(settings: Settings, workers: int) -> None:
    """Refuse settings under which N workers would not behave as one service."""
    if workers < 1:
        raise WorkersRefused("--workers must be at least 1")
    if workers == 1:
        return
    if not settings.redis_url:
        raise WorkersRefused(
            f"--workers {workers} needs a shared broker: set REDIS_URL (the in-process broker "
            "cannot carry publications, presence or disconnects between processes)"
        )
    if settings.port == 0:
        raise WorkersRefused(
            "--workers needs a fixed PORT (with PORT=0 each worker would pick its own)"
        )


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = RESTART_BACKOFF_MIN
    restart_at: float = 0.0
    restarts: int = 0


@dataclass
class Supervisor:
    """Starts, watches and stops the worker processes. ``command`` is the worker's argv."""

    settings: Settings
    workers: int
    command: list[str]
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    _stopping: bool = False
    _pool: list[_Worker] = field(default_factory=list)

    def run(self) -> int:
        """Run until a signal stops the service; returns the process exit code."""
        own_dir = MULTIPROC_ENV not in self.env
        metrics_dir = Path(self.env.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix="arena-metrics-"))
        _empty(metrics_dir)
        env = {**self.env, MULTIPROC_ENV: str(metrics_dir), "WORKERS": "1"}
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            self._pool = [_Worker(i) for i in range(self.workers)]
            for worker in self._pool:
                self._start(worker, env)
            log.info("workers started", extra={"workers": self.workers, "port": self.settings.port})
            while not self._stopping:
                self._watch(env, metrics_dir)
                time.sleep(0.2)
            return self._stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if own_dir:
                shutil.rmtree(metrics_dir, ignore_errors=True)

    def pids(self) -> list[int]:
        """The process ids of the running workers."""
        return [w.process.pid for w in self._pool if w.process and w.process.poll() is None]

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _start(self, worker: _Worker, env: dict[str, str]) -> None:
        worker_env = {**env, WORKER_ENV: str(worker.index)}
        worker.process = subprocess.Popen(self.command, env=worker_env)
        worker.started = time.monotonic()
        log.info("worker started", extra={"worker": worker.index, "pid": worker.process.pid})

    def _watch(self, env: dict[str, str], metrics_dir: Path) -> None:
        now = time.monotonic()
        for worker in self._pool:
            process = worker.process
            if process is not None:
                code = process.poll()
                if code is None:
                    if now - worker.started >= STABLE_AFTER:
                        worker.backoff = RESTART_BACKOFF_MIN
                    continue
                _mark_dead(process.pid, metrics_dir)
                worker.process = None
                worker.restart_at = now + worker.backoff
                log.error(
                    "worker exited; restarting",
                    extra={
                        "worker": worker.index,
                        "pid": process.pid,
                        "exit_code": code,
                        "restart_in_s": worker.backoff,
                    },
                )
                worker.backoff = min(RESTART_BACKOFF_MAX, worker.backoff * 2)
            elif now >= worker.restart_at and not self._stopping:
                worker.restarts += 1
                self._start(worker, env)

    def _stop_all(self) -> int:
        running = [w.process for w in self._pool if w.process is not None]
        log.info("stopping workers", extra={"workers": len(running)})
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_timeout + 5.0
        code = 0
        for process in running:
            try:
                result = process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker did not stop in time; killing it", extra={"pid": process.pid})
                process.kill()
                process.wait()
                code = 1
                continue
            if result != 0:
                log.error(
                    "worker stopped with an error", extra={"pid": process.pid, "exit_code": result}
                )
                code = 1
        log.info("workers stopped", extra={"exit_code": code})
        return code


def _empty(folder: Path) -> None:
    """prometheus-client's multiprocess folder must start empty (stale files would count)."""
    folder.mkdir(parents=True, exist_ok=True)
    for item in folder.iterdir():
        if item.is_file():
            item.unlink()


def _mark_dead(pid: int, folder: Path) -> None:
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid, str(folder))  # type: ignore[no-untyped-call]


def worker_index() -> int | None:
    """This process's worker index when it runs under the supervisor, else None."""
    raw = os.environ.get(WORKER_ENV)
    return int(raw) if raw is not None and raw.isdigit() else None


def worker_command() -> list[str]:
    """The argv that runs one worker: this interpreter, ``server.cli serve``."""
    return [sys.executable, "-m", "server.cli", "serve"]
