"""Cheap unique ids for connections and requests (log correlation, client ids).

``uuid.uuid4().hex`` costs a ``getrandom`` system call and a ``UUID`` object per id; a server
opening thousands of connections a second makes two per connection (the connection id and the
request id of its handshake). :func:`unique_id` keeps the same shape (32 lowercase hex digits)
from a random 80-bit prefix drawn once per process (again in a forked child) and a 48-bit
counter: unique across processes and restarts with the odds of a random id, about 0.7 µs.

Not secrets: an id tells how many ids its process made before it. Tokens and anything that must
not be guessed use :mod:`secrets`.
"""

from __future__ import annotations

import itertools
import os

_MASK = (1 << 48) - 1
_prefix = ""
_counter = itertools.count(1)


def _reset() -> None:
    global _prefix, _counter
    _prefix = os.urandom(10).hex()
    _counter = itertools.count(1)


_reset()
os.register_at_fork(after_in_child=_reset)


def unique_id() -> str:
    """32 lowercase hex digits, unique across processes (see the module docstring)."""
    return f"{_prefix}{next(_counter) & _MASK:012x}"
