"""Connection and request ids: the shape of a random hex id, unique within a process and
across processes (a forked worker draws its own prefix)."""

from __future__ import annotations

import os
import re

from services.ids import unique_id


def test_ids_are_32_hex_digits_and_never_repeat() -> None:
    ids = [unique_id() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", one) for one in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_makes_other_ids_than_its_parent() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, unique_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    parent = unique_id()
    assert re.fullmatch(r"[0-9a-f]{32}", child)
    assert child[:20] != parent[:20]
