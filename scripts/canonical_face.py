#!/usr/bin/env python3
"""Write livefuse/face/canonical.py from MediaPipe's canonical_face_model.obj.

The canonical face model (Apache-2.0, MediaPipe's face_geometry module) is the 3-D face the
468-point mesh is defined on: its vertices give the mesh's left/right symmetry, its faces the
triangles. Usage: python scripts/canonical_face.py canonical_face_model.obj
"""

from __future__ import annotations

import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "livefuse" / "face" / "canonical.py"

HEADER = '''"""MediaPipe's canonical face model (Apache-2.0, from its face_geometry module's
canonical_face_model.obj), written by scripts/canonical_face.py: the 3-D face, in
centimetres with +y up and +z towards the camera, that the 468-point mesh is defined on."""

from __future__ import annotations

import numpy as np

'''


def main(path: str) -> None:
    verts: list[list[float]] = []
    faces: list[list[int]] = []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "v":
            verts.append([float(x) for x in parts[1:4]])
        elif parts and parts[0] == "f":
            # 1-based "v/vt" entries; the winding is reversed so a triangle facing the camera
            # runs clockwise in image coordinates (y down) — positive signed area.
            faces.append([int(p.split("/")[0]) - 1 for p in parts[1:4]][::-1])
    if len(verts) != 468:
        raise SystemExit(f"{path}: expected 468 vertices, found {len(verts)}")
    rows_v = "\n".join(f"    [{x:.6f}, {y:.6f}, {z:.6f}]," for x, y, z in verts)
    rows_f = "\n".join(
        "    " + " ".join(f"[{a}, {b}, {c}]," for a, b, c in faces[i : i + 6]) for i in range(0, len(faces), 6)
    )
    text = (
        HEADER
        + "#: (468, 3) vertex positions.\nVERTICES = np.array([\n"
        + rows_v
        + "\n], np.float32)  # fmt: skip\n\n"
        + "#: (898, 3) triangles, indices into VERTICES, front faces clockwise in image coordinates.\n"
        + "TRIANGLES = np.array([\n"
        + rows_f
        + "\n], np.int32)  # fmt: skip\n"
    )
    OUT.write_text(text)
    print(f"wrote {OUT}: {len(verts)} vertices, {len(faces)} triangles")


if __name__ == "__main__":
    main(sys.argv[1])
