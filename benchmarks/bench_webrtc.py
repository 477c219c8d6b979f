"""Browser → livefuse → browser latency over WebRTC, measured with a frame counter.

Headless Chromium (Debian's, driven by Playwright) plays a clip of a sample portrait as
its camera; every frame carries a 16-bit counter (``livefuse/testing/fakecam.py``). The demo
page sends the camera to ``livefuse serve``'s app on 127.0.0.1 and shows what comes
back; ``static/probe.js`` decodes the counter in both videos as they are displayed, so
latency = when a counter appears in the returned video − when it appeared in the local
preview: capture → encode → network → server (decode, track, swap, encode) → decode →
display, the path a user sees.

Runs 480p (640x480) and 720p (1280x720), each with the mesh swapper and with swapping
off (the same path without face work: the transport's own cost), for each encoder
variant asked for: ``vp8`` and ``h264`` (livefuse's real-time encoders, that codec
preferred), ``aiortc`` (aiortc's own VP8 encoder settings, as before livefuse set its own).
CPU is counted per process: the server (this process: decode, pipeline, encode) and
Chromium (camera, encode, decode, display). Prints Markdown tables and writes
benchmarks/out/webrtc-<date>.json.

``--split-cores``: the server runs on the machine's last core and Chromium on the others,
as when the browser is on the caller's own machine; without it both share every core, and on a
2-core machine the browser's camera, encoder and display compete with the swap for the same
core time.

Usage: python benchmarks/bench_webrtc.py [--seconds 10] [--sizes 480p,720p] [--variants vp8,h264,aiortc]
                                         [--split-cores]
Needs Chromium at /usr/bin/chromium (apt-get install chromium) and the webrtc extra.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import benchinfo
import cv2
import numpy as np
from aiohttp import web
from playwright.async_api import Browser, async_playwright

from livefuse.app import Engine
from livefuse.config import Settings, VideoCodecChoice, load_settings
from livefuse.models.files import default_home
from livefuse.models.install import ModelInstaller
from livefuse.models.store import ModelStore
from livefuse.samples import SampleStore
from livefuse.testing.fakecam import chromium_flags, face_clip, write_y4m
from livefuse.web import peers
from livefuse.web.server import ServerConfig, create_app

SIZES = {"480p": (640, 480), "720p": (1280, 720)}
OUT = Path(__file__).parent / "out"
CHROMIUM = "/usr/bin/chromium"
#: Seconds of streaming before measuring: the browser's bandwidth estimate ramps up first.
WARMUP_S = 4.0

STATS_JS = """async () => {
  const out = {};
  (await window.livefuse.state.pc.getStats()).forEach((s) => {
    if (s.type === "outbound-rtp" && s.kind === "video")
      out.sent = {width: s.frameWidth, height: s.frameHeight, fps: s.framesPerSecond,
                  limited_by: s.qualityLimitationReason};
    if (s.type === "inbound-rtp" && s.kind === "video")
      out.received = {width: s.frameWidth, height: s.frameHeight, fps: s.framesPerSecond, dropped: s.framesDropped,
                      jitter_buffer_ms: 1000 * s.jitterBufferDelay / Math.max(1, s.jitterBufferEmittedCount)};
  });
  return out;
}"""


def loopback_only() -> None:
    """aioice leaves 127.0.0.1 out of its candidates; this benchmark runs on loopback only."""
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"]


@asynccontextmanager
async def serving(engine: Engine, settings: Settings, variant: str) -> AsyncIterator[str]:
    """The server app on an ephemeral 127.0.0.1 port; yields its URL."""
    codec: VideoCodecChoice = "h264" if variant == "h264" else "vp8"
    app = create_app(ServerConfig(port=0, video_codec=codec), settings, engine)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def split_cores(tmp: Path) -> str:
    """Pin this process (the server: every thread it has and will start) to the last core, and
    return a Chromium launcher pinned to the others (threads started later inherit their
    creator's affinity, so pinning what runs now covers them)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("--split-cores needs at least 2 cores")
    for task in Path("/proc/self/task").iterdir():
        os.sched_setaffinity(int(task.name), {cores[-1]})
    launcher = tmp / "chromium-pinned"
    others = ",".join(str(c) for c in cores[:-1])
    launcher.write_text(f'#!/bin/sh\nexec taskset -c {others} {CHROMIUM} "$@"\n')
    launcher.chmod(0o755)
    return str(launcher)


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def process_ticks(name: str) -> int:
    """utime + stime jiffies of every process whose command is ``name`` (Chromium's many)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # the process ended meanwhile
        comm, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
        if comm.startswith(name):
            total += int(rest[11]) + int(rest[12])
    return total


def cpu_split() -> dict[str, float]:
    """CPU seconds so far: the machine (busy), this server process, Chromium."""
    hz = os.sysconf("SC_CLK_TCK")
    return {
        "machine": cpu_ticks()[0] / hz,
        "server": sum(os.times()[:2]),
        "browser": process_ticks("chromium") / hz,
    }


async def run_once(browser: Browser, url: str, size: str, swap: bool, seconds: float, variant: str) -> dict[str, Any]:
    """One measurement: open the page, start the camera, measure for ``seconds``."""
    width, height = SIZES[size]
    page = await browser.new_page(viewport={"width": 1400, "height": 900}, bypass_csp=True)
    try:
        await page.goto(f"{url}/")
        await page.evaluate("window.livefuse.ready")
        await page.add_script_tag(url="/static/probe.js")
        await page.select_option("#size", f"{width}x{height}")
        await page.select_option("#face", "biden.jpg")
        if not swap:
            await page.uncheck("#swap")
        await page.evaluate("lfProbe.start()")
        await page.click("#start")
        await page.wait_for_function("() => document.getElementById('remote').currentTime > 0.5", timeout=30_000)
        session = await page.evaluate("window.livefuse.state.session")
        await asyncio.sleep(WARMUP_S)
        await page.evaluate("lfProbe.clear()")
        cpu0 = cpu_split()
        await asyncio.sleep(seconds)
        latencies = np.array(await page.evaluate("lfProbe.latencies()"), np.float64)
        cpu1 = cpu_split()
        webrtc = await page.evaluate(STATS_JS)
        async with aiohttp.ClientSession() as http, http.get(f"{url}/api/sessions/{session}") as r:
            server = await r.json()
        await page.click("#stop")
    finally:
        await page.close()
    if latencies.size == 0:
        raise RuntimeError(f"{size} swap={swap}: no returned frame could be matched to its counter")
    p50, p95 = np.percentile(latencies, [50, 95])
    return {
        "size": size,
        "variant": variant,
        "swap": "mesh" if swap else "off",
        "latency_ms": {
            "p50": round(float(p50), 1),
            "p95": round(float(p95), 1),
            # The probe sees frames at the display's refresh (60 Hz: steps of ~17 ms), so the
            # median moves in those steps; the mean of many samples does not (their phase varies).
            "mean": round(float(latencies.mean()), 1),
            "max": round(float(latencies.max()), 1),
        },
        "samples": int(latencies.size),
        "matched_per_s": round(latencies.size / seconds, 1),
        "browser": webrtc,
        "server": {
            "latency_ms": server["latency_ms"],
            "fps_in": server["fps_in"],
            "fps_out": server["fps"],
            "dropped": server["dropped"],
            "detector_rate": server["detector_rate"],
            "size": server["size"],
            "budget_ms": server["budget_ms"],
            "video": server["video"],
        },
        "cpu_percent": {k: round(100 * (cpu1[k] - cpu0[k]) / seconds) for k in cpu0},
    }


async def bench(sizes: list[str], seconds: float, home: Path, variants: list[str], split: bool) -> list[dict[str, Any]]:
    loopback_only()
    settings = load_settings({"home": str(home)}, env={})
    portrait = cv2.imread(str(SampleStore(home).path("obama.jpg")))
    runs = []
    with Engine(settings) as engine, tempfile.TemporaryDirectory(prefix="livefuse-bench-") as tmp:
        chromium = split_cores(Path(tmp)) if split else CHROMIUM
        for size in sizes:
            # 90 frames: the counter repeats every 3 s, far above any latency measured.
            camera = write_y4m(Path(tmp) / f"camera-{size}.y4m", face_clip(portrait, SIZES[size], 90))
            for variant in variants:
                with aiortc_encoders(variant == "aiortc"):
                    async with serving(engine, settings, variant) as url, async_playwright() as playwright:
                        browser = await playwright.chromium.launch(
                            executable_path=chromium, args=chromium_flags(camera)
                        )
                        try:
                            for swap in (True, False):
                                run = await run_once(browser, url, size, swap, seconds, variant)
                                run["cores"] = "split" if split else "shared"
                                print(json.dumps(run), file=sys.stderr)
                                runs.append(run)
                        finally:
                            await browser.close()
    return runs


@contextmanager
def aiortc_encoders(enabled: bool) -> Iterator[None]:
    """With ``enabled``, sessions keep aiortc's own encoders (the baseline before livefuse
    set real-time ones): the benchmark's only patch of the server."""
    if not enabled:
        yield
        return
    original = peers.use_encoder
    peers.use_encoder = lambda sender, encoder: False  # type: ignore[assignment]
    try:
        yield
    finally:
        peers.use_encoder = original


def machine() -> dict[str, object]:
    import aiortc

    chromium = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip()
    return benchinfo.describe(aiortc=aiortc.__version__, chromium=chromium)


def table(runs: list[dict[str, Any]]) -> str:
    rows = [
        "| size | encoder | swap | latency p50 / p95 (mean) ms | returned fps | browser sends | server p50 / p95 ms "
        "| jitter buffer ms | server dropped | detector/frame | CPU % server / browser / machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        sent, received = r["browser"].get("sent", {}), r["browser"].get("received", {})
        server = r["server"]
        cpu = r["cpu_percent"]
        rows.append(
            f"| {r['size']} | {r['variant']} | {r['swap']} "
            f"| {r['latency_ms']['p50']:.0f} / {r['latency_ms']['p95']:.0f} ({r['latency_ms']['mean']:.0f}) "
            f"| {received.get('fps')} | {sent.get('width')}x{sent.get('height')} "
            f"({sent.get('limited_by', '?')}) | {server['latency_ms']['p50']} / {server['latency_ms']['p95']} "
            f"| {received.get('jitter_buffer_ms', 0):.0f} | {server['dropped']['total']} "
            f"| {server['detector_rate']} | {cpu['server']} / {cpu['browser']} / {cpu['machine']} |"
        )
    rows += [
        "",
        "Where the server's milliseconds go (p50 / p95; for the stages: queue wait · work):",
        "",
        "| size | encoder | swap | convert in | capture | analyze | swap | output | convert out |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        b = r["server"]["budget_ms"]
        stages = " | ".join(
            f"{b[s]['wait_p50']}/{b[s]['wait_p95']} · {b[s]['work_p50']}/{b[s]['work_p95']}"
            for s in ("capture", "analyze", "swap", "output")
        )
        rows.append(
            f"| {r['size']} | {r['variant']} | {r['swap']} "
            f"| {b['convert_in']['p50']}/{b['convert_in']['p95']} | {stages} "
            f"| {b['convert_out']['p50']}/{b['convert_out']['p95']} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring time per run (10)")
    parser.add_argument("--sizes", default="480p,720p")
    parser.add_argument("--variants", default="vp8,h264,aiortc", help="encoders to compare (vp8,h264,aiortc)")
    parser.add_argument("--split-cores", action="store_true", help="server on the last core, Chromium on the rest")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"bench_webrtc needs Chromium at {CHROMIUM}: apt-get install -y chromium", file=sys.stderr)
        return 1
    home = Path(os.environ.get("LIVEFUSE_HOME") or default_home())
    ModelInstaller(ModelStore(home)).pull()
    SampleStore(home).pull()
    runs = asyncio.run(bench(args.sizes.split(","), args.seconds, home, args.variants.split(","), args.split_cores))
    OUT.mkdir(exist_ok=True)
    results = {
        "machine": machine(),
        "swapper": "mesh",
        "seconds": args.seconds,
        "cores": "split" if args.split_cores else "shared",
        "runs": runs,
    }
    path = OUT / f"webrtc-{results['machine']['date']}-{results['cores']}.json"
    path.write_text(json.dumps(results, indent=1))
    print(table(runs))
    print(f"\nwrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
