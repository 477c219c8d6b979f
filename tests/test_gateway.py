"""``livefuse gateway`` in front of two ``livefuse serve`` workers (real processes, a real
redis-server), with aiortc clients on 127.0.0.1: sessions are split over both workers, later
requests reach the owner, and a killed worker's sessions end while new ones go to the survivor."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from jobs_helpers import Proc, make_clip, read_video, redis_server
from test_web import ClipTrack, Receiver, new_pc

pytestmark = pytest.mark.slow
pytest.importorskip("rq")


@pytest.fixture(autouse=True)
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's peers gather 127.0.0.1 only (the workers do the same, see ``Proc``)."""
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"])


@pytest.fixture
def cluster(livefuse_home: Path, tmp_path: Path) -> Iterator[tuple[str, list[Proc]]]:
    """Redis, two workers with one session slot each, and the gateway; yields its URL."""
    with redis_server(tmp_path) as url:
        procs: list[Proc] = []
        try:
            for i in range(2):
                procs.append(
                    Proc(
                        [
                            "serve",
                            "--port",
                            "0",
                            "--max-sessions",
                            "1",
                            "--queue",
                            url,
                            "--storage",
                            str(tmp_path),
                            "--job-db",
                            str(tmp_path / f"w{i}.sqlite3"),
                        ],
                        livefuse_home,
                        tmp_path / f"worker{i}.log",
                        loopback_ice=True,
                    )
                )
            gateway = Proc(["gateway", "--queue", url, "--port", "0"], livefuse_home, tmp_path / "gateway.log")
            procs.append(gateway)
            address = gateway.wait_for(r"open (http://127\.0\.0\.1:\d+)/").group(1)
            for proc in procs[:2]:
                proc.wait_for(r"registered as \w+")
            yield address, procs
        finally:
            for proc in procs:
                proc.stop()


async def open_session(http: aiohttp.ClientSession, clip: list[Any]) -> tuple[RTCPeerConnection, Receiver, dict]:
    pc, receiver = new_pc(), Receiver()
    pc.addTrack(ClipTrack(clip))
    pc.on("track", receiver.attach)
    await pc.setLocalDescription(await pc.createOffer())
    async with http.post("/api/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"}) as r:
        answer = await r.json()
        assert r.status == 200, answer
        answer["node"] = r.headers["X-Livefuse-Node"]
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
    return pc, receiver, answer


async def node_count(http: aiohttp.ClientSession) -> int:
    async with http.get("/api/nodes") as r:
        return len((await r.json())["nodes"])


def test_sessions_split_route_to_their_owner_and_a_killed_workers_sessions_end(
    cluster: tuple[str, list[Proc]], livefuse_home: Path, tmp_path: Path
) -> None:
    address, procs = cluster
    clip = read_video(make_clip(livefuse_home / "samples" / "demo.mp4", tmp_path / "clip.mp4", 30, (320, 180)))

    async def scenario() -> None:
        async with aiohttp.ClientSession(address) as http:
            deadline = time.monotonic() + 20
            while await node_count(http) < 2:
                assert time.monotonic() < deadline, "the workers did not register"
                await asyncio.sleep(0.2)
            (pc_a, rx_a, a), (pc_b, rx_b, b) = [await open_session(http, clip) for _ in range(2)]
            assert a["node"] != b["node"], "the two sessions went to the same worker"
            await rx_a.wait(10, timeout=40)
            await rx_b.wait(10, timeout=40)
            # Every worker is full: a third session is refused, not overbooked.
            async with http.post("/api/offer", json={"sdp": "v=0", "type": "offer"}) as r:
                assert r.status == 503
            # Later requests reach the owner: its stats, a live setting change, a WHEP viewer.
            for session in (a, b):
                async with http.get(f"/api/sessions/{session['session']}") as r:
                    assert r.status == 200 and r.headers["X-Livefuse-Node"] == session["node"]
                async with http.post(f"/api/sessions/{session['session']}/settings", json={"keep_mouth": True}) as r:
                    assert r.status == 200, await r.text()
                    assert r.headers["X-Livefuse-Node"] == session["node"]
            viewer = new_pc()
            viewer.addTransceiver("video", direction="recvonly")
            await viewer.setLocalDescription(await viewer.createOffer())
            async with http.post(
                f"/whep/{a['session']}", data=viewer.localDescription.sdp, headers={"Content-Type": "application/sdp"}
            ) as r:
                assert r.status == 201 and r.headers["X-Livefuse-Node"] == a["node"], await r.text()
            await viewer.close()

            # kill -9 the worker that owns session A.
            owner_log = {p: re.search(r"registered as (\w+)", p.text()).group(1) for p in procs[:2]}
            victim = next(p for p, node in owner_log.items() if node == a["node"])
            victim.stop(signal.SIGKILL)
            deadline = time.monotonic() + 10
            while await node_count(http) != 1:
                assert time.monotonic() < deadline, "the dead worker did not drop out of the registry"
                await asyncio.sleep(0.2)
            async with http.get(f"/api/sessions/{a['session']}") as r:
                assert r.status == 404 and "gone" in (await r.json())["error"]
            # Its media has stopped; the survivor's session still flows.
            count = rx_a.count
            await rx_b.wait(10, timeout=30)
            assert rx_a.count <= count + 2
            # End B through the gateway; a new session goes to the survivor.
            async with http.delete(f"/api/sessions/{b['session']}") as r:
                assert r.status == 200 and r.headers["X-Livefuse-Node"] == b["node"]
            await pc_b.close()
            deadline = time.monotonic() + 10
            while True:  # the survivor's next heartbeat shows its free slot
                async with http.get("/api/nodes") as r:
                    if (await r.json())["nodes"][0]["free"] == 1:
                        break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            pc_c, rx_c, c = await open_session(http, clip)
            assert c["node"] == b["node"]
            await rx_c.wait(10, timeout=40)
            for pc in (pc_a, pc_c):
                await pc.close()
            for rx in (rx_a, rx_b, rx_c):
                await rx.close()

    asyncio.run(asyncio.wait_for(scenario(), 180))
