"""What the TensorRT engine build decides before it touches TensorRT: the FP32 layers of
inswapper-like graphs, the layer → ONNX node matching, the input profiles, the options, the
timing-cache file and the record (no TensorRT or GPU needed)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from livefuse.engines.plan import (
    BuildOptions,
    build_parser,
    input_profiles,
    make_record,
    options_from_args,
    plan_model,
    timing_cache_path,
)
from livefuse.engines.precision import (
    ADAIN,
    INSTANCE_NORM_DECOMPOSED,
    computes_in_fp16,
    fp32_nodes,
    layers_to_keep,
    owner_node,
    trt_node_name,
)
from livefuse.errors import ConfigError, EngineError
from livefuse.models.manifest import load_manifest
from livefuse.runtime.engine_files import EngineRecord, EngineTensor, InputProfile
from livefuse.runtime.trt_env import GpuInfo, trt_version
from livefuse.testing.standins import faithful_model, make_tiny, tiny_model
from tests.trt_fakes import ADAIN_FP32, adain_model

MANIFEST = load_manifest()


# --------------------------------------------------------------------------- FP32 nodes


def test_the_norm_chains_and_adain_of_an_inswapper_like_graph_stay_fp32() -> None:
    assert fp32_nodes(adain_model().graph) == ADAIN_FP32
    kept = set(fp32_nodes(adain_model().graph))
    # The convolutions, activations and the residual add stay FP16: they are the bulk of the work.
    assert not kept & {"/enc/Conv", "/b0/Relu", "/Add", "/dec/Conv", "/Sigmoid"}


def test_faithful_inswapper_keeps_its_12_norm_chains_and_adain_blocks_in_fp32() -> None:
    graph = faithful_model("inswapper_128", shapes_only=True).graph
    found = fp32_nodes(graph)
    assert Counter(found.values()) == {INSTANCE_NORM_DECOMPOSED: 12 * 7, ADAIN: 12 * 5}
    ops = Counter(n.op_type for n in graph.node if n.name in found)
    assert ops == {
        "ReduceMean": 24,
        "Sub": 12,
        "Mul": 24,
        "Add": 24,
        "Sqrt": 12,
        "Div": 12,
        "Gemm": 12,
        "Reshape": 12,
        "Split": 12,
    }
    assert not any(n.op_type in {"Conv", "Pad", "Resize", "LeakyRelu"} for n in graph.node if n.name in found)
    assert "Add_63" not in found  # the residual add of block 0 (x + adain(...))


@pytest.mark.parametrize("name", ["inswapper_128", "w600k_r50", "gfpgan_1.4", "scrfd_det_10g"])
def test_graphs_without_instance_norms_keep_nothing_in_fp32(name: str) -> None:
    assert fp32_nodes(tiny_model(name).graph) == {}


def _graph(nodes: list[onnx.NodeProto], consts: dict[str, object]) -> onnx.GraphProto:
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in consts.items()]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return helper.make_graph(nodes, "g", [x], [y], initializer=inits)


def _norm(square: list[onnx.NodeProto], tail: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    return [
        helper.make_node("ReduceMean", ["x"], ["m"], name="mean", axes=[2, 3]),
        helper.make_node("Sub", ["x", "m"], ["c"], name="sub"),
        *square,
        helper.make_node("ReduceMean", ["sq"], ["v"], name="var", axes=[2, 3]),
        *tail,
    ]


def test_decomposed_norm_variants_pow_and_reciprocal_are_found() -> None:
    pow_square = [helper.make_node("Pow", ["c", "two"], ["sq"], name="pow")]
    reciprocal = [
        helper.make_node("Add", ["v", "eps"], ["ve"], name="eps"),
        helper.make_node("Sqrt", ["ve"], ["s"], name="sqrt"),
        helper.make_node("Reciprocal", ["s"], ["r"], name="recip"),
        helper.make_node("Mul", ["c", "r"], ["y"], name="scale"),
    ]
    found = fp32_nodes(_graph(_norm(pow_square, reciprocal), {"two": 2.0, "eps": 1e-5}))
    assert list(found) == ["mean", "sub", "pow", "var", "eps", "sqrt", "recip", "scale"]


def test_look_alikes_are_not_norms() -> None:
    cube = [helper.make_node("Pow", ["c", "three"], ["sq"], name="pow")]
    assert fp32_nodes(_graph(_norm(cube, []), {"three": 3.0})) == {}
    # x - mean(y) of another tensor is no centring
    other = [
        helper.make_node("ReduceMean", ["x"], ["m"], name="mean", axes=[2, 3]),
        helper.make_node("Relu", ["x"], ["z"], name="relu"),
        helper.make_node("Sub", ["z", "m"], ["c"], name="sub"),
        helper.make_node("Mul", ["c", "c"], ["sq"], name="sq"),
        helper.make_node("ReduceMean", ["sq"], ["y"], name="var", axes=[2, 3]),
    ]
    assert fp32_nodes(_graph(other, {})) == {}


def test_modulation_needs_a_style_projection() -> None:
    """norm * (something that is not a projection of the latent) is left alone."""
    nodes = [
        helper.make_node("InstanceNormalization", ["x", "s", "b"], ["n"], name="in"),
        helper.make_node("Relu", ["x"], ["gate"], name="relu"),
        helper.make_node("Mul", ["n", "gate"], ["y"], name="mul"),
    ]
    assert fp32_nodes(_graph(nodes, {"s": np.ones(4), "b": np.zeros(4)})) == {"in": "instance-norm"}


def test_unnamed_nodes_are_named_as_tensorrt_names_them() -> None:
    node = helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"])
    assert trt_node_name(node) == "node_of_y"
    assert fp32_nodes(_graph([node], {"s": np.ones(4), "b": np.zeros(4)})) == {"node_of_y": "instance-norm"}


# --------------------------------------------------------------------------- layers → nodes


NODES = frozenset({"/b1/Div", "/b1/Div_1", "/b1/Add", "Add_1", "Add_12"})


@pytest.mark.parametrize(
    ("layer", "metadata", "owner"),
    [
        ("/b1/Div", "", "/b1/Div"),
        ("/b1/Div_1", "", "/b1/Div_1"),  # its own node, not a helper of /b1/Div
        ("/b1/Div_57", "", "/b1/Div"),  # the parser's second layer of /b1/Div
        ("/b1/Add_3_broadcast", "", "/b1/Add"),
        ("Add_12", "", "Add_12"),
        ("Add_1_40", "", "Add_1"),
        ("(Unnamed Layer* 7) [Shuffle]", "", None),
        ("fused_thing", "[ONNX Layer: /b1/Div_1]", "/b1/Div_1"),  # metadata wins over the name
        ("/b1/Div_57", "[ONNX Layer: gone]", "/b1/Div"),
    ],
)
def test_layers_are_matched_to_the_onnx_node_they_came_from(layer: str, metadata: str, owner: str | None) -> None:
    assert owner_node(layer, metadata, NODES) == owner


def test_only_layers_of_fp32_nodes_are_kept() -> None:
    layers = [("/b1/Div", ""), ("/b1/Div_1", ""), ("/b1/Div_57", ""), ("(Unnamed Layer* 7) [Shuffle]", "")]
    assert layers_to_keep(layers, {"/b1/Div": ADAIN}, NODES) == {"/b1/Div": "/b1/Div", "/b1/Div_57": "/b1/Div"}


# --------------------------------------------------------------------------- profiles and plans


def test_profiles_cover_a_batch_range_fixed_shapes_and_free_image_sides() -> None:
    inputs = [("faces", (None, 3, 112, 112)), ("latent", (1, 512)), ("image", (1, 3, None, None))]
    faces, latent, image = input_profiles("m", inputs, max_batch=8, opt_batch=2, side=640)
    assert faces == InputProfile("faces", (1, 3, 112, 112), (2, 3, 112, 112), (8, 3, 112, 112))
    assert latent == InputProfile("latent", (1, 512), (1, 512), (1, 512))
    assert image == InputProfile("image", (1, 3, 32, 32), (1, 3, 640, 640), (1, 3, 640, 640))
    with pytest.raises(ConfigError, match="opt_batch <= max_batch"):
        input_profiles("m", inputs, max_batch=2, opt_batch=4, side=640)
    with pytest.raises(EngineError, match="scalar"):
        input_profiles("m", [("k", ())], 8, 1, 640)


def test_plans_of_the_stand_ins(tmp_path: Path) -> None:
    options = BuildOptions(max_batch=4)
    recognizer = plan_model(MANIFEST["w600k_r50"], make_tiny("w600k_r50", tmp_path), "a" * 64, options)
    assert recognizer.profiles == (InputProfile("input.1", (1, 3, 112, 112), (1, 3, 112, 112), (4, 3, 112, 112)),)
    assert recognizer.dynamic == {"input.1"} and recognizer.max_batch == 4 and not recognizer.strongly_typed
    swapper = plan_model(MANIFEST["inswapper_128"], make_tiny("inswapper_128", tmp_path), "a" * 64, options)
    assert swapper.dynamic == frozenset() and swapper.max_batch == 1  # fixed [1, ...] inputs
    detector = plan_model(MANIFEST["scrfd_det_10g"], make_tiny("scrfd_det_10g", tmp_path), "a" * 64, options)
    assert detector.profiles[0].max == (1, 3, 640, 640) and detector.dynamic == {"input.1"}  # io.size = 640


def test_weight_streaming_needs_an_fp16_file(tmp_path: Path) -> None:
    options = BuildOptions(weight_streaming=True)
    fp16 = plan_model(MANIFEST["inswapper_128_fp16"], make_tiny("inswapper_128_fp16", tmp_path), "a" * 64, options)
    assert fp16.strongly_typed and fp16.fp32 == {}
    with pytest.raises(EngineError, match="weights are float32, so the engine would be FP32"):
        plan_model(MANIFEST["inswapper_128"], make_tiny("inswapper_128", tmp_path), "a" * 64, options)
    assert computes_in_fp16(tiny_model("inswapper_128_fp16").graph)
    assert not computes_in_fp16(tiny_model("inswapper_128").graph)


def test_an_unreadable_onnx_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(EngineError, match="bad.onnx is not a readable ONNX file"):
        plan_model(MANIFEST["w600k_r50"], bad, "a" * 64, BuildOptions())


# --------------------------------------------------------------------------- options, paths, record


def test_options_defaults_and_repeated_models() -> None:
    parser = build_parser()
    assert options_from_args(parser.parse_args([])) == BuildOptions()
    options = options_from_args(
        parser.parse_args(
            [
                "--model",
                "a",
                "--model",
                "b",
                "--model",
                "a",
                "--max-batch",
                "4",
                "--opt-level",
                "5",
                "--workspace-gib",
                "0.5",
                "--weight-streaming",
                "--engines",
                "/e",
                "--force",
                "--precision-constraints",
                "prefer",
            ]
        )
    )
    assert options.models == ("a", "b") and options.max_batch == 4 and options.opt_level == 5
    assert options.workspace_bytes == 1 << 29 and options.weight_streaming and options.force
    assert options.engines_dir == Path("/e") and options.precision_constraints == "prefer"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-batch", "0"], "opt-batch <= --max-batch"),
        (["--max-batch", "2", "--opt-batch", "3"], "opt-batch <= --max-batch"),
        (["--opt-level", "6"], "0..5"),
        (["--workspace-gib", "0"], "positive"),
        (["--workspace-gib", "nan"], "positive"),
        (["--image-size", "16"], "at least 32"),
        (["--device", "-1"], "device index"),
    ],
)
def test_bad_options_are_refused_with_the_reason(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        options_from_args(build_parser().parse_args(argv))


def test_versions_and_timing_cache_names() -> None:
    assert trt_version("10.3.0.post1") == "10.3.0" and trt_version("10.0.1") == "10.0.1"
    with pytest.raises(EngineError, match="cannot read the TensorRT version"):
        trt_version("dev")
    with pytest.raises(ConfigError, match="TensorRT 8.6.1 is too old: .* TensorRT 10 or newer"):
        trt_version("8.6.1")
    assert timing_cache_path(Path("e"), "10.3.0", (8, 9)) == Path("e/timing-10.3.0-sm89.cache")


def test_the_record_says_what_was_built_and_round_trips(tmp_path: Path) -> None:
    spec = MANIFEST["w600k_r50"]
    plan = plan_model(spec, make_tiny("w600k_r50", tmp_path), "b" * 64, BuildOptions(max_batch=4))
    plan = dataclasses.replace(plan, fp32={"n": ADAIN})
    tensors = [
        EngineTensor("input.1", True, "float32", (-1, 3, 112, 112)),
        EngineTensor("683", False, "float32", (-1, 512)),
    ]
    record = make_record(
        plan,
        version="10.3.0",
        gpu=GpuInfo("NVIDIA H100 80GB HBM3", (9, 0)),
        options=BuildOptions(max_batch=4, opt_level=4),
        tensors=tensors,
        fp32_layers=["n", "n_7"],
        build_seconds=12.3456,
        built_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
    )
    assert record.key.stem == f"w600k_r50-{'b' * 12}-trt10.3.0-sm90-fp16"
    assert record.layer_precisions == (("n", "fp32"), ("n_7", "fp32"))
    assert record.max_batch == 4 and record.optimization_level == 4 and record.workspace_bytes == 4 << 30
    assert record.build_seconds == 12.346 and record.built_at == "2026-01-02T03:04:05+00:00"
    assert record.gpu_name.startswith("NVIDIA H100") and record.weight_streaming is False
    assert EngineRecord.from_json(record.to_json()) == record
