"""What the responsible-use safeguards cost: the live label per frame, signing and verifying
content credentials per file, and one audit-log append.

Side by side in one run: the label's precomputed-patch copy against drawing the same label
each frame (cv2.rectangle + putText) and against one full-frame copy; signing against writing
the same file. Prints a JSON report (``--json PATH`` also writes it).

    python benchmarks/bench_safeguards.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from functools import partial
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchinfo import describe  # noqa: E402

from livefuse.audit import AuditLog  # noqa: E402
from livefuse.frame import Frame  # noqa: E402
from livefuse.io.sinks import VideoFileSink  # noqa: E402
from livefuse.pipeline.stages import SourceInfo  # noqa: E402
from livefuse.provenance import DEFAULT_LABEL  # noqa: E402
from livefuse.provenance.certs import make_self_signed  # noqa: E402
from livefuse.provenance.credentials import OutputFacts, sign_output, verify_file  # noqa: E402
from livefuse.provenance.label import LabelSink, render_label  # noqa: E402

SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}


def median_ms(fn: Callable[[], object], repeat: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def picture(width: int, height: int, seed: int = 0, noise: int = 20) -> np.ndarray:
    """A textured frame (noise over gradients) so encoders and signers see realistic sizes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.dstack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)])
    return np.clip(base + rng.integers(-noise, noise + 1, base.shape), 0, 255).astype(np.uint8)


def label_figures(width: int, height: int, repeat: int) -> dict[str, float]:
    """One frame size: the label's patch copy beside drawing it each frame and a frame copy."""
    image, spare = picture(width, height), picture(width, height, 1)
    frame = Frame(index=0, pts=0, time_base=Fraction(1, 30), capture_ns=0, image=image)
    sink = LabelSink()
    sink.open(SourceInfo(width, height, 30.0, live=True, time_base=Fraction(1, 90000)))
    patch = render_label(DEFAULT_LABEL, height)
    scale = cv2.getFontScaleFromHeight(cv2.FONT_HERSHEY_SIMPLEX, max(11, round(height * 0.03)), 1)
    box = ((8, height - 8 - patch.shape[0]), (8 + patch.shape[1], height - 8))

    def draw_each_frame() -> None:  # what a naive overlay does: render text on every frame
        cv2.rectangle(image, *box, (24, 24, 24), -1)
        cv2.putText(
            image, DEFAULT_LABEL, (16, height - 16), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 2, cv2.LINE_AA
        )

    return {
        "label_patch_ms": median_ms(lambda: sink.send(frame), repeat),
        "draw_each_frame_ms": median_ms(draw_each_frame, repeat),
        "full_frame_copy_ms": median_ms(lambda: np.copyto(spare, image), repeat),
        "render_once_ms": median_ms(lambda: render_label(DEFAULT_LABEL, height), 50),
        "patch_px": int(patch.shape[0] * patch.shape[1]),
        "frame_share": patch.shape[0] * patch.shape[1] / (width * height),
    }


def bench_label(repeat: int) -> dict[str, dict[str, float]]:
    return {name: label_figures(w, h, repeat) for name, (w, h) in SIZES.items()}


def write_mp4(path: Path, frames: int, size: tuple[int, int]) -> None:
    w, h = size
    images = [picture(w, h, i, noise=6) for i in range(8)]  # some grain: a camera-like bit rate
    with VideoFileSink(path) as sink:
        sink.open(SourceInfo(w, h, 30.0, live=False, time_base=Fraction(1, 30)))
        for i in range(frames):
            sink.send(Frame(index=i, pts=i, time_base=Fraction(1, 30), capture_ns=0, image=images[i % 8]))


def bench_signing(directory: Path, repeat: int) -> dict[str, dict[str, float]]:
    key, facts = make_self_signed("benchmark"), OutputFacts("inswapper_128")
    w, h = SIZES["720p"]
    still, large = picture(w, h), picture(*SIZES["1080p"])  # made once: only the writing is timed
    makers: dict[str, Callable[[Path], None]] = {
        "JPEG 720p (q95)": lambda p: cv2.imwrite(str(p), still, [cv2.IMWRITE_JPEG_QUALITY, 95]),
        "PNG 1080p": lambda p: cv2.imwrite(str(p), large),
        "MP4 720p H.264, 3 s": lambda p: write_mp4(p, 90, (w, h)),
    }
    results = {}
    for name, make in makers.items():
        path = directory / ("f.jpg" if "JPEG" in name else "f.png" if "PNG" in name else "f.mp4")
        write_ms = median_ms(partial(make, path), 1 if "MP4" in name else repeat, warmup=1)
        sign_times, verify_times = [], []
        for _ in range(3 if "MP4" in name else repeat):  # MP4s take seconds to encode
            make(path)
            start = time.perf_counter()
            sign_output(path, facts, key)
            sign_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            assert verify_file(path).state == "valid"
            verify_times.append(time.perf_counter() - start)
        results[name] = {
            "file_mb": path.stat().st_size / 1e6,
            "write_ms": write_ms,
            "sign_ms": statistics.median(sign_times) * 1000,
            "verify_ms": statistics.median(verify_times) * 1000,
        }
    return results


def bench_audit(directory: Path, repeat: int) -> dict[str, float]:
    audit = AuditLog(directory / "audit.sqlite3")
    record = {"kind": "run", "who": "local user bench", "source_sha256": "0" * 64, "options": {"opacity": 0.9}}
    append = median_ms(lambda: audit.append(record), repeat)
    verify = median_ms(audit.verify, 5)
    return {"append_ms": append, "verify_ms": verify, "rows_at_verify": audit.verify().rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=500, help="label calls timed per size (500)")
    parser.add_argument("--sign-repeat", type=int, default=7, help="files signed per format (7)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    import c2pa

    with tempfile.TemporaryDirectory() as tmp:
        report = {
            "machine": describe(
                opencv=cv2.__version__, c2pa=c2pa.__version__ if hasattr(c2pa, "__version__") else c2pa.sdk_version()
            ),
            "label": bench_label(args.repeat),
            "signing": bench_signing(Path(tmp), args.sign_repeat),
            "audit": bench_audit(Path(tmp), 200),
        }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
