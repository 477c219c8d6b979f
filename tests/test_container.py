"""Container checks of ``livefuse doctor`` from recorded situations, the facts read from a fake
file tree, SIGTERM as PID 1 would get it, and a demo pointed at a directory it cannot write."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from livefuse.cli import main
from livefuse.container.checks import ContainerFacts, DirFacts, diagnose, dir_facts, gather, report_lines
from livefuse.doctor import Facts, GpuFacts, render

HOST_CPU = Facts(os="Linux-6.8.0-x86_64-with-glibc2.36", python="CPython 3.12.12", models=("centerface",))
HOST_GPU = dataclasses.replace(
    HOST_CPU, driver="580.95.05", driver_cuda="13.0", gpus=(GpuFacts("NVIDIA L4", (8, 9), 23034),)
)
DATA = DirFacts("/data", exists=True, writable=True, owner_uid=10001)
CPU_BOX = ContainerFacts(in_container=True, uid=10001, shm_bytes=2 << 30, home=DATA, workdir=DATA)
CUDA13 = dataclasses.replace(CPU_BOX, image_cuda="13.0", nvidia_devices=("nvidia0", "nvidiactl"))


def codes(box: ContainerFacts, host: Facts) -> list[tuple[str, str]]:
    return [(p.code, p.severity) for p in diagnose(box, host)]


def test_a_healthy_container_and_the_host_outside_one_report_nothing() -> None:
    assert codes(CPU_BOX, HOST_CPU) == []
    assert codes(CUDA13, HOST_GPU) == []
    outside = ContainerFacts(in_container=False, uid=0, shm_bytes=1 << 20, home=DirFacts("/x", False, False))
    assert codes(outside, dataclasses.replace(HOST_CPU, models=())) == []
    assert report_lines(outside) == []


def test_cuda_image_without_gpus_names_gpus_all_and_the_toolkit() -> None:
    box = dataclasses.replace(CUDA13, nvidia_devices=())
    [problem] = diagnose(box, HOST_CPU)
    assert (problem.code, problem.severity) == ("container-no-gpu", "error")
    assert "no /dev/nvidia* device" in problem.message
    assert "--gpus all" in problem.fix and "NVIDIA Container Toolkit" in problem.fix and "nvidia.com/gpu" in problem.fix
    assert codes(dataclasses.replace(CPU_BOX), HOST_CPU) == [], "the CPU image needs no GPU"


def test_driver_too_old_for_the_image_names_the_minimum_and_the_image_that_fits() -> None:
    old_host = dataclasses.replace(HOST_GPU, driver="550.54.14", driver_cuda="12.4")
    [problem] = diagnose(CUDA13, old_host)
    assert (problem.code, problem.severity) == ("container-driver", "error")
    assert "550.54.14" in problem.message and "CUDA 13 needs driver 580.65.06" in problem.message
    assert "cuda12 image" in problem.fix
    cuda12 = dataclasses.replace(CUDA13, image_cuda="12.9")
    assert codes(cuda12, old_host) == [], "550 runs CUDA 12.9 through minor version compatibility"
    ancient = dataclasses.replace(HOST_GPU, driver="470.256.02", driver_cuda="11.4")
    [problem] = diagnose(cuda12, ancient)
    assert "CUDA 12 needs driver 525.60.13" in problem.message and "image, which" not in problem.fix


def test_small_dev_shm_is_a_warning_with_the_size_to_ask_for() -> None:
    docker_default = 64 << 20
    [problem] = diagnose(dataclasses.replace(CUDA13, shm_bytes=docker_default), HOST_GPU)
    assert (problem.code, problem.severity) == ("container-shm", "warning")
    assert "64 MiB" in problem.message and "--shm-size=1024m" in problem.fix
    [problem] = diagnose(dataclasses.replace(CPU_BOX, shm_bytes=docker_default), HOST_CPU)
    assert "--shm-size=256m" in problem.fix
    assert codes(dataclasses.replace(CPU_BOX, shm_bytes=256 << 20), HOST_CPU) == []


def test_volume_not_writable_is_an_error_until_models_are_there() -> None:
    root_owned = DirFacts("/data", exists=True, writable=False, owner_uid=0)
    box = dataclasses.replace(CPU_BOX, home=root_owned)
    problems = diagnose(box, dataclasses.replace(HOST_CPU, models=()))
    assert [(p.code, p.severity) for p in problems] == [("container-volume", "error"), ("container-models", "warning")]
    assert "UID 10001, owned by UID 0" in problems[0].message and "chown -R 10001:10001" in problems[0].fix
    assert "models pull" in problems[1].fix
    assert codes(box, HOST_CPU) == [("container-volume", "warning")], "read-only models volume: still runs"


def test_read_only_working_directory_is_explained() -> None:
    box = dataclasses.replace(CPU_BOX, workdir=DirFacts("/", exists=True, writable=False, owner_uid=0))
    [problem] = diagnose(box, HOST_CPU)
    assert problem.code == "container-workdir" and "livefuse-demo" in problem.message and "-w /data" in problem.fix


def test_report_shows_the_container_lines_and_errors_first() -> None:
    box = dataclasses.replace(CUDA13, nvidia_devices=(), shm_bytes=64 << 20)
    text = render(HOST_CPU, diagnose(box, HOST_CPU), report_lines(box))
    assert "CUDA 13.0 image, UID 10001, /dev/shm 64 MiB" in text
    assert "GPU devices: none passed in" in text
    assert text.index("[error]") < text.index("[warning]")


def test_gather_reads_markers_devices_and_permissions(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "dev").mkdir(parents=True)
    (root / "proc/1").mkdir(parents=True)
    (root / "proc/1/cgroup").write_text("0::/\n")
    home = tmp_path / "data"
    home.mkdir()
    assert gather(home, env={}, root=root).in_container is False
    (root / "run").mkdir()
    (root / "run/.containerenv").write_text("")
    for name in ("nvidia0", "nvidiactl"):
        (root / "dev" / name).write_text("")
    facts = gather(home, env={"LIVEFUSE_IMAGE_CUDA": "12.9", "NVIDIA_VISIBLE_DEVICES": "all"}, root=root)
    assert facts.in_container and facts.image_cuda == "12.9" and facts.visible_devices == "all"
    assert facts.nvidia_devices == ("nvidia0", "nvidiactl")
    assert facts.home == DirFacts(str(home), True, True, os.getuid())
    assert gather(home, env={"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, root=tmp_path / "none").in_container
    missing = dir_facts(home / "not" / "yet")
    assert not missing.exists and missing.writable, "a missing home counts as writable when it can be created"


def test_demo_with_an_unwritable_output_fails_cleanly_before_pulling(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a-file").write_text("")
    home = tmp_path / "home"
    assert main(["demo", "--home", str(home), "--output", str(tmp_path / "a-file" / "out")]) == 2
    err = caplog.text
    assert "cannot write the demo's video and still to" in err and "--output" in err and "UID" in err
    assert not (home / "models").exists(), "nothing is downloaded for a run that cannot finish"


def test_sigterm_stops_a_command_like_ctrl_c(tmp_path: Path) -> None:
    code = """
import sys, time
import livefuse.cli as cli
from livefuse.container.process import stop_on_sigterm
stop_on_sigterm()
print("ready", flush=True)
try:
    time.sleep(30)
except KeyboardInterrupt as exc:
    print(type(exc).__name__, flush=True)
    sys.exit(130)
"""
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 130
    assert process.stdout.read().strip() == "Terminated"
    assert time.monotonic() - started < 5


def test_doctor_shows_container_lines_exactly_when_in_a_container(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["doctor", "--home", str(tmp_path), "--no-probe"])
    out = capsys.readouterr().out
    if gather(tmp_path).in_container:
        assert "CPU image" in out and "container-models" not in out and "no models are installed" in out
    else:
        assert "container" not in out
