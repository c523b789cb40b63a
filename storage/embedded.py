"""An embedded PostgreSQL server (``pgserver``) for running without ``DATABASE_URL``.

The cluster lives in ``DATA_DIR/postgres`` and is reused across restarts; it stops when the
process that started it exits.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class EmbeddedPostgres:
    """A running embedded server; :attr:`url` is its connection string."""

    def __init__(self, server: Any) -> None:
        self._server = server
        self.url: str = server.get_uri()

    def stop(self) -> None:
        """Stop the server (data is kept)."""
        try:
            self._server.cleanup()
        except Exception:  # pragma: no cover - best effort at exit
            log.warning("embedded postgres did not stop cleanly", exc_info=True)


def start_embedded(data_dir: Path) -> EmbeddedPostgres:
    """Start (or attach to) the embedded server in ``data_dir/postgres``. Blocking: run it in a
    thread from async code."""
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI); pgserver
        # then uses the socket folder inside ``path``, which is what we want anyway.
        warnings.simplefilter("ignore")
        import pgserver

    path = (data_dir / "postgres").resolve()
    path.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(path, cleanup_mode="stop")  # type: ignore[attr-defined]
    return EmbeddedPostgres(server)
