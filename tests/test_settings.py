"""Settings typed once: choices declared once as ``Literal`` types and offered by the CLI; every
value parsed and range-checked once at load, from the command line, the environment or the
config file; a bad one exits 2 naming the option, the value and what is allowed."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, get_args

import pytest

from livefuse.cli import build_parser, main
from livefuse.config import (
    OPTIONS,
    DetectorName,
    FaceMode,
    FramePath,
    LogLevel,
    RuntimeName,
    load_settings,
    with_options,
)
from livefuse.errors import ConfigError
from livefuse.models.manifest import load_manifest
from livefuse.runtime.backends import RUNTIMES


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No settings from the machine's environment or user config file."""
    for name in ("CONFIG", *OPTIONS):
        monkeypatch.delenv(f"LIVEFUSE_{name.upper()}", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", "/nonexistent")


@pytest.fixture
def home(livefuse_home: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LIVEFUSE_HOME", str(livefuse_home))
    return livefuse_home


#: (option, bad value, what the error must say is allowed)
BAD_VALUES: list[tuple[str, Any, str]] = [
    ("detect_every", 0, "must be an integer from 1 to 1000"),
    ("detect_every", "often", "must be an integer from 1 to 1000"),
    ("opacity", 5, "must be a number from 0 to 1"),
    ("max_faces", 0, "must be an integer from 1 to 64"),
    ("threads", -4, "must be an integer from 0 to 256"),
    ("detect_size", 0, "must be a multiple of 32 from 32 to 4096"),
    ("detect_size", 100, "must be a multiple of 32 from 32 to 4096"),
    ("detect_threshold", 0, "must be a number above 0 and at most 1"),
    ("queue_size", 0, "must be an integer from 1 to 64"),
    ("enhance_every", 0, "must be an integer from 1 to 1000"),
    ("enhance_strength", 1.5, "must be a number from 0 to 1"),
    ("map_threshold", 2, "must be a number from -1 to 1"),
    ("sharpness", -1, "must be a number from 0 to 4"),
    ("fps", 0, "must be a number above 0 and at most 1000"),
    ("fps", "nan", "must be a number above 0 and at most 1000"),
    ("size", "641x480", "must be WIDTHxHEIGHT, both positive and even"),
    ("vram_budget", "lots", "is not a memory size"),
    ("mask", "nonsense", "unknown mask(s) nonsense: use occlusion, parser, mouth"),
    ("smooth", "maybe", "must be true or false"),
]


def _exit_code_and_error(argv: list[str], caplog: pytest.LogCaptureFixture) -> tuple[int, str]:
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="livefuse"):
        code = main(argv)
    return code, caplog.text


def _cam(*extra: str) -> list[str]:
    return ["cam", "--source", "face.jpg", *extra]


def _cam_parser() -> argparse.ArgumentParser:
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices["cam"]


def _takes_a_value(dest: str) -> bool:
    """Whether ``cam`` has a flag that takes a value for option ``dest`` (switches take none)."""
    return any(a.dest == dest and a.nargs != 0 for a in _cam_parser()._actions)


@pytest.mark.parametrize("name, value, allowed", [row for row in BAD_VALUES if _takes_a_value(row[0])])
def test_bad_value_on_the_command_line_exits_2_naming_option_value_and_range(
    name: str, value: Any, allowed: str, clean_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    flag = f"--{name.replace('_', '-')}"
    code, text = _exit_code_and_error(_cam(flag, str(value)), caplog)
    assert code == 2
    assert f"{flag} {value}: {allowed}" in text
    assert "Traceback" not in text


@pytest.mark.parametrize("name, value, allowed", BAD_VALUES)
def test_bad_value_in_the_environment_exits_2_naming_option_value_and_range(
    name: str,
    value: Any,
    allowed: str,
    clean_env: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(f"LIVEFUSE_{name.upper()}", str(value))
    code, text = _exit_code_and_error(_cam(), caplog)
    assert code == 2
    assert f"LIVEFUSE_{name.upper()}={value}: {allowed}" in text


@pytest.mark.parametrize("name, value, allowed", BAD_VALUES)
def test_bad_value_in_the_config_file_exits_2_naming_option_value_and_range(
    name: str, value: Any, allowed: str, clean_env: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "livefuse.toml"
    config.write_text(f"{name} = {json.dumps(value)}\n")
    code, text = _exit_code_and_error(["--config", str(config), *_cam()], caplog)
    assert code == 2
    assert f"config file {config}: {name} = {json.dumps(value)}: {allowed}" in text


def test_a_good_value_from_each_origin_is_stored_parsed(tmp_path: Path) -> None:
    config = tmp_path / "livefuse.toml"
    config.write_text('mask = ["mouth", "parser"]\nmap = ["a.jpg=b.jpg"]\nsize = "1280x720"\nfps = 30\n')
    env = {"LIVEFUSE_DETECT_SIZE": "320", "LIVEFUSE_PROVIDERS": "CUDAExecutionProvider, CPUExecutionProvider"}
    cli = {"map": ["r1.jpg=s1.jpg", "r2.jpg = s2.jpg"], "log_level": "debug", "swapper": "inswapper_128"}
    settings = load_settings(cli, env=env, config=config)
    assert settings.swap.masks == frozenset({"mouth", "parser"})
    assert settings.swap.mapping == (("r1.jpg", "s1.jpg"), ("r2.jpg", "s2.jpg"))  # command line beats file
    assert settings.capture.size == (1280, 720) and settings.capture.fps == 30.0
    assert settings.analysis.detect_size == 320
    assert settings.runtime.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert settings.log_level == "DEBUG"


def test_a_bad_map_entry_names_the_entry(clean_env: None, caplog: pytest.LogCaptureFixture) -> None:
    code, text = _exit_code_and_error(_cam("--map", "a.jpg=b.jpg", "--map", "nonsense"), caplog)
    assert code == 2
    assert "map entry 'nonsense' is not REF.jpg=SRC.jpg" in text


def test_a_session_choice_is_parsed_like_any_other_value() -> None:
    settings = load_settings({"swapper": "inswapper_128"}, env={})
    assert with_options(settings, {"mask": "occlusion,mouth"}).swap.masks == {"occlusion", "mouth"}
    with pytest.raises(ConfigError, match="mask lips: unknown mask"):
        with_options(settings, {"mask": "lips"})
    # The web API turns the enhancer off with null
    with_enhancer = with_options(settings, {"enhancer": "gfpgan_1.4"})
    assert with_enhancer.swap.enhancer == "gfpgan_1.4"
    assert with_options(with_enhancer, {"enhancer": None}).swap.enhancer is None


def test_options_the_mesh_swapper_cannot_use_are_refused(clean_env: None, caplog: pytest.LogCaptureFixture) -> None:
    code, text = _exit_code_and_error(_cam("--enhancer", "gfpgan_1.4", "--mask", "occlusion,mouth"), caplog)
    assert code == 2
    assert "the mesh swapper cannot use --enhancer, --mask occlusion" in text
    # mouth is the mesh swapper's own: accepted
    assert load_settings({"mask": "mouth"}, env={}).swap.masks == {"mouth"}


def test_config_that_is_a_directory_or_not_toml_is_a_one_line_error(
    clean_env: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    code, text = _exit_code_and_error(["--config", str(tmp_path), *_cam()], caplog)
    assert code == 2 and f"config file {tmp_path} is a directory" in text
    binary = tmp_path / "photo.jpg"
    binary.write_bytes(bytes(range(256)) * 4)
    code, text = _exit_code_and_error(["--config", str(binary), *_cam()], caplog)
    assert code == 2 and f"config file {binary} is not" in text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1


def test_bad_log_level_lists_the_levels(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("LIVEFUSE_LOG_LEVEL", "bogus")
    code, text = _exit_code_and_error(_cam(), caplog)
    assert code == 2
    assert "LIVEFUSE_LOG_LEVEL=bogus: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["cam", "--seconds", "-1"], "argument --seconds: -1: must be a number above 0"),
        (["serve", "--port", "70000"], "argument --port: 70000: must be an integer from 0 to 65535"),
        (["serve", "--max-sessions", "0"], "argument --max-sessions: 0: must be an integer from 1 to 64"),
        (["run", "--input", "a", "--output", "b", "--faces", "some"], "argument --faces: invalid choice: 'some'"),
    ],
)
def test_command_options_are_range_checked_too(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def _choices(dest: str) -> tuple[str, ...]:
    """The choices the ``cam`` command offers for ``dest``."""
    return tuple(next(a for a in _cam_parser()._actions if a.dest == dest).choices)


@pytest.mark.parametrize(
    "dest, kind",
    [("faces", FaceMode), ("frame_path", FramePath), ("runtime", RuntimeName), ("detector", DetectorName)],
)
def test_the_command_line_offers_the_declared_choices(dest: str, kind: Any) -> None:
    assert _choices(dest) == get_args(kind)
    assert OPTIONS[dest].parse(get_args(kind)[-1]) == get_args(kind)[-1]


def test_choices_agree_with_what_the_lower_layers_know() -> None:
    # The runtime package keeps its own table (it may not import the settings): same names, same order.
    assert get_args(RuntimeName) == tuple(RUNTIMES)
    detectors = {name for name, spec in load_manifest().items() if spec.role == "detector"}
    assert set(get_args(DetectorName)) == detectors
    assert get_args(LogLevel) == tuple(logging.getLevelName(n) for n in (10, 20, 30, 40, 50))


@pytest.mark.parametrize(
    "option, name, role", [("--swapper", "foo", "swapper"), ("--enhancer", "nonsense", "enhancer")]
)
def test_unknown_model_names_list_the_known_and_installed_ones(
    option: str, name: str, role: str, home: Path, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    swapper = () if option == "--swapper" else ("--swapper", "inswapper_128")
    argv = [
        "run",
        "--source",
        str(home / "samples" / "biden.jpg"),
        "--input",
        str(home / "samples" / "biden.jpg"),
        "--output",
        str(tmp_path / "out.mp4"),
        *swapper,
        option,
        name,
    ]
    code, text = _exit_code_and_error(argv, caplog)
    assert code == 2
    assert f"{option} {name}: not a {role}; the {role}s are " in text and "(installed: " in text
    assert not (tmp_path / "out.mp4").exists()
