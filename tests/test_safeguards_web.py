"""``livefuse serve`` with the safeguards: the label on every session's stream, and each
session in the audit log (client address and token id)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("aiortc", reason="the webrtc extra is not installed")

from livefuse.app import Engine  # noqa: E402
from livefuse.audit import audit_log  # noqa: E402
from livefuse.config import Settings, with_options  # noqa: E402
from livefuse.models.files import sha256_file  # noqa: E402
from livefuse.provenance import DEFAULT_LABEL  # noqa: E402
from livefuse.provenance.label import render_label  # noqa: E402
from tests.test_web import (  # noqa: E402, F401 - fixtures are found by name
    ClipTrack,
    Image,
    Receiver,
    clip,
    engine,
    loopback_ice,
    new_pc,
    run,
    serving,
    settings,
)


def test_forced_label_reaches_the_page_and_the_session_is_audited(  # test_web's fixtures, by name
    loopback_ice: None,  # noqa: F811
    engine: Engine,  # noqa: F811
    settings: Settings,  # noqa: F811
    clip: list[Image],  # noqa: F811
    tmp_path: Path,
) -> None:
    labelled = with_options(settings, {"label": DEFAULT_LABEL, "state_dir": str(tmp_path)})  # as --force-label
    token = "t0ken-for-the-test"

    async def scenario() -> np.ndarray:
        async with serving(engine, labelled, token=token) as srv:
            pc, received = new_pc(), Receiver()
            pc.on("track", received.attach)
            pc.addTrack(ClipTrack(clip))
            await srv.offer(pc)
            await received.wait(10)
            image = received.frames[-1].image
            await received.close()
            await pc.close()
            return image

    image = run(scenario())
    patch = render_label(DEFAULT_LABEL, 480)
    margin = 480 // 60
    corner = image[480 - margin - patch.shape[0] : 480 - margin, margin : margin + patch.shape[1]].astype(int)
    assert np.abs(corner - patch).mean() < 20, "the returned stream carries the label (through VP8)"

    (row,) = audit_log(labelled).rows()
    entry = row.record
    assert entry["kind"] == "session" and entry["who"] == "client 127.0.0.1" and entry["outcome"] == "opened"
    assert entry["token_id"] == hashlib.sha256(token.encode()).hexdigest()[:12]
    assert token not in str(entry)
    default_face = Path(settings.runtime.home or "") / "samples" / "biden.jpg"
    assert entry["source_sha256"] == sha256_file(default_face)
    assert audit_log(labelled).verify().ok
