"""Job service throughput and overhead: the embedded pool vs Redis with 1 and 2 workers.

Each mode gets a fresh ``livefuse serve`` (and ``livefuse worker`` processes and a private
redis-server on a unix socket for the Redis modes), all on this machine:

- **overhead**: 5 jobs one after another, each measured from its submission (``created``)
  to its first output frame (``first_frame``): queueing, pickup, stage building, opening the
  files. Median.
- **throughput**: 10 jobs submitted at once; jobs per minute = 10 / (last finished − first
  created).

Every job is the same short clip (30 frames of the sample clip at 480x270, one face, mesh
swapper). Prints a Markdown table and writes benchmarks/out/jobs-<date>.json.

Usage: python benchmarks/bench_jobs.py [--jobs 10] [--frames 30]
Needs redis-server (apt-get install redis-server) and the jobs extra.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import benchinfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from jobs_helpers import make_clip, queue_mode, redis_server, serving, wait_state  # noqa: E402

from livefuse.jobs.client import JobsClient  # noqa: E402
from livefuse.models.files import default_home  # noqa: E402
from livefuse.models.install import ModelInstaller  # noqa: E402
from livefuse.models.store import ModelStore  # noqa: E402
from livefuse.samples import SampleStore, make_demo_clip  # noqa: E402

FINAL = {"succeeded", "failed", "cancelled"}


@contextmanager
def mode(name: str, home: Path, tmp: Path) -> Iterator[JobsClient]:
    """A server for ``name``: embedded, redis-1 or redis-2."""
    if name == "embedded":
        with serving(home, tmp) as (_proc, client):
            yield client
        return
    with redis_server(tmp) as url, queue_mode(home, tmp, url, int(name.split("-")[1])) as (_workers, client, _dir):
        yield client


def measure(client: JobsClient, face: Path, clip: Path, jobs: int) -> dict[str, Any]:
    client.submit(face, clip, {})  # warm-up: first job pays for lazy imports
    wait_state(client, client.list(limit=1)["jobs"][0]["id"], FINAL, timeout=300)
    overheads = []
    for _ in range(5):
        job = wait_state(client, client.submit(face, clip, {})["id"], FINAL, timeout=300)
        assert job["state"] == "succeeded", job
        overheads.append(job["first_frame"] - job["created"])
    ids = [client.submit(face, clip, {})["id"] for _ in range(jobs)]
    finals = [wait_state(client, i, FINAL, timeout=600) for i in ids]
    assert all(f["state"] == "succeeded" for f in finals), finals
    span = max(f["finished"] for f in finals) - min(f["created"] for f in finals)
    return {
        "overhead_ms_median": round(1000 * statistics.median(overheads), 1),
        "overhead_ms": [round(1000 * o, 1) for o in overheads],
        "jobs_per_minute": round(60 * jobs / span, 1),
        "job_fps_median": round(statistics.median(f["fps"] for f in finals), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--modes", default="embedded,redis-1,redis-2")
    args = parser.parse_args()
    home = Path(os.environ.get("LIVEFUSE_HOME") or default_home())
    ModelInstaller(ModelStore(home)).pull()
    samples = SampleStore(home)
    samples.pull()
    demo = make_demo_clip(samples)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp_dir:
        tmp = Path(tmp_dir)
        clip = make_clip(demo.path, tmp / "clip.mp4", args.frames)
        for name in args.modes.split(","):
            run_dir = tmp / name
            run_dir.mkdir()
            t0 = time.monotonic()
            with mode(name, home, run_dir) as client:
                results[name] = measure(client, samples.path("biden.jpg"), clip, args.jobs)
            results[name]["wall_s"] = round(time.monotonic() - t0, 1)
            print(name, results[name], flush=True)
    base = results.get("embedded", {}).get("jobs_per_minute")
    print(f"\n{args.jobs} jobs of {args.frames} frames (480x270, mesh swapper)\n")
    print("| mode | jobs/min | × embedded | queued → first frame, median ms | job fps (median) |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        ratio = f"{r['jobs_per_minute'] / base:.2f}" if base else "-"
        print(f"| {name} | {r['jobs_per_minute']} | {ratio} | {r['overhead_ms_median']} | {r['job_fps_median']} |")
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    path = out / f"jobs-{time.strftime('%Y%m%d-%H%M%S')}.json"
    import onnxruntime

    path.write_text(
        json.dumps(
            {
                "machine": benchinfo.describe(onnxruntime=onnxruntime.__version__),
                "args": vars(args),
                "results": results,
            },
            indent=2,
        )
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
