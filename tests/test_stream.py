"""A network stream input (HTTP on 127.0.0.1) read live through the pipeline."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from livefuse.io import open_source
from livefuse.io.sinks import MemorySink
from livefuse.io.sources import StreamSource
from livefuse.pipeline import Pipeline
from tests.helpers import NoFaces, Untouched
from tests.test_io import read_counter, write_video


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """A 60-frame counter clip served over HTTP on an ephemeral loopback port."""
    write_video(tmp_path / "clip.mp4", 60)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="test-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/clip.mp4"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_http_stream_is_read_live_in_order(served: str) -> None:
    source = open_source(served)
    assert isinstance(source, StreamSource)
    sink = MemorySink()
    stats = Pipeline(source, NoFaces(), Untouched(), [sink]).run()  # type: ignore[arg-type]
    assert stats.frames_out > 0
    counters = [read_counter(image) for image in sink.images]
    assert counters == sorted(counters), "frames come out in stream order"
    assert stats.frames_out + stats.dropped == stats.frames_in
