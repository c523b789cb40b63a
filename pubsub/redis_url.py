"""``REDIS_URL`` forms and the clients built from them.

* ``redis://host:port/db`` (``rediss://`` for TLS): one Redis server, the classic broker.
* ``redis+cluster://[user:password@]host1:port1,host2:port2,...`` (``rediss+cluster://`` for
  TLS): a Redis Cluster (Redis >= 7, sharded pub/sub). The hosts are seed nodes only; the
  client discovers every master and replica from them, so listing two or three is enough.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}


@dataclass(frozen=True, slots=True)
class ClusterURL:
    """A parsed ``redis+cluster://`` URL."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    tls: bool = False


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``)."""
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> ClusterURL:
    """Split a cluster URL into seed nodes and credentials.

    Raises ``ValueError`` with a message that never contains the password.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError("a cluster URL starts with redis+cluster:// or rediss+cluster://")
    if "?" in rest or "#" in rest:
        raise ValueError("a cluster URL takes no query string or fragment")
    netloc, _, path = rest.partition("/")
    if path not in ("", "0"):
        raise ValueError("Redis Cluster has only database 0")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes = []
    for item in hosts.split(","):
        item = item.strip()
        if item.startswith("["):  # [IPv6]:port
            host, _, port_text = item[1:].partition("]:")
        else:
            host, _, port_text = item.rpartition(":")
        if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"cluster node {item!r} must be host:port")
        nodes.append((host, int(port_text)))
    return ClusterURL(tuple(nodes), username, password, CLUSTER_SCHEMES[scheme.lower()])


def cluster_client(url: str, **kwargs: Any) -> RedisCluster:
    """A ``RedisCluster`` client for a cluster URL; ``kwargs`` go to ``RedisCluster``.

    A MOVED reply only patches the slot it names (``reinitialize_steps=0``): redis-py's
    periodic full refresh on MOVED closes every connection of the client, in-flight
    commands of other tasks included, and a publish whose reply is lost that way may or may
    not have happened.
    """
    parsed = parse_cluster_url(url)
    kwargs.setdefault("reinitialize_steps", 0)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in parsed.nodes],
        username=parsed.username,
        password=parsed.password,
        ssl=parsed.tls,
        **kwargs,
    )


def redis_client(url: str, **kwargs: Any) -> Redis | RedisCluster:
    """A client for either URL form (a cluster client for ``redis+cluster://``)."""
    if is_cluster_url(url):
        return cluster_client(url, **kwargs)
    return Redis.from_url(url, **kwargs)
