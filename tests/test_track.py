"""Tracking on the demo clip: how often the detector runs, how close tracked landmarks stay
to per-frame detection, stable ids, faces entering and leaving; smoothing of a still face."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

from livefuse.app import Engine
from livefuse.config import load_settings
from livefuse.face.mesh import roi_from_detection, roi_from_landmarks
from tests.helpers import frame_of

DETECT_EVERY = 10


@pytest.fixture(scope="module")
def engine(livefuse_home):
    with Engine(load_settings({"threads": 2, "home": str(livefuse_home), "detect_every": DETECT_EVERY}, env={})) as e:
        yield e


def reference_landmarks(engine: Engine, image: np.ndarray) -> list[np.ndarray]:
    """Per-frame ground truth: detect every face, then mesh it (two passes, no smoothing)."""
    det, mesh = engine.detector(), engine.landmarker()
    found = det.detect(image)
    out = []
    for box, kps in zip(found.boxes, found.kps):
        pts, _ = mesh.landmarks(image, roi_from_detection(box, kps))
        pts, _ = mesh.landmarks(image, roi_from_landmarks(pts))
        out.append(pts)
    return out


@pytest.fixture(scope="module")
def clip_run(engine, livefuse_home):
    """Track the whole clip once; keep per-frame results (not the images)."""
    from livefuse.samples import DemoClip

    clip = DemoClip.load(livefuse_home / "samples" / "demo.json")
    tracker = engine.tracker()
    cap = cv2.VideoCapture(str(clip.path))
    counts, ids, errors, calls = [], [], [], []
    index = 0
    while True:
        ok, image = cap.read()
        if not ok:
            break
        faces = tracker.analyze(frame_of(image, index))
        counts.append(len(faces))
        ids.append(tuple(faces.track_ids.tolist()) if len(faces) else ())
        calls.append(tracker.detector_calls)
        if index < clip.segment("one_face").stop and index % 3 == 0 and len(faces):
            ref = reference_landmarks(engine, image)
            width = np.ptp(ref[0][:, 0])
            err = np.linalg.norm(faces.landmarks[0, :, :2] - ref[0][:, :2], axis=1).mean()
            errors.append(err / width)
        index += 1
    cap.release()
    return clip, counts, ids, np.array(errors), np.array(calls)


def test_detector_runs_on_at_most_a_fifth_of_frames(clip_run):
    clip, _, _, _, calls = clip_run
    one = clip.segment("one_face")
    rate = (calls[one.stop - 1] - calls[one.start]) / (one.stop - one.start)
    assert rate <= 1 / 5, f"detector ran on {rate:.0%} of frames"


def test_tracked_landmarks_stay_close_to_per_frame_detection(clip_run):
    _, _, _, errors, _ = clip_run
    # Mean point distance, in face widths: 3 % is ~6 px on a 200 px face.
    assert np.median(errors) < 0.03, np.median(errors)
    assert np.percentile(errors, 95) < 0.06, np.percentile(errors, 95)


def test_one_face_keeps_one_id(clip_run):
    clip, counts, ids, _, _ = clip_run
    one = clip.segment("one_face")
    assert all(c == 1 for c in counts[one.start : one.stop])
    assert len(set(ids[one.start : one.stop])) == 1


def test_faces_entering_and_leaving_are_picked_up_and_dropped(clip_run):
    clip, counts, ids, _, _ = clip_run
    two, none = clip.segment("two_faces"), clip.segment("no_face")
    # The cut to two people: both tracked within one detector period.
    first = next(i for i in range(two.start, two.stop) if counts[i] == 2)
    assert first - two.start <= DETECT_EVERY
    assert all(c == 2 for c in counts[first : two.stop])
    assert len(set(ids[first : two.stop])) == 1, "ids stay stable while both faces are in view"
    # The cut to an empty scene: every track dropped within 2 frames, none comes back.
    gone = next(i for i in range(none.start, none.stop) if counts[i] == 0)
    assert gone - none.start <= 2
    assert all(c == 0 for c in counts[gone : none.stop])


def test_still_face_does_not_jitter(engine, livefuse_home):
    """Sensor noise on a still face: smoothed landmarks move far less than raw ones."""
    image = cv2.imread(str(livefuse_home / "samples" / "obama.jpg"))
    image = cv2.resize(image, None, fx=0.4, fy=0.4)
    rng = np.random.default_rng(0)
    runs = {}
    for smooth in (False, True):
        tracker = engine.tracker()
        tracker.config = type(tracker.config)(detect_every=DETECT_EVERY, smooth=smooth)
        pts = []
        for i in range(40):
            noisy = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
            pts.append(tracker.analyze(frame_of(noisy, i)).landmarks[0, :, :2])
        runs[smooth] = np.linalg.norm(np.diff(np.array(pts[10:]), axis=0), axis=2).mean()
    assert runs[True] < 0.5 * runs[False], runs


# -- live: the detector beside the tracker ----------------------------------------------------------

#: A detector slowed down this much makes its frames stand out from the tracker's few ms.
SLOW_DETECT_S = 0.3


class SlowDetector:
    """The real detector, plus a fixed delay: the frames that wait for it are obvious."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.started_at: list[float] = []
        self.done_at: list[float] = []

    @property
    def calls(self) -> int:
        return self.inner.calls

    def detect(self, image: np.ndarray):
        import time

        self.started_at.append(time.monotonic())
        time.sleep(SLOW_DETECT_S)
        found = self.inner.detect(image)
        self.done_at.append(time.monotonic())
        return found


def clip_frames(livefuse_home, start: int, count: int) -> list[np.ndarray]:
    from livefuse.samples import DemoClip

    clip = DemoClip.load(livefuse_home / "samples" / "demo.json")
    cap = cv2.VideoCapture(str(clip.path))
    cap.set(cv2.CAP_PROP_POS_FRAMES, start)
    frames = [cap.read()[1] for _ in range(count)]
    cap.release()
    return frames


def run_paced(
    tracker, frames: list[np.ndarray], fps: float = 30.0, starts: list[float] | None = None
) -> tuple[list[float], list[int]]:
    """Feed ``frames`` at ``fps`` as a camera would; each frame's analyze time (s) and face count
    (and, into ``starts``, when each frame's analysis began)."""
    import time

    times, counts = [], []
    next_at = time.monotonic()
    for index, image in enumerate(frames):
        t0 = time.monotonic()
        if starts is not None:
            starts.append(t0)
        counts.append(len(tracker.analyze(frame_of(image, index))))
        times.append(time.monotonic() - t0)
        next_at += 1 / fps
        time.sleep(max(0.0, next_at - time.monotonic()))
    return times, counts


def test_live_frames_never_wait_for_the_detector(engine, livefuse_home) -> None:
    import threading

    from livefuse.face.track import FaceTracker, TrackerConfig

    frames = clip_frames(livefuse_home, 30, 60)
    slow = SlowDetector(engine.detector())
    inline = FaceTracker(slow, engine.landmarker(), TrackerConfig(detect_every=DETECT_EVERY))
    inline_times, _ = run_paced(inline, frames[:12])
    assert max(inline_times) >= SLOW_DETECT_S  # inline, the detector's frames wait for it

    before = {t.ident for t in threading.enumerate() if t.name == "livefuse-detect"}
    detector = SlowDetector(engine.detector())
    live = FaceTracker(detector, engine.landmarker(), TrackerConfig(detect_every=DETECT_EVERY, background=True))
    starts: list[float] = []
    times, counts = run_paced(live, frames, starts=starts)
    assert max(times) < SLOW_DETECT_S, max(times)  # no frame waited for a detection
    # The face appears on the first frame analysed after the first detection came back, then
    # stays; or up to two frames later: the time is taken as the detector returns, before its
    # thread (in the machine's idle time) hands the faces over, which on a loaded machine can
    # wait a frame or two. Far sooner than the next detection, DETECT_EVERY frames on.
    first = counts.index(1)
    back = next(i for i, t in enumerate(starts) if t > detector.done_at[0])
    assert back <= first <= back + 2, (counts, starts)
    assert counts[first:].count(1) >= 0.95 * len(counts[first:]), counts
    assert live.detector_calls >= 3  # it kept re-detecting at its own pace
    live.close()  # its detector thread ends
    assert not [t for t in threading.enumerate() if t.name == "livefuse-detect" and t.ident not in before]


def test_live_tracker_finds_a_face_that_enters(engine, livefuse_home) -> None:
    from livefuse.face.track import FaceTracker, TrackerConfig

    clip = clip_frames(livefuse_home, 385, 20)  # two faces, then the face-free segment
    blank = [np.zeros_like(clip[0])] * 10
    entering = clip_frames(livefuse_home, 100, 60)
    detector = SlowDetector(engine.detector())
    tracker = FaceTracker(detector, engine.landmarker(), TrackerConfig(detect_every=5, background=True))
    starts: list[float] = []
    _, counts = run_paced(tracker, blank + entering, starts=starts)
    assert counts[:10] == [0] * 10
    # The face is found at the latest by the first detection that started after it entered
    # (one frame of margin for the thread's wake-up), from the first frame analysed after that
    # detection came back; the detector runs again as soon as it is free (due every 5 frames).
    first_after = next(k for k, t in enumerate(detector.started_at) if t > starts[11])
    found = next(i for i, t in enumerate(starts) if t > detector.done_at[first_after])
    assert 1 in counts and counts.index(1) <= found and counts[found] == 1, (counts, found)
    tracker.close()
    assert clip  # the clip's end was readable (the segments this test relies on exist)


def test_file_mode_gives_the_same_faces_every_time(engine, livefuse_home) -> None:
    frames = clip_frames(livefuse_home, 280, 40)  # one face, then two: detections and new tracks

    def landmarks() -> list[np.ndarray]:
        tracker = engine.tracker()
        return [tracker.analyze(frame_of(image, i)).landmarks for i, image in enumerate(frames)]

    first, second = landmarks(), landmarks()
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def _scene(portrait: np.ndarray, face_w: float, portrait_face_w: float) -> np.ndarray:
    """A 1280x720 frame with ``portrait`` scaled so its face is ``face_w`` px wide."""
    s = face_w / portrait_face_w
    small = cv2.resize(portrait, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)[:600, :1000]
    frame = np.full((720, 1280, 3), 120, np.uint8)
    frame[60 : 60 + small.shape[0], 200 : 200 + small.shape[1]] = small
    return frame


def test_live_detector_finds_big_faces_every_pass_and_small_ones_on_its_fine_passes(engine, livefuse_home) -> None:
    from livefuse.app import LIVE_COARSE_SIZE, LIVE_FINE_EVERY
    from livefuse.face.detect import TieredDetector

    live = engine.tracker(live=True)
    try:
        tiers = live.detector
        assert isinstance(tiers, TieredDetector)
        assert (tiers.coarse.config.size, tiers.fine_every) == (LIVE_COARSE_SIZE, LIVE_FINE_EVERY)
        portrait = cv2.imread(str(livefuse_home / "samples" / "obama.jpg"))
        width = float(np.ptp(engine.detector().detect(portrait).boxes[0, [0, 2]]))
        big, small = _scene(portrait, 200, width), _scene(portrait, 40, width)
        # A face 40 px wide in a 1280-px frame is below the coarse input's reach (80 px).
        assert 40 < tiers.reliable_share() * 1280 <= 200
        found = [len(tiers.detect(small)) for _ in range(2 * LIVE_FINE_EVERY)]
        assert found == ([1] + [0] * (LIVE_FINE_EVERY - 1)) * 2
        assert all(len(tiers.detect(big)) == 1 for _ in range(2 * LIVE_FINE_EVERY))
        assert tiers.calls == 4 * LIVE_FINE_EVERY  # both tiers count as detector runs
    finally:
        live.close()
    assert not isinstance(engine.tracker().detector, TieredDetector)  # files: full size always


def test_coarse_passes_do_not_end_a_small_face_they_cannot_see(engine, livefuse_home) -> None:
    from livefuse.face.track import FaceTracker, TrackerConfig
    from livefuse.faces import Faces

    class Blind:
        """A detector pass that sees nothing (a coarse pass, for a small face)."""

        calls = 0

        def detect(self, image: np.ndarray) -> Faces:
            return Faces.empty()

    image = clip_frames(livefuse_home, 30, 1)[0]
    faces = engine.tracker().analyze(frame_of(image, 0))
    share = float(np.ptp(faces.landmarks[0, :, 0])) / max(image.shape[:2])
    for miss_from, survives in ((share * 1.1, True), (share * 0.9, False)):
        tracker = FaceTracker(Blind(), engine.landmarker(), TrackerConfig(miss_from=miss_from, max_missed=3))
        tracker._start(image, faces.boxes[0], faces.kps[0])
        for _ in range(5):
            tracker._reconcile(image, Faces.empty())
        assert bool(tracker.tracks) is survives


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="threads have their own scheduling on Linux only")
def test_detector_thread_takes_idle_time_and_falls_back_to_nice_when_starved() -> None:
    import os
    import threading

    from livefuse.face.background import DETECTOR_NICENESS, DetectorPriority

    seen: list[tuple[int, int]] = []

    def policy() -> tuple[int, int]:
        tid = threading.get_native_id()
        return os.sched_getscheduler(tid), os.getpriority(os.PRIO_PROCESS, tid)

    def run() -> None:
        priority = DetectorPriority()
        priority.start()
        seen.append(policy())
        priority.after_pass(wall_s=0.050, cpu_s=0.045)  # unhindered: stays on idle time
        seen.append(policy())
        priority.after_pass(wall_s=0.400, cpu_s=0.045)  # waited for the CPU: nice instead
        seen.append(policy())
        priority.after_pass(wall_s=0.050, cpu_s=0.045)  # idle time again
        seen.append(policy())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert [p for p, _ in seen] == [os.SCHED_IDLE, os.SCHED_IDLE, os.SCHED_OTHER, os.SCHED_IDLE]
    assert seen[2][1] >= DETECTOR_NICENESS
    assert policy()[0] == os.SCHED_OTHER  # the caller's own thread untouched
