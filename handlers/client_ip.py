"""The client's IP address, for rate limits and logs.

The TCP peer is the client unless it is one of ``TRUSTED_PROXIES`` (addresses or CIDR ranges).
Then ``X-Forwarded-For`` is read from the right, skipping trusted proxies, and the first
untrusted hop is the client: entries further left were written by the client itself and can be
forged, so they are never used.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=16)
def parse_networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    """``TRUSTED_PROXIES`` entries as networks; raises ``ValueError`` for a malformed one."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)


def _trusted(address: str, networks: Iterable[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_ip(request: web.Request, trusted_proxies: tuple[str, ...]) -> str:
    """The address to attribute ``request`` to (``"unknown"`` if the peer is not known)."""
    peer = request.remote or "unknown"
    if not trusted_proxies:
        return peer
    networks = parse_networks(trusted_proxies)
    if not _trusted(peer, networks):
        return peer
    hops = [
        hop.strip()
        for header in request.headers.getall("X-Forwarded-For", ())
        for hop in header.split(",")
        if hop.strip()
    ]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage from a proxy we trust: fall back to what we can see
    return hops[0] if hops else peer
