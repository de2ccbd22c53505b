"""One URL setting for both deployments of Redis.

- ``redis://host:port/db`` (also ``rediss://``, ``unix://``): one Redis, ``redis.asyncio.Redis``;
- ``redis+cluster://host:port`` (also ``rediss+cluster://``, or several seeds
  ``redis+cluster://h1:p1,h2:p2``): a Redis Cluster, ``redis.asyncio.cluster.RedisCluster``.

redis-py knows only the plain schemes, so ``+cluster`` is stripped and chooses the client.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme.lower() in CLUSTER_SCHEMES


def _plain(url: str) -> str:
    """``redis+cluster://a:1,b:2/0`` -> ``redis://a:1/0`` (the first seed)."""
    parts = urlsplit(url)
    scheme = CLUSTER_SCHEMES.get(parts.scheme.lower(), parts.scheme)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    first = hosts.split(",")[0]
    return urlunsplit((scheme, f"{userinfo}@{first}" if userinfo else first, parts.path, parts.query, parts.fragment))


def seeds(url: str) -> list[tuple[str, int]]:
    """The host and port of every node named in the URL."""
    hosts = urlsplit(url).netloc.rpartition("@")[2]
    out = []
    for hp in hosts.split(","):
        host, _, port = hp.rpartition(":") if ":" in hp else (hp, "", "6379")
        out.append((host.strip("[]") or "127.0.0.1", int(port or 6379)))
    return out


def connect(url: str, **kwargs: Any) -> Redis | RedisCluster:
    """An asyncio client for ``url`` (see the module docstring)."""
    if not is_cluster_url(url):
        return Redis.from_url(url, **kwargs)
    plain = _plain(url)
    nodes = seeds(url)
    if len(nodes) == 1:
        return RedisCluster.from_url(plain, **kwargs)
    from redis.asyncio.connection import parse_url

    opts = parse_url(plain)
    opts.pop("host", None)
    opts.pop("port", None)
    if opts.pop("connection_class", None) is not None:
        opts["ssl"] = True
    return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes], **opts, **kwargs)


async def ping_all(redis: Any) -> bool:
    """Whether every node answers (one Redis, or every primary of a cluster)."""
    if isinstance(redis, RedisCluster):
        replies = await redis.ping(target_nodes=RedisCluster.PRIMARIES)
        return bool(replies) if not isinstance(replies, dict) else all(replies.values())
    return bool(await redis.ping())


async def used_cpu_seconds(redis: Any) -> float:
    """Redis CPU time (user + sys) so far, summed over a cluster's primaries."""
    if isinstance(redis, RedisCluster):
        infos = await redis.info("cpu", target_nodes=RedisCluster.PRIMARIES)
        values = infos.values() if isinstance(infos, dict) and "used_cpu_sys" not in infos else [infos]
        return sum(float(i["used_cpu_sys"]) + float(i["used_cpu_user"]) for i in values)
    info = await redis.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
