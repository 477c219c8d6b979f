"""The demo page in a real browser: Debian's Chromium, headless, driven by Playwright.

Chromium's fake camera plays a y4m clip made here from a sample portrait (with a frame
counter), the page sends it to ``livefuse serve``'s app on 127.0.0.1 and shows what comes
back. ``static/probe.js`` pairs each returned frame with the local frame of the same
counter, so the test compares a frame with its own input.

CI installs Chromium in ``.ci/run``; there a missing ``/usr/bin/chromium`` is a failure,
elsewhere the test is skipped. The screenshot goes to ``.cache/test-artifacts/``.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from playwright.async_api import Page, async_playwright

from livefuse.app import Engine
from livefuse.config import Settings
from livefuse.testing.fakecam import chromium_flags, read_counter, write_y4m
from tests import test_web as shared
from tests.test_web import (
    CHANGED,
    REPO,
    SAME,
    Image,
    Served,
    assert_swapped,
    assert_untouched,
    diff,
    masks,
    run,
    serving,
)

# The fixtures this test shares with test_web (pytest finds them by these names).
loopback_ice = shared.loopback_ice
settings = shared.settings
engine = shared.engine
clip = shared.clip
face_box = shared.face_box

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / ".cache" / "test-artifacts"


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = f"Debian's Chromium is not installed ({CHROMIUM}): run .ci/run, or apt-get install -y chromium"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def decode(data_url: str) -> Image:
    image = cv2.imdecode(np.frombuffer(base64.b64decode(data_url.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


async def pairs(page: Page, n: int, timeout: float = 15) -> list[tuple[int, Image, Image]]:
    """``n`` (counter, local frame, returned frame) triples, a little apart in time."""
    found: list[tuple[int, Image, Image]] = []
    deadline = time.monotonic() + timeout
    while len(found) < n:
        assert time.monotonic() < deadline, f"only {len(found)} returned frames could be paired with their input"
        pair = await page.evaluate("lfProbe.pair()")
        if pair and all(pair["counter"] != c for c, _, _ in found):
            found.append((pair["counter"], decode(pair["local"]), decode(pair["remote"])))
            await asyncio.sleep(0.3)
        else:
            await asyncio.sleep(0.1)
    return found


async def wait_playing(page: Page, selector: str, timeout_s: float = 30) -> None:
    await page.wait_for_function(
        f"() => {{ const v = document.querySelector('{selector}'); return v.videoWidth > 0 && v.currentTime > 1; }}",
        timeout=timeout_s * 1000,
    )


async def wait_setting(srv: Served, session: str, swap: bool) -> None:
    deadline = time.monotonic() + 10
    while (await srv.stats(session))["swap"] is not swap:
        assert time.monotonic() < deadline, "the page's checkbox did not reach the server"
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.7)  # frames already on their way were made before the change


async def until_face_ready(srv: Served, session: str, face: str, timeout: float = 30) -> None:
    """Wait until the server has analysed the chosen face photo (it does so while the video
    already flows, so the first frames come back unswapped)."""
    deadline = time.monotonic() + timeout
    while (await srv.stats(session))["face"] != face:
        assert time.monotonic() < deadline, f"the face {face} was never ready"
        await asyncio.sleep(0.1)


async def until_changed(page: Page, face_box: np.ndarray, timeout: float = 15) -> None:
    """Wait until the returned frames show a swapped face: frames from before the face was
    ready are still on their way through the encoder, network and jitter buffer."""
    deadline = time.monotonic() + timeout
    while True:
        _, local, remote = (await pairs(page, 1))[0]
        inner, _ = masks(face_box, local.shape)
        if diff(remote, local, inner) > CHANGED:
            return
        assert time.monotonic() < deadline, "the face must be swapped"


async def until_untouched(page: Page, face_box: np.ndarray, timeout: float = 15) -> None:
    """Wait until the returned frames show the camera's own face: frames swapped before the
    switch are still on their way through the encoder, network and the browser's jitter
    buffer (longer on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while True:
        _, local, remote = (await pairs(page, 1))[0]
        inner, _ = masks(face_box, local.shape)
        if diff(remote, local, inner) < SAME:
            return
        assert time.monotonic() < deadline, "with swapping off the face must come back as it went"


def test_demo_page_in_chromium_swaps_the_camera_face_and_switches_off_live(
    loopback_ice: None,
    engine: Engine,
    settings: Settings,
    clip: list[Image],
    face_box: np.ndarray,
    tmp_path: Path,
) -> None:
    require_chromium()
    camera = write_y4m(tmp_path / "camera.y4m", clip)  # 4:2:0, as Chromium requires
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "webrtc-demo-page.png"

    async def scenario() -> None:
        async with serving(engine, settings) as srv, async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=chromium_flags(camera))
            try:
                # bypass_csp: the page's policy forbids eval, which Playwright's waits use.
                page = await browser.new_page(viewport={"width": 1400, "height": 860}, bypass_csp=True)
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(f"{srv.url}/")
                await page.evaluate("window.livefuse.ready")
                await page.add_script_tag(url="/static/probe.js")
                await page.evaluate("lfProbe.start({keepImages: true})")
                await page.select_option("#face", "biden.jpg")
                await page.click("#start")
                await wait_playing(page, "#remote")
                session = await page.evaluate("window.livefuse.state.session")
                await until_face_ready(srv, session, "biden.jpg")
                await until_changed(page, face_box)
                for counter, local, remote in await pairs(page, 3):
                    # The camera really is the clip (not Chromium's built-in test pattern)...
                    assert read_counter(local) == counter
                    assert diff(local, clip[counter], masks(face_box, local.shape)[1]) < 25
                    # ...and what comes back is that frame with the face swapped.
                    assert_swapped(remote, local, face_box)
                overlay = await page.text_content("#stats")
                assert overlay and "fps" in overlay and "detector" in overlay and "dropped" in overlay
                await page.screenshot(path=str(screenshot))
                # Chromium offers VP8 first; the server's preference, H.264, is what both send.
                assert (await srv.stats(session))["video"]["codec"] == "h264"

                viewer = await browser.new_page(bypass_csp=True)  # what OBS's Browser Source loads
                await viewer.goto(f"{srv.url}/view/{session}")
                await wait_playing(viewer, "#video")
                assert (await srv.stats(session))["viewers"] == 1
                await viewer.close()

                await page.click("#swap")  # off, on the running stream
                await wait_setting(srv, session, swap=False)
                await until_untouched(page, face_box)
                for _, local, remote in await pairs(page, 2):  # and it stays off
                    assert_untouched(remote, local, face_box)

                assert not errors, f"the page threw: {errors}"
                await page.click("#stop")
                deadline = time.monotonic() + 10
                while len(srv.manager):
                    assert time.monotonic() < deadline, "Stop must end the session on the server"
                    await asyncio.sleep(0.1)
            finally:
                await browser.close()

    run(scenario(), timeout=120)
    assert screenshot.stat().st_size > 10_000
