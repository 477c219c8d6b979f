"""The registry in Redis: which ``livefuse serve`` workers are alive, how much room each has,
and which worker owns which live session.

Keys (all small): ``livefuse:node:<id>`` a hash {url, free, max} that expires ``NODE_TTL_S``
after the worker's last heartbeat, so a dead worker drops out by itself;
``livefuse:session:<session id>`` the owning node's id; ``livefuse:latest`` the newest session.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

NODE_TTL_S = 3
"A worker that has not beaten for this long is gone."
BEAT_S = 1.0
_NODE = "livefuse:node:{}"
_SESSION = "livefuse:session:{}"
_LATEST = "livefuse:latest"
_SESSION_TTL_S = 24 * 3600


@dataclass(frozen=True, slots=True)
class Node:
    """A live ``livefuse serve`` worker."""

    id: str
    url: str
    free: int
    max: int


class Registry:
    """Reads and writes the registry. Blocking calls: use them from an executor."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def beat(self, node: Node) -> None:
        key = _NODE.format(node.id)
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping={"url": node.url, "free": node.free, "max": node.max})
            pipe.expire(key, NODE_TTL_S)
            pipe.execute()

    def leave(self, node_id: str) -> None:
        self.redis.delete(_NODE.format(node_id))

    def node(self, node_id: str) -> Node | None:
        data = self.redis.hgetall(_NODE.format(node_id))
        if b"url" not in data:  # gone, or a reservation that raced the node's expiry
            return None
        return Node(node_id, _text(data[b"url"]), int(data[b"free"]), int(data[b"max"]))

    def nodes(self) -> list[Node]:
        ids = [_text(key).rsplit(":", 1)[1] for key in self.redis.scan_iter(match=_NODE.format("*"), count=100)]
        return [n for n in (self.node(i) for i in ids) if n is not None]

    def roomiest(self, skip: frozenset[str] = frozenset()) -> Node | None:
        """The live worker with the most free session slots (None when all are full), not in ``skip``."""
        candidates = [n for n in self.nodes() if n.free > 0 and n.id not in skip]
        return max(candidates, key=lambda n: (n.free, n.id)) if candidates else None

    def reserve(self, node: Node) -> None:
        """Count a session just placed on ``node`` until its next heartbeat says the truth."""
        key = _NODE.format(node.id)
        with self.redis.pipeline() as pipe:
            pipe.hincrby(key, "free", -1)
            pipe.expire(key, NODE_TTL_S)  # a reservation never outlives a heartbeat
            pipe.execute()

    def own(self, session_id: str, node: Node) -> None:
        with self.redis.pipeline() as pipe:
            pipe.set(_SESSION.format(session_id), node.id, ex=_SESSION_TTL_S)
            pipe.set(_LATEST, session_id, ex=_SESSION_TTL_S)
            pipe.execute()

    def owner(self, session_id: str) -> Node | None:
        """The live worker that owns ``session_id``; None when unknown or its worker is gone."""
        if session_id == "latest":
            latest = self.redis.get(_LATEST)
            if latest is None:
                return None
            session_id = _text(latest)
        node_id = self.redis.get(_SESSION.format(session_id))
        return self.node(_text(node_id)) if node_id else None

    def latest(self) -> str | None:
        value = self.redis.get(_LATEST)
        return _text(value) if value else None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


Room = Callable[[], tuple[int, int]]
"A worker's (free, max) session slots, read at each heartbeat."


def registration(queue: str, advertise_url: str | None) -> Callable[[str, Room], Coroutine[Any, Any, None]]:
    """What ``livefuse serve --queue`` runs while it listens (``web.server.Extension.listening``):
    register at ``advertise_url``, or at the server's own URL."""

    def listening(server_url: str, room: Room) -> Coroutine[Any, Any, None]:
        return advertise(queue, advertise_url or server_url, room)

    return listening


async def advertise(url: str, node_url: str, room: Callable[[], tuple[int, int]]) -> None:
    """Beat every ``BEAT_S`` with this worker's address and (free, max) slots, until cancelled;
    then leave the registry. A failed beat is logged and retried (the TTL covers short gaps)."""
    from livefuse.jobs.rqueue import connect

    loop = asyncio.get_running_loop()
    registry = Registry(await loop.run_in_executor(None, connect, url))
    node_id = secrets.token_hex(6)
    log.info("registered as %s (%s) in %s", node_id, node_url, url)
    try:
        while True:
            free, most = room()
            try:
                await loop.run_in_executor(None, registry.beat, Node(node_id, node_url, free, most))
            except RedisError as exc:
                log.warning("registry heartbeat failed (%s); retrying", exc)
            await asyncio.sleep(BEAT_S)
    finally:
        await loop.run_in_executor(None, registry.leave, node_id)
        registry.redis.close()
