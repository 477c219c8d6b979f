"""TorchRunner (ONNX → torch via onnx2torch) against OrtRunner on the tiny stand-ins.

Skipped, with the reason, when torch or onnx2torch are not installed (they are the optional
``livefuse[torch]`` extra, not part of the test install).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest

from livefuse.errors import ConfigError, ModelError
from livefuse.models.manifest import load_manifest
from livefuse.runtime.ort import OrtRunner
from livefuse.testing.standins import STANDIN_NAMES, make_tiny

_KEEP: list[object] = []  # keeps the torch.library object below alive for the session


def _define_missing_torchvision_ops() -> None:
    """Work around a broken torch/torchvision pair, for these tests only.

    A CUDA torchvision next to a CPU-only torch cannot load its compiled ops, and torchvision
    then fails at import registering a fake kernel for the undefined ``torchvision::nms``;
    onnx2torch imports torchvision for its NonMaxSuppression converter. Declaring the two op
    schemas lets torchvision import. None of the models tested here has a NonMaxSuppression
    node, so no torchvision op is ever called.
    """
    import torch

    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _KEEP.append(library)


def _torch_backend_missing() -> str | None:
    """Why the torch backend cannot run here, or None when it can."""
    missing = [m for m in ("torch", "onnx2torch") if importlib.util.find_spec(m) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (the optional extra: pip install 'livefuse[torch]')"
    from livefuse.runtime.torch_runner import _import_torch

    try:
        _import_torch()
    except ConfigError as exc:
        if "torchvision" not in str(exc):
            return str(exc)
        _define_missing_torchvision_ops()
        _import_torch()
    return None


_WHY_NOT = _torch_backend_missing()
pytestmark = pytest.mark.skipif(_WHY_NOT is not None, reason=f"torch backend unavailable: {_WHY_NOT}")

if _WHY_NOT is None:
    from livefuse.runtime.torch_runner import MAX_SHAPES, TorchRunner

#: Values for the manifest's named (dynamic) dims: batch 1, detector input 160 px.
DIMS = {"?": 160}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    for name in STANDIN_NAMES:
        make_tiny(name, out)
    return out


def feeds_for(name: str, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for contract in load_manifest()[name].inputs:
        shape = [d if isinstance(d, int) else DIMS.get(d, batch) for d in contract.shape]
        feeds[contract.name] = rng.uniform(-1, 1, shape).astype(contract.dtype)
    return feeds


def close_to(got: list[np.ndarray], want: list[np.ndarray], rtol: float) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        scale = max(float(np.abs(w).max()), 1e-3)
        np.testing.assert_allclose(g, w, rtol=0, atol=rtol * scale)


@pytest.fixture
def runners(tiny_dir: Path, request: pytest.FixtureRequest) -> Iterator[tuple[OrtRunner, TorchRunner]]:
    path = tiny_dir / f"{request.param}.onnx"
    ort, runner = OrtRunner(path, providers=["CPUExecutionProvider"]), TorchRunner(path, device="cpu")
    with ort, runner:
        yield ort, runner


@pytest.mark.filterwarnings("ignore:For linear and cubic interpolation")  # onnx2torch's caution; checked here
@pytest.mark.parametrize("runners", STANDIN_NAMES, indirect=True)
def test_torch_matches_onnxruntime_on_every_stand_in(runners: tuple[OrtRunner, TorchRunner]) -> None:
    ort, torch = runners
    feeds = feeds_for(ort.name)
    # The fp16 stand-in computes in float16 inside: the two runtimes round differently.
    rtol = 5e-3 if ort.name.endswith("_fp16") else 1e-4
    close_to(torch.infer(feeds), ort.infer(feeds), rtol)
    assert [(s.name, s.dtype) for s in torch.inputs] == [(s.name, s.dtype) for s in ort.inputs]
    assert [s.name for s in torch.outputs] == [s.name for s in ort.outputs]
    assert torch.provider == "torch:cpu"


def test_buffers_are_preallocated_and_reused(tiny_dir: Path) -> None:
    path = tiny_dir / "inswapper_128.onnx"
    ort, runner = OrtRunner(path), TorchRunner(path, device="cpu")
    with ort, runner:
        first = runner.infer(feeds_for("inswapper_128", seed=1))
        first_ids = [id(a) for a in first]
        snapshot = [a.copy() for a in first]
        second = runner.infer(feeds_for("inswapper_128", seed=2))
        assert [id(a) for a in second] == first_ids  # same buffers, new contents
        assert not np.array_equal(second[0], snapshot[0])
        close_to(second, ort.infer(feeds_for("inswapper_128", seed=2)), 1e-4)


def test_dynamic_batch_gets_its_own_buffers_and_old_shapes_are_evicted(tiny_dir: Path) -> None:
    path = tiny_dir / "w600k_r50.onnx"
    ort, runner = OrtRunner(path), TorchRunner(path, device="cpu")
    with ort, runner:
        for batch in (1, 2, 3):
            feeds = feeds_for("w600k_r50", batch=batch)
            close_to(runner.infer(feeds), ort.infer(feeds), 1e-4)
        assert len(runner._buffers) == 3
        for batch in range(4, 4 + MAX_SHAPES):
            runner.infer(feeds_for("w600k_r50", batch=batch))
        assert len(runner._buffers) == MAX_SHAPES


def test_misuse_names_the_problem(tiny_dir: Path, tmp_path: Path) -> None:
    path = tiny_dir / "gpen_bfr_256.onnx"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        TorchRunner(path, device="cpu", fp16=True).activate()
    with pytest.raises(ConfigError, match="device must be"):
        TorchRunner(path, device="mps:0").activate()
    with TorchRunner(path, device="cpu") as runner, pytest.raises(ValueError, match="needs input 'input'"):
        runner.infer({"wrong": np.zeros((1, 3, 256, 256), np.float32)})
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot be read"):
        TorchRunner(bad, device="cpu").activate()


def _cuda() -> bool:
    if _WHY_NOT is not None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def test_cuda_without_a_gpu_is_refused(tiny_dir: Path) -> None:
    if _cuda():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(ConfigError, match="sees no CUDA GPU"):
        TorchRunner(tiny_dir / "gpen_bfr_256.onnx", device="cuda").activate()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs torch with a CUDA GPU")
@pytest.mark.parametrize("name", ["inswapper_128", "w600k_r50", "gfpgan_1.4", "scrfd_det_10g"])
@pytest.mark.parametrize("graphs", [True, False])
def test_cuda_fp16_matches_onnxruntime_cpu(tiny_dir: Path, name: str, graphs: bool) -> None:
    path = tiny_dir / f"{name}.onnx"
    ort = OrtRunner(path, providers=["CPUExecutionProvider"])
    runner = TorchRunner(path, device="cuda", cuda_graphs=graphs)
    with ort, runner:
        assert runner.fp16 and runner.cuda_graphs is graphs
        for seed in (1, 2):  # the second call replays the captured graph with new inputs
            feeds: Mapping[str, np.ndarray] = feeds_for(name, seed=seed)
            close_to(runner.infer(feeds), ort.infer(feeds), 2e-2)
