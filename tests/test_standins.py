"""Stand-in models: tiny ones with the real interfaces, faithful ones with the real compute."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from livefuse.models.files import sha256_file
from livefuse.models.install import ModelInstaller
from livefuse.models.manifest import MANIFEST_ENV, ModelSpec, load_manifest
from livefuse.models.store import ModelStore
from livefuse.testing import standins

MANIFEST = load_manifest()
REPO = Path(__file__).resolve().parents[1]
SIZES = {"None": 2, "batch_size": 2, "?": 640}  # dynamic dims fed at their nominal sizes


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3  # declared [1,512]-style outputs warn when batch is 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feeds(spec: ModelSpec, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for c in spec.inputs:
        shape = [d if isinstance(d, int) else SIZES[d] for d in c.shape]
        if c.shape and c.shape[0] == "None":  # w600k_r50 declares [1,512] out: keep batch 1
            shape[0] = 1
        feeds[c.name] = rng.random(shape, dtype=np.float32)
    if spec.family == "yunet":
        feeds["input"] *= 255  # raw pixels
    return feeds


def _expected(contract_shape: tuple[int | str, ...], feeds: dict[str, np.ndarray]) -> tuple[int, ...]:
    batch = next(iter(feeds.values())).shape[0]
    return tuple(d if isinstance(d, int) else batch for d in contract_shape)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tiny")
    return {name: standins.make_tiny(name, out) for name in standins.STANDIN_NAMES}


def test_every_optional_model_has_stand_ins() -> None:
    assert standins.STANDIN_NAMES == tuple(s.name for s in MANIFEST.values() if s.optional)


# --------------------------------------------------------------------------- tiny stand-ins


@pytest.mark.parametrize("name", standins.STANDIN_NAMES)
def test_tiny_stand_in_has_the_records_interface(name: str, tiny: dict[str, Path], tmp_path: Path) -> None:
    path, spec = tiny[name], MANIFEST[name]
    onnx.checker.check_model(onnx.load(str(path)))
    limit = 1.1e6 if name == "inswapper_128" else 1e6  # its float32 emap alone is 1 MiB
    assert path.stat().st_size < limit
    # The store's own contract check (names, order, dims, dtypes, emap) accepts it.
    store = ModelStore(tmp_path, standins.pinned_manifest({name: path}))
    assert ModelInstaller(store).add(name, path) == store.path(name)
    model = onnx.load(str(path))
    declared = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in (*model.graph.input, *model.graph.output)
    }
    for c in (*spec.inputs, *spec.outputs):
        assert declared[c.name] == list(c.shape)  # identical, dynamic dims as dim_params


@pytest.mark.parametrize("name", standins.STANDIN_NAMES)
def test_tiny_stand_in_runs_with_the_right_shapes_and_ranges(name: str, tiny: dict[str, Path]) -> None:
    spec = MANIFEST[name]
    session = _session(tiny[name])
    feeds = _feeds(spec, 0)
    outputs = session.run(None, feeds)
    assert [o.shape for o in outputs] == [_expected(c.shape, feeds) for c in spec.outputs]
    assert all(o.dtype == np.float32 and np.isfinite(o).all() for o in outputs)
    low, high = spec.io.output_range if spec.io and spec.io.output_range else (-np.inf, np.inf)
    image = outputs[0]
    assert image.min() >= low and image.max() <= high
    assert image.std() > 1e-4  # not a constant
    if spec.family in ("scrfd", "yunet"):
        assert 0 < outputs[0].max() < 0.5  # scores: probabilities, mostly low


@pytest.mark.parametrize("name", standins.STANDIN_NAMES)
def test_tiny_stand_in_is_deterministic_and_input_dependent(name: str, tiny: dict[str, Path]) -> None:
    spec = MANIFEST[name]
    assert standins.tiny_model(name).SerializeToString() == tiny[name].read_bytes()
    session = _session(tiny[name])
    first, again = session.run(None, _feeds(spec, 0)), session.run(None, _feeds(spec, 0))
    other = session.run(None, _feeds(spec, 1))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.allclose(first[0], other[0])


@pytest.mark.parametrize("name", ["inswapper_128", "inswapper_128_fp16"])
def test_inswapper_stand_ins_carry_the_emap_last(name: str, tiny: dict[str, Path]) -> None:
    graph = onnx.load(str(tiny[name])).graph
    emap = graph.initializer[-1]
    want = TensorProto.FLOAT16 if name.endswith("fp16") else TensorProto.FLOAT
    assert list(emap.dims) == [512, 512] and emap.data_type == want
    assert not any(emap.name in node.input for node in graph.node)
    assert [v.type.tensor_type.elem_type for v in (*graph.input, *graph.output)] == [TensorProto.FLOAT] * 3


def test_arcface_stand_in_does_not_look_normalised_to_insightface(tiny: dict[str, Path]) -> None:
    # insightface's ArcFaceONNX switches to mean 0 / std 1 when the first 8 node names hold
    # both a Sub and a Mul; the stand-in must keep the (x - 127.5) / 127.5 contract.
    names = [n.name for n in onnx.load(str(tiny["w600k_r50"])).graph.node[:8]]
    has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    assert not (has_sub and has_mul)


def test_pinned_manifest_file_works_through_the_environment(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {"inswapper_128": tiny["inswapper_128"], "w600k_r50": tiny["w600k_r50"]}
    manifest = standins.write_pinned_manifest(files, tmp_path / "manifest.toml")
    monkeypatch.setenv(MANIFEST_ENV, str(manifest))
    store = ModelStore(tmp_path / "home")
    assert store.spec("inswapper_128").sha256 == sha256_file(tiny["inswapper_128"])
    assert store.spec("hyperswap_1a_256") == MANIFEST["hyperswap_1a_256"]  # the others unchanged
    ModelInstaller(store).add("inswapper_128", tiny["inswapper_128"])
    assert store.is_verified("inswapper_128")


# --------------------------------------------------------------------------- faithful stand-ins


def _within(value: float, target: float, tolerance: float) -> bool:
    return abs(value - target) <= tolerance * target


@pytest.mark.parametrize(
    ("name", "gmac", "mparams"),
    [
        ("inswapper_128", 174.58, 138.29),  # contracts §1.7
        ("w600k_r50", 6.31, 43.6),  # IResNet-50
        ("gfpgan_1.4", 198.0, 84.3),  # GFPGANv1Clean at 512
        ("hyperswap_1a_256", 62.9, 55.1),  # SimSwap generator at 256
        ("scrfd_det_10g", 13.3, 4.23),  # SCRFD-10G at 640x640
    ],
)
def test_faithful_stand_ins_have_the_documented_cost(name: str, gmac: float, mparams: float) -> None:
    model = standins.faithful_model(name, shapes_only=True)  # weights declared, never drawn
    assert _within(standins.count_macs(model) / 1e9, gmac, 0.01)
    assert _within(standins.count_params(model, exclude=("emap",)) / 1e6, mparams, 0.01)


def test_faithful_inswapper_is_exactly_the_published_architecture() -> None:
    model = standins.faithful_model("inswapper_128", shapes_only=True)
    assert standins.count_params(model, exclude=("emap",)) == 138_292_739
    assert standins.count_params(model) == 138_292_739 + 512 * 512
    assert standins.count_macs(model) == 174_575_321_088


def test_every_faithful_stand_in_keeps_the_interface() -> None:
    for name in standins.STANDIN_NAMES:
        graph = standins.faithful_model(name, shapes_only=True).graph
        contract = MANIFEST[name]
        inputs = [v.name for v in graph.input][: len(contract.inputs)]
        assert inputs == [c.name for c in contract.inputs], name
        assert [v.name for v in graph.output] == [c.name for c in contract.outputs], name


def test_count_macs_counts_each_kind_of_node() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    m = helper.make_tensor_value_info("m", TensorProto.FLOAT, [2, 5, 7])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["c", "t"], ["d"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "g"], ["y"], transB=1),
        helper.make_node("MatMul", ["m", "k"], ["z"]),
    ]
    weights = [
        helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 3, 3]),
        helper.make_tensor_value_info("t", TensorProto.FLOAT, [4, 2, 2, 2]),
        helper.make_tensor_value_info("g", TensorProto.FLOAT, [10, 192]),
        helper.make_tensor_value_info("k", TensorProto.FLOAT, [7, 6]),
    ]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("d", "y", "z")]
    graph = helper.make_graph(nodes, "g", [x, m, *weights], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    conv = 4 * 8 * 8 * 3 * 3 * 3
    deconv = 4 * 8 * 8 * 2 * 2 * 2  # each input pixel of 4 channels scatters a 2x2x2 kernel
    gemm, matmul = 192 * 10, 2 * 5 * 7 * 6
    assert standins.count_macs(model) == conv + deconv + gemm + matmul


def test_faithful_files_stream_to_the_same_model(tmp_path: Path) -> None:
    for name in ("yunet_2023mar", "scrfd_det_10g"):
        path = standins.make_faithful(name, tmp_path)
        assert onnx.load(str(path)) == standins.faithful_model(name)
        session = _session(path)
        outputs = session.run(None, _feeds(MANIFEST[name], 0))
        assert all(np.isfinite(o).all() for o in outputs)


def test_the_streaming_writer_keeps_the_emap_last() -> None:
    net = standins._net("inswapper_128_fp16", standins._TINY, "tiny")
    out = io.BytesIO()
    net.write(out)
    model = onnx.load_from_string(out.getvalue())
    assert model == standins.tiny_model("inswapper_128_fp16")
    assert model.graph.initializer[-1].name == "emap"


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("LIVEFUSE_SLOW"), reason="builds 554 MB; set LIVEFUSE_SLOW=1")
def test_the_faithful_inswapper_file_runs(tmp_path: Path) -> None:
    path = standins.make_faithful("inswapper_128", tmp_path)
    assert 553e6 < path.stat().st_size < 556e6
    store = ModelStore(tmp_path / "home", standins.pinned_manifest({"inswapper_128": path}))
    ModelInstaller(store).add("inswapper_128", path)
    output = _session(path).run(None, _feeds(MANIFEST["inswapper_128"], 0))[0]
    assert output.shape == (1, 3, 128, 128) and 0 <= output.min() and output.max() <= 1


# --------------------------------------------------------------------------- the script


def test_the_script_writes_the_stand_ins_it_is_asked_for(tmp_path: Path) -> None:
    script = REPO / "scripts" / "make_stand_in_models.py"
    command = [sys.executable, str(script), "--tiny", "--faithful", "--out", str(tmp_path)]
    command += ["--only", "scrfd_det_10g,yunet_2023mar"]
    proc = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    built = ["scrfd_det_10g.onnx", "yunet_2023mar.onnx"]
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == built
    assert sorted(p.name for p in (tmp_path / "faithful").iterdir()) == built
    assert "GMAC" in proc.stdout and "scrfd_det_10g" in proc.stdout
    bad = subprocess.run(
        [sys.executable, str(script), "--tiny", "--out", str(tmp_path), "--only", "nope"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert bad.returncode == 2 and "nope" in bad.stderr
