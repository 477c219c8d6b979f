"""Assembles the stages from settings: the one place that knows how they fit together."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TypeVar, get_args

import numpy as np
from threadpoolctl import threadpool_limits

from livefuse.config import MESH, DetectorName, RuntimeSettings, Settings, SwapSettings
from livefuse.errors import ConfigError, ModelError
from livefuse.face.detect import CenterFaceDetector, Detector, DetectorConfig, TieredDetector
from livefuse.face.detectors import ScrfdDetector, YunetDetector
from livefuse.face.mesh import MeshLandmarker
from livefuse.face.topology import five_points
from livefuse.face.track import FaceTracker, TrackerConfig
from livefuse.geometry.crop import CropSpec
from livefuse.models.contracts import load_emap
from livefuse.models.files import default_home
from livefuse.models.store import ModelStore
from livefuse.pipeline.stages import Swapper
from livefuse.runtime.backends import RunnerFactory, RunnerOptions, parse_runtime
from livefuse.runtime.base import Runner
from livefuse.runtime.engine_files import default_engines_dir
from livefuse.swap.gpu.swapper import GpuPairSwapper, open_cuda_swapper
from livefuse.swap.mesh import SHAPE_TRANSFER, MeshSwapConfig, MeshSwapper
from livefuse.swap.neural.build import ROLES, check_role, crop_spec
from livefuse.swap.neural.models import Enhancer, Occluder, Parser, Recognizer, SwapModel
from livefuse.swap.neural.swapper import NeuralConfig, NeuralSwapper
from livefuse.swap.select import FaceSelector, Mapping, SelectingSwapper
from livefuse.swap.source import SourceFace, analyse_source, read_image

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The ArcFace record the neural swappers and ``map`` mode use.
RECOGNIZER = "w600k_r50"


def runner_options(settings: RuntimeSettings) -> RunnerOptions:
    """What the settings say about running models (parsed and checked at load)."""
    return RunnerOptions(parse_runtime(settings.runtime), settings.providers, settings.threads, settings.vram_budget)


def home_of(settings: Settings) -> Path:
    """The models-and-samples directory the settings point at."""
    return settings.runtime.home or default_home()


#: Live video detects in tiers (face/detect.py ``TieredDetector``): CenterFace at this input
#: size (faces from 1/16 of the frame's longest side: 80 px at 1280) on most passes, at the
#: settings' ``detect_size`` every ``LIVE_FINE_EVERY``-th. Files detect at full size always.
LIVE_COARSE_SIZE = 320
LIVE_FINE_EVERY = 3


class Engine:
    """The model runners and the stages built on them. Close it (or use ``with``) to free
    the sessions. Each ``tracker()``/``swapper()`` call makes a fresh stage; a stage is used
    by one thread. Runners are created once per model and shared.

    Making an Engine sets numpy's BLAS (OpenBLAS, MKL) to one thread for the process: the
    stages already run in threads of their own, and a BLAS pool busy-waits between the many
    small products of each frame, burning a core the stages need (measured: the mesh path at
    720p, 52 fps with the pool, 71 without)."""

    def __init__(self, settings: Settings, store: ModelStore | None = None) -> None:
        threadpool_limits(limits=1, user_api="blas")
        self.settings = settings
        self.store = store or ModelStore(home_of(settings))
        self._stack = ExitStack()
        # Checks runtime and vram_budget now; the machine's facts are gathered at the first runner.
        self._factory = RunnerFactory(runner_options(settings.runtime), default_engines_dir(self.store.home))
        self._runners: dict[str, Runner] = {}
        # Web sessions build swappers from executor threads: runner creation is serialised.
        self._lock = threading.Lock()
        for name in ("centerface", "face_mesh"):
            self.runner(name)

    def runner(self, name: str) -> Runner:
        """The (shared, activated) runner of an installed model, on the backend chosen for it
        (the settings' ``runtime``; ``auto``: the best this machine has, logged with why)."""
        with self._lock:
            if name not in self._runners:
                store = self.store
                runner = self._factory.open(store.spec(name), store.path(name), store.verified_sha256(name))
                self._stack.callback(runner.close)
                self._runners[name] = runner
            return self._runners[name]

    def detector(self) -> Detector:
        """The detector the settings name (CenterFace unless another is installed and asked for)."""
        s = self.settings.analysis
        if s.detector == "centerface":
            return CenterFaceDetector(self.runner("centerface"), DetectorConfig(s.detect_size, s.detect_threshold))
        kinds: dict[str, type[ScrfdDetector] | type[YunetDetector]] = {"scrfd": ScrfdDetector, "yunet": YunetDetector}
        spec = self.store.spec(s.detector)
        if spec.role != "detector" or spec.family not in kinds:
            raise ConfigError(f"{s.detector!r} is not a detector; use {', '.join(get_args(DetectorName))}")
        return kinds[spec.family](self.runner(s.detector), crop_spec(spec))

    def landmarker(self) -> MeshLandmarker:
        return MeshLandmarker(self.runner("face_mesh"))

    def tracker(self, *, live: bool = False) -> FaceTracker:
        """The analysis stage. ``live``: the detector runs in its own thread beside the tracker,
        so no live frame waits for it, and (CenterFace) in tiers, most passes at a coarse input;
        otherwise inline at full size (files: the same output every time). Close a live
        tracker (the pipeline does) to stop that thread."""
        s = self.settings.analysis
        detector = self.detector()
        miss_from = 0.0
        if live and isinstance(detector, CenterFaceDetector) and detector.config.size >= 2 * LIVE_COARSE_SIZE:
            coarse = CenterFaceDetector(detector.runner, replace(detector.config, size=LIVE_COARSE_SIZE))
            tiers = TieredDetector(detector, coarse, LIVE_FINE_EVERY)
            detector, miss_from = tiers, tiers.reliable_share()
        config = TrackerConfig(
            detect_every=s.detect_every,
            max_faces=s.max_faces,
            smooth=s.smooth,
            background=live,
            miss_from=miss_from,
        )
        return FaceTracker(detector, self.landmarker(), config)

    def source_face(self, photo: Path) -> tuple[np.ndarray, SourceFace]:
        """The photo and its analysed face (largest one), read and checked once."""
        image = read_image(photo)
        return image, analyse_source(image, self.detector(), self.landmarker(), f"photo {photo}")

    def swapper(self, photo: Path, settings: SwapSettings | None = None) -> Swapper:
        """The swap stage for the face in ``photo``, as ``settings`` (default: the engine's)
        ask: swapper, enhancer, masks, face modes. The runners stay the engine's, shared."""
        s = settings or self.settings.swap
        self._check_name(s.swapper, "swapper", (MESH,))
        if s.enhancer:
            self._check_name(s.enhancer, "enhancer")
        if s.faces == "map" and not s.mapping:
            raise ConfigError("--faces map needs at least one --map REF.jpg=SRC.jpg")
        photos = [photo] if s.faces != "map" else [Path(src) for _, src in s.mapping]
        recognizer = self.recognizer() if (s.swapper != MESH or s.faces == "map") else None
        selector = FaceSelector(s.faces, self._mapping(recognizer, s) if s.faces == "map" else None)
        inner: MeshSwapper | NeuralSwapper | GpuPairSwapper
        if s.swapper == MESH:
            config = MeshSwapConfig(
                keep_mouth=s.keep_mouth or "mouth" in s.masks,
                colour=s.colour,
                opacity=s.opacity,
                shape_transfer=SHAPE_TRANSFER if s.shape_transfer is None else s.shape_transfer,
            )
            inner = MeshSwapper([self.source_face(p)[1] for p in photos], config)
        else:
            assert recognizer is not None
            inner = self._neural(photos, recognizer, s)
        return SelectingSwapper(inner, selector, recognizer)

    def _check_name(self, name: str, setting: str, builtin: tuple[str, ...] = ()) -> None:
        """``--swapper foo`` and the like: a usage error listing the known and installed models."""
        role = ROLES[setting]
        known = [*builtin, *(n for n, spec in self.store.manifest.items() if spec.role == role)]
        if name not in known:
            installed = [n for n in known if n in builtin or self.store.is_verified(n)]
            raise ConfigError(
                f"--{setting} {name}: not a {role}; the {role}s are {', '.join(known)} "
                f"(installed: {', '.join(installed) or 'none'})"
            )

    def recognizer(self) -> Recognizer:
        try:
            spec = self.store.spec(RECOGNIZER)
            return Recognizer(self.runner(RECOGNIZER), crop_spec(spec))
        except ModelError as exc:
            raise ModelError(
                f"{exc}\nNeural swappers and --faces map need the ArcFace recognizer {RECOGNIZER}; "
                "without it, --swapper mesh (the default) works with --faces one or many."
            ) from exc

    def _identity(self, photo: Path, recognizer: Recognizer) -> np.ndarray:
        image, face = self.source_face(photo)
        points = face.points[None, :, :2] + np.asarray(face.origin, np.float32)
        return recognizer.normed(image, five_points(points))[0]

    def _mapping(self, recognizer: Recognizer | None, s: SwapSettings) -> Mapping:
        if recognizer is None:
            raise ConfigError(f"--faces map needs the ArcFace recognizer: livefuse models pull {RECOGNIZER}")
        refs = np.stack([self._identity(Path(ref), recognizer) for ref, _ in s.mapping])
        return Mapping(refs, s.map_threshold)

    def _neural(self, photos: list[Path], recognizer: Recognizer, s: SwapSettings) -> NeuralSwapper | GpuPairSwapper:
        spec = self.store.spec(s.swapper)
        check_role(spec, "swapper")
        path = self.store.path(s.swapper)
        io = spec.io
        if io is None or io.latent is None:
            raise ModelError(f"manifest record {s.swapper!r} lacks its io table or latent kind")
        # Exports order the two inputs differently: the image is the 4-D one.
        image = next(t for t in spec.inputs if len(t.shape) == 4)
        latent = next(t for t in spec.inputs if len(t.shape) == 2)
        model = SwapModel(
            self.runner(s.swapper),
            crop_spec(spec),
            io.latent,
            load_emap(path) if io.latent == "emap" else None,
            target_name=image.name,
            source_name=latent.name,
        )
        latents = np.stack([model.latent(self._identity(p, recognizer)) for p in photos])
        config = NeuralConfig(
            keep_mouth=s.keep_mouth or "mouth" in s.masks,
            colour=s.colour,
            sharpness=s.sharpness,
            opacity=s.opacity,
            enhance_every=s.enhance_every,
            enhance_strength=s.enhance_strength,
            mask_style=s.mask_style,
            relight=True,  # both frame paths relight (the GPU path in its own kernels)
        )
        if s.frame_path == "gpu":
            return self._gpu_path(model, latents, config, s)
        return NeuralSwapper(
            model,
            latents,
            config,
            enhancer=self._stage(s.enhancer, "enhancer", Enhancer) if s.enhancer else None,
            occluder=self._stage(self._one_of("occluder"), "occlusion", Occluder) if "occlusion" in s.masks else None,
            parser=self._stage(self._one_of("parser"), "parser", Parser) if "parser" in s.masks else None,
        )

    def _gpu_path(self, model: SwapModel, latents: np.ndarray, config: NeuralConfig, s: SwapSettings) -> GpuPairSwapper:
        """The swap on the GPU frame path (CUDA, TensorRT runner); closed with the engine."""
        extras = [
            name
            for name, on in (
                ("--enhancer", s.enhancer),
                ("--masks occlusion/parser", {"occlusion", "parser"} & s.masks),
            )
            if on
        ]
        if extras:
            raise ConfigError(f"not on the GPU frame path yet: {', '.join(extras)}; use --frame-path cpu for them")
        max_faces = self.settings.analysis.max_faces
        swapper = open_cuda_swapper(
            model.runner, model.crop, latents, config, model.target_name, model.source_name, max_faces
        )
        self._stack.callback(swapper.close)
        return swapper

    def _one_of(self, role: str) -> str:
        """The first installed model of ``role`` (the manifest lists the preferred first)."""
        # Only this role's files are hashed: list() would hash every installed model, twice.
        names = [spec.name for spec in self.store.manifest.values() if spec.role == role]
        installed = [name for name in names if self.store.is_verified(name)]
        if not installed:
            raise ModelError(f"no {role} model is installed: livefuse models pull {names[0] if names else role}")
        return installed[0]

    def _stage(self, name: str, setting: str, kind: Callable[[Runner, CropSpec], T]) -> T:
        spec = self.store.spec(name)
        check_role(spec, setting)
        return kind(self.runner(name), crop_spec(spec))

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
