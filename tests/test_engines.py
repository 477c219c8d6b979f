"""Engine naming and the rules that refuse stale or foreign TensorRT engines (no GPU needed).

The records below are what a build on an RTX 4090 (sm89) and an H100 (sm90) would write.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from livefuse.errors import EngineMismatch
from livefuse.models.manifest import ModelSpec, load_manifest
from livefuse.runtime.engine_files import (
    EngineKey,
    EngineRecord,
    EngineTensor,
    InputProfile,
    batch_profiles,
    build_command,
    differences,
    find_engine,
    parse_cc,
    read_engine,
    record_path,
    save_engine,
    sm_tag,
)

SPEC: ModelSpec = load_manifest()["inswapper_128"]
OTHER_SHA = "0" * 64
H100 = (9, 0)
RTX4090 = (8, 9)


def record(**changes: object) -> EngineRecord:
    base = EngineRecord(
        model=SPEC.name,
        onnx_sha256=SPEC.sha256,
        trt_version="10.3.0",
        cc=H100,
        precision="fp16",
        profiles=batch_profiles([("target", (1, 3, 128, 128)), ("source", (1, 512))], max_batch=8, opt_batch=4),
        tensors=(
            EngineTensor("target", True, "float32", (-1, 3, 128, 128)),
            EngineTensor("source", True, "float32", (-1, 512)),
            EngineTensor("output", False, "float32", (-1, 3, 128, 128)),
        ),
        layer_precisions=(("/styles.0/InstanceNormalization", "fp32"), ("/styles.0/Div", "fp32")),
        optimization_level=3,
        workspace_bytes=4 << 30,
        build_seconds=212.5,
        built_at="2026-11-20T10:00:00+00:00",
        gpu_name="NVIDIA H100 80GB HBM3",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_engine_name_has_model_onnx_hash_trt_and_sm() -> None:
    key = EngineKey(SPEC.name, SPEC.sha256, "10.3.0", H100)
    name = f"inswapper_128-{SPEC.sha256[:12]}-trt10.3.0-sm90-fp16.engine"
    assert key.engine_path(Path("engines")) == Path("engines") / name
    assert record_path(Path("engines/a.engine")) == Path("engines/a.json")
    assert sm_tag(RTX4090) == "sm89" and parse_cc("8.9") == RTX4090
    assert build_command("gfpgan_1.4") == "python scripts/build_engines.py --model gfpgan_1.4"


@pytest.mark.parametrize(
    ("sha", "version", "cc"),
    [("abc", "10.3.0", H100), (SPEC.sha256, "10.3.0rc1", H100), (SPEC.sha256, "10.3.0", (9, 12))],
)
def test_bad_name_parts_are_refused(sha: str, version: str, cc: tuple[int, int]) -> None:
    with pytest.raises(ValueError):
        EngineKey(SPEC.name, sha, version, cc).stem  # noqa: B018


def test_record_round_trips_through_json() -> None:
    rec = record(engine_bytes=10, engine_sha256="f" * 64)
    text = rec.to_json()
    assert json.loads(text)["cc"] == "9.0" and json.loads(text)["schema"] == 1
    assert EngineRecord.from_json(text) == rec
    assert rec.max_batch == 8
    assert rec.profiles[0] == InputProfile("target", (1, 3, 128, 128), (4, 3, 128, 128), (8, 3, 128, 128))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(schema=99),
        lambda d: d.update(cc="sm90"),
        lambda d: d.pop("onnx_sha256"),
        lambda d: d["profiles"][0].update(min=[9, 3, 128, 128]),
        lambda d: d.update(optimization_level=7),
    ],
)
def test_malformed_records_are_refused(mutate: object) -> None:
    data = json.loads(record().to_json())
    mutate(data)  # type: ignore[operator]
    with pytest.raises((ValueError, KeyError)):
        EngineRecord.from_json(json.dumps(data))


# (what was built, what this machine has) → the words the refusal must contain
MISMATCHES = [
    (record(onnx_sha256=OTHER_SHA), "the ONNX file changed"),
    (record(trt_version="10.1.0"), "other TensorRT: built with TensorRT 10.1.0, this machine has 10.3.0"),
    (record(cc=RTX4090, gpu_name="NVIDIA GeForce RTX 4090"), "other GPU: built for compute capability 8.9"),
]


@pytest.mark.parametrize(("built", "words"), MISMATCHES)
def test_differences_name_what_changed(built: EngineRecord, words: str) -> None:
    want = EngineKey(SPEC.name, SPEC.sha256, "10.3.0", H100)
    found = differences(built, want)
    assert len(found) == 1 and words in found[0]
    assert differences(record(), want) == []


def test_all_differences_are_listed() -> None:
    built = record(onnx_sha256=OTHER_SHA, trt_version="10.1.0", cc=RTX4090)
    assert len(differences(built, EngineKey(SPEC.name, SPEC.sha256, "10.3.0", H100))) == 3


def test_find_returns_the_matching_engine_and_read_checks_its_hash(tmp_path: Path) -> None:
    saved = save_engine(tmp_path, b"engine-bytes", record())
    match = find_engine(SPEC, "10.3.0", H100, tmp_path, batch=8)
    assert match == saved and match.record.engine_bytes == len(b"engine-bytes")
    assert read_engine(match) == b"engine-bytes"
    match.path.write_bytes(b"engine-bytez")  # same size, other content
    with pytest.raises(EngineMismatch, match="corrupt or was modified"):
        read_engine(match)


@pytest.mark.parametrize(("built", "words"), MISMATCHES)
def test_find_refuses_a_mismatched_engine_with_the_rebuild_command(
    tmp_path: Path, built: EngineRecord, words: str
) -> None:
    save_engine(tmp_path, b"x" * 64, built)
    with pytest.raises(EngineMismatch) as info:
        find_engine(SPEC, "10.3.0", H100, tmp_path)
    message = str(info.value)
    assert words in message
    assert "never rebuilds" in message and "'python scripts/build_engines.py --model inswapper_128'" in message


def test_find_prefers_the_newest_other_engine_to_explain(tmp_path: Path) -> None:
    save_engine(tmp_path, b"a", record(trt_version="10.0.1", built_at="2026-01-01T00:00:00+00:00"))
    save_engine(tmp_path, b"b", record(cc=RTX4090, built_at="2026-06-01T00:00:00+00:00"))
    with pytest.raises(EngineMismatch, match="other GPU"):
        find_engine(SPEC, "10.3.0", H100, tmp_path)


def test_find_without_any_engine_says_how_to_build(tmp_path: Path) -> None:
    save_engine(tmp_path, b"a", dataclasses.replace(record(), model="inswapper_128_fp16"))  # another model
    with pytest.raises(EngineMismatch, match="there is no TensorRT engine for model 'inswapper_128'") as info:
        find_engine(SPEC, "10.3.0", H100, tmp_path)
    assert build_command("inswapper_128") in str(info.value)


def test_find_refuses_truncated_engine_missing_record_and_small_batch(tmp_path: Path) -> None:
    match = save_engine(tmp_path, b"x" * 100, record())
    with pytest.raises(EngineMismatch, match="at most 8 faces per call, 9 are needed"):
        find_engine(SPEC, "10.3.0", H100, tmp_path, batch=9)
    match.path.write_bytes(b"x" * 50)
    with pytest.raises(EngineMismatch, match="truncated"):
        find_engine(SPEC, "10.3.0", H100, tmp_path)
    record_path(match.path).unlink()
    with pytest.raises(EngineMismatch, match="record of what was built.*missing"):
        find_engine(SPEC, "10.3.0", H100, tmp_path)
    record_path(match.path).write_text("{not json")
    with pytest.raises(EngineMismatch, match="unreadable"):
        find_engine(SPEC, "10.3.0", H100, tmp_path)


def test_find_uses_the_installed_files_hash_when_given(tmp_path: Path) -> None:
    save_engine(tmp_path, b"a", record(onnx_sha256=OTHER_SHA))
    assert find_engine(SPEC, "10.3.0", H100, tmp_path, onnx_sha256=OTHER_SHA).record.onnx_sha256 == OTHER_SHA
    unpinned = dataclasses.replace(SPEC, sha256="", also_sha256=())
    with pytest.raises(EngineMismatch, match="pins no sha256"):
        find_engine(unpinned, "10.3.0", H100, tmp_path)
