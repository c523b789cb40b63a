"""Channel names and per-namespace options.

A channel is ``namespace:identifier``. The namespace picks the options (history size and TTL,
whether recovery is allowed, presence); the identifier names one stream inside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_CHANNEL_LENGTH = 128

_CHANNEL_RE = re.compile(r"^([a-z][a-z0-9_]{0,31}):([A-Za-z0-9_\-.=@]{1,120})$")


class InvalidChannel(ValueError):
    """The channel name is malformed or its namespace is not configured."""


@dataclass(frozen=True, slots=True)
class NamespaceOptions:
    """Options shared by every channel of a namespace.

    ``history_size`` publications are kept for ``history_ttl`` seconds; ``recovery`` lets a
    client resume with ``since``; ``presence`` and ``join_leave`` turn on who-is-here tracking;
    ``client_publish`` lets a connected client publish to a channel it may subscribe to.
    """

    history_size: int = 1000
    history_ttl: int = 24 * 3600
    recovery: bool = True
    presence: bool = False
    join_leave: bool = False
    client_publish: bool = False


def default_namespaces() -> dict[str, NamespaceOptions]:
    """The built-in namespaces. ``analysis`` keeps enough history for a whole analysis."""
    return {
        "user": NamespaceOptions(history_size=200),
        "proposals": NamespaceOptions(presence=True, join_leave=True),
        "analysis": NamespaceOptions(history_size=20_000),
        "alerts": NamespaceOptions(),
    }


@dataclass(frozen=True, slots=True)
class ChannelName:
    """A channel name parsed once: ``name`` is ``namespace:ident`` and ``options`` are its
    namespace's. Made by :func:`parse`; a subscribe parses the name once and passes this on."""

    name: str
    namespace: str
    ident: str
    options: NamespaceOptions


def parse(channel: str, namespaces: dict[str, NamespaceOptions]) -> ChannelName:
    """Parse and validate ``channel``; raises :class:`InvalidChannel` like :func:`parse_channel`."""
    namespace, ident = parse_channel(channel, namespaces)
    return ChannelName(channel, namespace, ident, namespaces[namespace])


def parse_channel(channel: str, namespaces: dict[str, NamespaceOptions]) -> tuple[str, str]:
    """Split ``channel`` into ``(namespace, identifier)``.

    Raises :class:`InvalidChannel` when the name is too long, has characters outside
    ``[A-Za-z0-9_-.=@]`` in the identifier, or names a namespace that is not configured.
    """
    if not isinstance(channel, str) or len(channel) > MAX_CHANNEL_LENGTH:
        raise InvalidChannel("channel name must be a string of at most 128 characters")
    match = _CHANNEL_RE.match(channel)
    if match is None:
        raise InvalidChannel("channel name must look like namespace:identifier")
    namespace, ident = match.group(1), match.group(2)
    if namespace not in namespaces:
        raise InvalidChannel(f"unknown namespace {namespace!r}")
    return namespace, ident
