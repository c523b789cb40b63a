"""``arena-realtime serve`` with the garbage collector's pauses logged.

Every full (generation 2) collection is printed to stderr as
``GC2 at=<unix time> dur=<ms>`` and a per-generation summary is printed at exit, so that
latency outliers can be matched against collector pauses. Same environment as the real command::

    PORT=8080 DATABASE_URL=... .venv/bin/python -m bench.gc_probe
    .venv/bin/python -m bench.fanout --gc-probe ...     # the fan-out benchmark uses it

With ``GC_PROBE_ALL=1`` every collection (``GC0``/``GC1``/``GC2`` lines) is printed, not only
the full ones. With ``GC_FREEZE=1`` every object alive after the imports is moved to the
permanent generation (``gc.freeze()``) before serving, to see what that changes.
"""

from __future__ import annotations

import atexit
import collections
import gc
import os
import sys
import time
from typing import Any

_pauses: list[tuple[int, float]] = []
_started = [0.0]


def _callback(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    pause = time.perf_counter() - _started[0]
    _pauses.append((info["generation"], pause))
    if info["generation"] == 2 or os.environ.get("GC_PROBE_ALL"):
        print(
            f"GC{info['generation']} at={time.time():.3f} dur={pause * 1000:.2f}ms",
            file=sys.stderr,
            flush=True,
        )


def _summary() -> None:
    by_generation: dict[int, list[float]] = collections.defaultdict(list)
    for generation, pause in _pauses:
        by_generation[generation].append(pause)
    for generation, pauses in sorted(by_generation.items()):
        pauses.sort()
        print(
            f"GCSTAT gen{generation}: n={len(pauses)} max={pauses[-1] * 1000:.1f}ms "
            f"p50={pauses[len(pauses) // 2] * 1000:.2f}ms total={sum(pauses) * 1000:.0f}ms",
            file=sys.stderr,
            flush=True,
        )


def main() -> int:
    gc.callbacks.append(_callback)
    atexit.register(_summary)
    from server import cli

    if os.environ.get("GC_FREEZE"):
        gc.collect()
        gc.freeze()
    return cli.main(["serve"])


if __name__ == "__main__":
    sys.exit(main())
