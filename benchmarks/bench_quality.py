"""How the built-in mesh swap looks, in figures and in one picture.

Needs the ``quality`` extra (``pip install -e ".[quality]"``): dlib's ResNet face embedding
(``dlib-bin`` + ``face-recognition-models``), independent of every model livefuse runs.

Cases: each face of the group photo ``t1.jpg`` with ``obama.jpg`` and with ``biden.jpg`` as the
source, and obama↔biden both ways. Per case:

- identity: dlib embedding distance of the result to the source photo's face and to the
  original target face (dlib calls < 0.6 the same person);
- streaks: share of the face's pixels in the result brighter (luma) than both the source's
  and the target's skin (their 98th percentiles + 8 levels) — the original's own share is
  reported beside it; and the same outside the mouth opening (the target's inner-lip outline
  grown by 8 % of the face's width, which holds its teeth wherever the shape transfer moved
  them): teeth are brighter than skin by nature, and count in the first figure;
- colour step: median Lab ΔE between patches just inside and just outside the blend mask's
  soft edge, in the result against the original image at the same places;
- jitter (demo clip, one face): mean frame-to-frame change of the aligned face in the
  result against the original's.

A contact sheet (original | result per case) goes to ``benchmarks/quality/``.
Usage: python benchmarks/bench_quality.py [--label after] [--frames 90] [--sheet PATH]
       [--shape-transfer 0 0.8 ...]  (several strengths: measured one after the other in one run;
       the contact sheet shows the last) [--ceiling]

``--ceiling`` also measures the most the method can give the source, with no regard for how
it looks: no relighting, a hard edge (0.5 % of the face's width), the full shape transfer. Its
identity figure bounds what tuning the blend, the light or the shape can reach.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from livefuse.app import Engine  # noqa: E402
from livefuse.config import load_settings  # noqa: E402
from livefuse.face.topology import FACE_OVAL, MOUTH_INNER  # noqa: E402
from livefuse.faces import Faces  # noqa: E402
from livefuse.models.files import default_home  # noqa: E402
from livefuse.swap.mesh import SHAPE_TRANSFER, MeshSwapConfig, MeshSwapper  # noqa: E402
from tests.helpers import aligned, frame_of  # noqa: E402

HERE = Path(__file__).parent
TILE = 150
#: The most of the source the mesh swap can show: no relighting, a hard edge, the full shape.
CEILING = MeshSwapConfig(colour=False, feather=0.005, shape_transfer=1.0)


@dataclass
class Case:
    name: str
    to_source: float
    to_target: float
    streaks: float
    streaks_original: float
    streaks_skin: float
    "Outside the mouth opening."
    streaks_skin_original: float
    step: float
    step_original: float


class Embedder:
    """dlib's 68-point shape predictor and ResNet face descriptor, on a given face box."""

    def __init__(self) -> None:
        try:
            import dlib
            import face_recognition_models as frm
        except ImportError as e:
            raise SystemExit(f"{e}: install the quality extra: pip install -e '.[quality]'") from e
        self.dlib = dlib
        self.shape = dlib.shape_predictor(frm.pose_predictor_model_location())
        self.net = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
        self.detect = dlib.get_frontal_face_detector()

    def __call__(self, image: np.ndarray, points: np.ndarray) -> np.ndarray:
        """The 128-d descriptor of the face whose mesh ``points`` are given (box from them,
        so both images of a case are measured on the same box)."""
        x0, y0 = points[:, :2].min(0)
        x1, y1 = points[:, :2].max(0)
        rect = self.dlib.rectangle(int(x0), int(y0 + 0.12 * (y1 - y0)), int(x1), int(y1))
        rgb = np.ascontiguousarray(image[:, :, ::-1])
        return np.array(self.net.compute_face_descriptor(rgb, self.shape(rgb, rect), 1))


def inner_mask(shape: tuple[int, ...], points: np.ndarray, scale: float) -> np.ndarray:
    """The face outline pulled ``scale`` towards its centre, filled (bool)."""
    oval = points[FACE_OVAL, :2]
    c = oval.mean(0)
    m = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(m, [np.round(c + scale * (oval - c)).astype(np.int32)], 1)
    return m.astype(bool)


def luma(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)


def skin_ceiling(image: np.ndarray, points: np.ndarray) -> float:
    return float(np.percentile(luma(image)[inner_mask(image.shape, points, 0.85)], 98)) + 8


def streak_share(image: np.ndarray, points: np.ndarray, ceiling: float, teeth: bool = True) -> float:
    """Share of the face's pixels brighter than ``ceiling``; ``teeth`` False: the mouth
    opening (grown to where the shape transfer may have moved it) does not count."""
    face = inner_mask(image.shape, points, 0.93)
    if not teeth:
        mouth = np.zeros(image.shape[:2], np.uint8)
        cv2.fillPoly(mouth, [np.round(points[MOUTH_INNER, :2]).astype(np.int32)], 1)
        grow = max(1, int(0.08 * np.ptp(points[:, 0])))
        face &= cv2.dilate(mouth, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)) == 0
    return float((luma(image)[face] > ceiling).mean())


def colour_step(image: np.ndarray, points: np.ndarray) -> float:
    """Median Lab ΔE between 5×5 patches at 0.80 and 0.99 of the outline (inside and outside
    the mask's soft edge), over the outline's points on the cheeks and jaw."""
    lab = cv2.cvtColor(cv2.blur(image, (5, 5)), cv2.COLOR_BGR2LAB).astype(np.float32)
    oval = points[FACE_OVAL, :2]
    c = oval.mean(0)
    h, w = image.shape[:2]
    steps = []
    for p in oval[6:30]:  # cheeks and jaw: skin on both sides of the edge (not hair at the top)
        a = np.clip(np.round(c + 0.80 * (p - c)), 0, [w - 1, h - 1]).astype(int)
        b = np.clip(np.round(c + 0.99 * (p - c)), 0, [w - 1, h - 1]).astype(int)
        steps.append(float(np.linalg.norm(lab[a[1], a[0]] - lab[b[1], b[0]])))
    return float(np.median(steps))


def tile(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    lo, hi = points[:, :2].min(0), points[:, :2].max(0)
    c, r = (lo + hi) / 2, (hi - lo).max() * 0.65
    m = np.array(
        [[TILE / (2 * r), 0, TILE / 2 - c[0] * TILE / (2 * r)], [0, TILE / (2 * r), TILE / 2 - c[1] * TILE / (2 * r)]]
    )
    return cv2.warpAffine(image, m, (TILE, TILE), flags=cv2.INTER_AREA, borderValue=(0, 0, 0))


def cases(engine: Engine, samples: Path, mesh: MeshSwapConfig, embed: Embedder) -> tuple[list[Case], list[np.ndarray]]:
    tracker = engine.tracker()
    sources = {n: engine.source_face(samples / n) for n in ("obama.jpg", "biden.jpg")}
    targets = {n: cv2.imread(str(samples / n)) for n in ("t1.jpg", "obama.jpg", "biden.jpg")}
    analysed: dict[str, Faces] = {}
    for n, img in targets.items():
        tracker.reset()
        analysed[n] = tracker.analyze(frame_of(img))
    plan = [(s, "t1.jpg") for s in sources] + [("obama.jpg", "biden.jpg"), ("biden.jpg", "obama.jpg")]
    out: list[Case] = []
    tiles = []
    for src_name, tgt_name in plan:
        photo, src = sources[src_name]
        src_pts = src.points + (*src.origin, 0)
        src_emb = embed(photo, src_pts)
        src_ceiling = skin_ceiling(photo, src_pts)
        image, faces = targets[tgt_name], analysed[tgt_name]
        result = image.copy()
        MeshSwapper(src, mesh).swap(result, faces)
        assert faces.landmarks is not None
        order = np.argsort(faces.landmarks[:, :, 0].mean(1))
        for k, i in enumerate(order):
            pts = faces.landmarks[i]
            ceiling = max(src_ceiling, skin_ceiling(image, pts))
            name = f"{src_name[:-4]}→{tgt_name[:-4]}" + (f"#{k}" if len(faces) > 1 else "")
            out.append(
                Case(
                    name,
                    float(np.linalg.norm(embed(result, pts) - src_emb)),
                    float(np.linalg.norm(embed(result, pts) - embed(image, pts))),
                    streak_share(result, pts, ceiling),
                    streak_share(image, pts, ceiling),
                    streak_share(result, pts, ceiling, teeth=False),
                    streak_share(image, pts, ceiling, teeth=False),
                    colour_step(result, pts),
                    colour_step(image, pts),
                )
            )
            tiles.append(np.hstack([tile(image, pts), tile(result, pts)]))
    return out, tiles


def jitter(engine: Engine, samples: Path, mesh: MeshSwapConfig, frames: int) -> tuple[float, float]:
    """Mean frame-to-frame change of the aligned face: (result, original)."""
    _, src = engine.source_face(samples / "obama.jpg")
    swapper = MeshSwapper(src, mesh)
    tracker = engine.tracker()
    cap = cv2.VideoCapture(str(samples / "demo.mp4"))
    prev: tuple[np.ndarray, np.ndarray] | None = None
    d_res, d_org = [], []
    for index in range(frames):
        ok, image = cap.read()
        if not ok:
            break
        faces = tracker.analyze(frame_of(image, index))
        if len(faces) != 1:
            prev = None
            continue
        result = image.copy()
        swapper.swap(result, faces)
        kps = faces.kps[0]
        now = (aligned(result, kps), aligned(image, kps))
        if prev is not None:
            d_res.append(float(np.abs(now[0] - prev[0])[16:96, 16:96].mean()))
            d_org.append(float(np.abs(now[1] - prev[1])[16:96, 16:96].mean()))
        prev = now
    cap.release()
    return float(np.mean(d_res)), float(np.mean(d_org))


def sheet(tiles: list[np.ndarray], path: Path, per_row: int = 4) -> None:
    blank = np.zeros_like(tiles[0])
    rows = [tiles[i : i + per_row] for i in range(0, len(tiles), per_row)]
    rows[-1] = rows[-1] + [blank] * (per_row - len(rows[-1]))
    grid = np.vstack([np.hstack([np.pad(t, ((2, 2), (2, 2), (0, 0))) for t in r]) for r in rows])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    cv2.imwrite(str(tmp), grid, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", default="current")
    ap.add_argument("--frames", type=int, default=90, help="demo clip frames for the jitter figure")
    ap.add_argument("--sheet", type=Path, default=HERE / "quality" / "contact_sheet.png")
    ap.add_argument("--shape-transfer", type=float, nargs="+", default=[SHAPE_TRANSFER], metavar="S")
    ap.add_argument("--ceiling", action="store_true", help="also measure the source-heaviest setting (see above)")
    args = ap.parse_args()
    samples = default_home() / "samples"
    embed = Embedder()
    with Engine(load_settings({"threads": 2}, env={})) as engine:
        for strength in args.shape_transfer:
            mesh = MeshSwapConfig(shape_transfer=strength)
            results, tiles = cases(engine, samples, mesh, embed)
            j_res, j_org = jitter(engine, samples, mesh, args.frames)
            report(results, (j_res, j_org), f"{args.label}_s{strength:g}")
            sheet(tiles, HERE / "out" / f"sheet_{args.label}_s{strength:g}.png")
        if args.ceiling:
            most, most_tiles = cases(engine, samples, CEILING, embed)
            report(most, jitter(engine, samples, CEILING, args.frames), f"{args.label}_ceiling")
            sheet(most_tiles, HERE / "out" / f"sheet_{args.label}_ceiling.png")
    sheet(tiles, args.sheet)
    print(f"contact sheet: {args.sheet} ({args.sheet.stat().st_size / 1e6:.2f} MB)")


def report(results: list[Case], jitters: tuple[float, float], label: str) -> None:
    """Print the figures as a Markdown table and a summary; keep them in ``out/``."""
    j_res, j_org = jitters
    print(f"## {label}")
    print("| case | dist→source | dist→target | streaks % (orig) | outside the mouth (orig) | colour step ΔE (orig) |")
    print("|---|---|---|---|---|---|")
    for c in results:
        print(
            f"| {c.name} | {c.to_source:.3f} | {c.to_target:.3f} "
            f"| {100 * c.streaks:.2f} ({100 * c.streaks_original:.2f}) "
            f"| {100 * c.streaks_skin:.2f} ({100 * c.streaks_skin_original:.2f}) "
            f"| {c.step:.1f} ({c.step_original:.1f}) |"
        )
    ratios = [c.step / max(c.step_original, 1.0) for c in results]
    summary = {
        "label": label,
        "mean_to_source": float(np.mean([c.to_source for c in results])),
        "nearer_source": sum(c.to_source < c.to_target for c in results),
        "cases": len(results),
        "max_streaks_pct": 100 * max(c.streaks for c in results),
        "max_streaks_outside_mouth_pct": 100 * max(c.streaks_skin for c in results),
        "median_step_ratio": float(np.median(ratios)),
        "max_step_ratio": float(max(ratios)),
        "jitter_ratio": j_res / j_org,
        "jitter": [j_res, j_org],
    }
    print(json.dumps(summary, indent=1))
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / f"quality_{label}.json").write_text(
        json.dumps({"summary": summary, "cases": [asdict(c) for c in results]}, indent=1)
    )


if __name__ == "__main__":
    main()
