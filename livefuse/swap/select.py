"""Which faces get which source: ``one``, ``many`` or ``map`` (per-identity sources)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from livefuse.faces import Faces
from livefuse.swap.neural.models import Recognizer

#: Face modes, as the CLI offers them.
FACE_MODES = ("one", "many", "map")


@dataclass(frozen=True)
class Mapping:
    """``map`` mode: faces whose identity matches ``references[i]`` get source ``i``."""

    references: np.ndarray
    "(k, 512) unit-length embeddings of the reference faces."
    threshold: float = 0.35
    "Cosine similarity a face needs with its best reference to be swapped at all."


@dataclass
class _Identity:
    embedding: np.ndarray
    seen_at: int


@dataclass
class FaceSelector:
    """Picks the faces to swap in each frame and the source index for each.

    ``one`` swaps the largest face (ties broken by closeness to the frame centre), and
    stays on it while it remains among the largest, so the swap does not jump between
    people. ``map`` needs target identities: they are computed when a track starts and
    refreshed every ``refresh_every`` frames, not on every frame.
    """

    mode: str = "many"
    mapping: Mapping | None = None
    refresh_every: int = 90
    frames: int = 0
    _chosen: int | None = None
    _identities: dict[int, _Identity] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in FACE_MODES:
            raise ValueError(f"face mode must be one of {', '.join(FACE_MODES)}, got {self.mode!r}")
        if self.mode == "map" and self.mapping is None:
            raise ValueError("face mode 'map' needs reference faces (--map REF.jpg=SRC.jpg)")

    def needs_identity(self, faces: Faces) -> list[int]:
        """Indices of faces whose identity must be (re)computed this frame (``map`` only)."""
        if self.mode != "map" or faces.track_ids is None:
            return list(range(len(faces))) if self.mode == "map" else []
        due = []
        for i, tid in enumerate(faces.track_ids.tolist()):
            known = self._identities.get(tid)
            if known is None or self.frames - known.seen_at >= self.refresh_every:
                due.append(i)
        return due

    def select(self, faces: Faces, shape: tuple[int, ...], embeddings: dict[int, np.ndarray]) -> list[tuple[int, int]]:
        """(face index, source index) pairs to swap. ``embeddings`` holds new identities by
        face index, as asked for by ``needs_identity``."""
        self.frames += 1
        if not len(faces):
            return []
        if self.mode == "many":
            return [(i, 0) for i in range(len(faces))]
        if self.mode == "one":
            return [(self._one(faces, shape), 0)]
        return self._map(faces, embeddings)

    def _one(self, faces: Faces, shape: tuple[int, ...]) -> int:
        areas = faces.areas
        centre = np.array([shape[1], shape[0]], np.float32) / 2
        mids = (faces.boxes[:, :2] + faces.boxes[:, 2:]) / 2
        off = np.linalg.norm(mids - centre, axis=1) / np.linalg.norm(centre)
        best = int(np.argmax(areas * (1 - 0.25 * off)))
        ids = faces.track_ids
        if ids is not None and self._chosen is not None and self._chosen in ids.tolist():
            held = ids.tolist().index(self._chosen)
            if areas[held] >= 0.7 * areas[best]:
                best = held
        self._chosen = int(ids[best]) if ids is not None else None
        return best

    def _map(self, faces: Faces, embeddings: dict[int, np.ndarray]) -> list[tuple[int, int]]:
        assert self.mapping is not None
        ids = faces.track_ids.tolist() if faces.track_ids is not None else [None] * len(faces)
        live = set()
        pairs = []
        for i, tid in enumerate(ids):
            if i in embeddings:
                emb = embeddings[i]
                if tid is not None:
                    self._identities[tid] = _Identity(emb, self.frames)
            elif tid is not None and tid in self._identities:
                emb = self._identities[tid].embedding
            else:
                continue
            live.add(tid)
            sims = self.mapping.references @ emb
            best = int(np.argmax(sims))
            if sims[best] >= self.mapping.threshold:
                pairs.append((i, best))
        # Forget tracks that ended, so the cache stays as small as the scene.
        for tid in set(self._identities) - live:
            del self._identities[tid]
        return pairs


class PairSwapper(Protocol):
    """A swapper that computes faces for (face index, source index) pairs, then writes them."""

    def prepare(self, image: np.ndarray, faces: Faces, pairs: Sequence[tuple[int, int]]) -> list[Any]: ...

    def commit(self, image: np.ndarray, patches: list[Any]) -> None: ...


@dataclass
class SelectingSwapper:
    """The swap stage with face selection in front of a mesh or neural swapper.

    Identities (``map`` mode) come from ``recognizer`` when a track starts and every
    ``selector.refresh_every`` frames after. All or nothing: every selected face is
    computed before any is written.
    """

    inner: PairSwapper
    selector: FaceSelector
    recognizer: Recognizer | None = None

    def swap(self, image: np.ndarray, faces: Faces) -> None:
        due = self.selector.needs_identity(faces)
        identities: dict[int, np.ndarray] = {}
        if due:
            if self.recognizer is None:
                raise ValueError("face mode 'map' needs the ArcFace recognizer")
            identities = dict(zip(due, self.recognizer.normed(image, faces.kps[due]), strict=True))
        pairs = self.selector.select(faces, image.shape, identities)
        self.inner.commit(image, self.inner.prepare(image, faces, pairs))
