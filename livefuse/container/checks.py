"""Container checks for ``livefuse doctor``.

:func:`gather` reads :class:`ContainerFacts` from the running container (marker files, the
image's CUDA from ``$LIVEFUSE_IMAGE_CUDA``, /dev/nvidia*, /dev/shm, the volumes' permissions);
:func:`diagnose` is pure, so every situation is tested from recorded facts. Outside a container
nothing is reported: the host checks in :mod:`livefuse.doctor` cover that case.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from livefuse.doctor import MINOR_COMPAT_DRIVER, Facts, Problem, needed_driver, version_tuple

#: Set by the CUDA images (``deploy/Dockerfile``): the CUDA their wheels are built for, e.g. "12.9".
IMAGE_CUDA_ENV = "LIVEFUSE_IMAGE_CUDA"
#: Docker's default /dev/shm is 64 MiB. NCCL, PyTorch's shared tensors and CUDA IPC live there;
#: below these sizes they fail with "No space left on device" or bus errors mid-job.
SHM_NEEDED_CPU = 256 << 20
SHM_NEEDED_GPU = 1 << 30
_MARKERS = ("/.dockerenv", "/run/.containerenv")


@dataclass(frozen=True, slots=True)
class DirFacts:
    """A directory the container's user needs: does it exist, may the user write it, who owns it."""

    path: str
    exists: bool
    writable: bool
    owner_uid: int | None = None


@dataclass(frozen=True, slots=True)
class ContainerFacts:
    """What the container checks look at. ``in_container`` False means: report nothing."""

    in_container: bool
    uid: int
    image_cuda: str | None = None
    "The CUDA the image is built for; None for the CPU image."
    nvidia_devices: tuple[str, ...] = ()
    "The /dev/nvidia* nodes the runtime passed in (none without --gpus or the toolkit)."
    visible_devices: str | None = None
    "$NVIDIA_VISIBLE_DEVICES as the container sees it."
    shm_bytes: int | None = None
    home: DirFacts | None = None
    workdir: DirFacts | None = None


def gather(home: Path, env: Mapping[str, str] | None = None, root: Path = Path("/")) -> ContainerFacts:
    """The facts of the container this runs in (``root`` is for tests on a fake file tree)."""
    env = os.environ if env is None else env
    dev = root / "dev"
    nvidia = tuple(sorted(p.name for p in dev.glob("nvidia*"))) if dev.is_dir() else ()
    return ContainerFacts(
        in_container=_in_container(env, root),
        uid=os.getuid(),
        image_cuda=env.get(IMAGE_CUDA_ENV) or None,
        nvidia_devices=nvidia,
        visible_devices=env.get("NVIDIA_VISIBLE_DEVICES"),
        shm_bytes=_shm_bytes(dev / "shm"),
        home=dir_facts(home),
        workdir=dir_facts(Path.cwd()),
    )


def _in_container(env: Mapping[str, str], root: Path) -> bool:
    if env.get("container") or env.get("KUBERNETES_SERVICE_HOST"):
        return True
    if any((root / m.lstrip("/")).exists() for m in _MARKERS):
        return True
    try:
        cgroup = (root / "proc/1/cgroup").read_text()
    except OSError:
        return False
    return any(word in cgroup for word in ("docker", "kubepods", "containerd", "libpod"))


def _shm_bytes(shm: Path) -> int | None:
    try:
        stat = os.statvfs(shm)
    except OSError:
        return None
    return stat.f_blocks * stat.f_frsize


def dir_facts(path: Path) -> DirFacts:
    """Whether ``path`` (or, when missing, the directory that would hold it) is writable."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        owner: int | None = probe.stat().st_uid
    except OSError:
        owner = None
    return DirFacts(str(path), path.is_dir(), os.access(probe, os.W_OK | os.X_OK), owner)


# --------------------------------------------------------------------------- diagnosis


def diagnose(box: ContainerFacts, host: Facts) -> list[Problem]:
    """The container's problems, each with its fix; none outside a container. Pure."""
    if not box.in_container:
        return []
    found = [_gpu(box, host), _driver(box, host), _shm(box), *_volumes(box, host), _models(box, host)]
    return [p for p in found if p is not None]


def _gpu(box: ContainerFacts, host: Facts) -> Problem | None:
    if box.image_cuda is None or host.gpus or host.runtime.gpus:
        return None
    passed = (
        "the runtime passed in no /dev/nvidia* device"
        if not box.nvidia_devices
        else (f"{', '.join(box.nvidia_devices)} are there but no GPU answers")
    )
    return Problem(
        "container-no-gpu",
        "error",
        f"this is the CUDA {box.image_cuda} image but no GPU is visible ({passed}); livefuse would "
        "run on the CPU, slowly",
        "start the container with GPU access: 'docker run --gpus all …' (needs the NVIDIA Container "
        "Toolkit on the host: check 'nvidia-ctk --version' and 'docker info | grep -i nvidia'), "
        "'podman run --device nvidia.com/gpu=all …' (CDI), or in Kubernetes request "
        "'nvidia.com/gpu: 1' with the NVIDIA device plugin installed; with no GPU, use the cpu image",
    )


def _driver(box: ContainerFacts, host: Facts) -> Problem | None:
    if box.image_cuda is None or host.driver is None:
        return None
    major = version_tuple(box.image_cuda)[0]
    floor = MINOR_COMPAT_DRIVER.get(major, (None, None))[0]
    if floor is None or version_tuple(host.driver) >= version_tuple(floor):
        return None
    other = _image_for_driver(host.driver)
    alternative = f", or use the {other} image, which this driver runs" if other else ""
    full = needed_driver(box.image_cuda)
    every = f" ({full} for every feature)" if full and full != floor else ""
    return Problem(
        "container-driver",
        "error",
        f"the host's NVIDIA driver {host.driver} is too old for this image's CUDA {box.image_cuda}: "
        f"CUDA {major} needs driver {floor} or newer{every}",
        f"update the NVIDIA driver on the host (the container uses the host's driver){alternative}",
    )


def _image_for_driver(driver: str) -> str | None:
    """The newest image (cuda13, cuda12) whose CUDA this driver runs."""
    for major in (13, 12):
        floor = MINOR_COMPAT_DRIVER.get(major, (None, None))[0]
        if floor is not None and version_tuple(driver) >= version_tuple(floor):
            return f"cuda{major}"
    return None


def _shm(box: ContainerFacts) -> Problem | None:
    need = SHM_NEEDED_GPU if box.image_cuda else SHM_NEEDED_CPU
    if box.shm_bytes is None or box.shm_bytes >= need:
        return None
    return Problem(
        "container-shm",
        "warning",
        f"/dev/shm is {_mib(box.shm_bytes)} (Docker's default is 64 MiB); this image's jobs want at least "
        f"{_mib(need)}: NCCL, PyTorch's shared tensors and CUDA IPC fail mid-job with 'No space left on device'",
        f"start the container with --shm-size={need >> 20}m (compose: shm_size; Kubernetes: an emptyDir "
        "with medium: Memory mounted at /dev/shm)",
    )


def _volumes(box: ContainerFacts, host: Facts) -> list[Problem]:
    out = []
    home = box.home
    if home is not None and not home.writable:
        needed = not host.models
        owner = f", owned by UID {home.owner_uid}" if home.owner_uid is not None else ""
        out.append(
            Problem(
                "container-volume",
                "error" if needed else "warning",
                f"{home.path} (LIVEFUSE_HOME) is not writable by this container's user (UID {box.uid}{owner}): "
                + ("models cannot be pulled into it" if needed else "models are there, but nothing new can be saved"),
                f"on the host: chown -R {box.uid}:{box.uid} <the directory you mount>, or use a named volume "
                f"(docker volume create), or start the container with --user $(id -u) matching the owner",
            )
        )
    work = box.workdir
    if work is not None and not work.writable:
        out.append(
            Problem(
                "container-workdir",
                "warning",
                f"the working directory {work.path} is not writable (UID {box.uid}): outputs given as relative "
                "paths (livefuse demo's livefuse-demo/, run --output x.mp4) cannot be written",
                "give absolute output paths on a mounted volume (e.g. /data/out.mp4), or -w /data",
            )
        )
    return out


def _models(box: ContainerFacts, host: Facts) -> Problem | None:
    if host.models:
        return None
    where = box.home.path if box.home else "LIVEFUSE_HOME"
    return Problem(
        "container-models",
        "warning",
        f"no models are installed in {where}/models: every start would first have to download them",
        f"fill the models volume once: docker run --rm -v livefuse-models:{where} IMAGE models pull "
        "(offline: models pull --from DIR), then mount it in every container",
    )


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"


def report_lines(box: ContainerFacts) -> Sequence[str]:
    """The doctor report's lines about the container (none outside one)."""
    if not box.in_container:
        return []
    image = f"CUDA {box.image_cuda}" if box.image_cuda else "CPU"
    gpus = ", ".join(box.nvidia_devices) or "none passed in"
    shm = _mib(box.shm_bytes) if box.shm_bytes is not None else "-"
    home = box.home
    volume = f"{home.path} ({'writable' if home.writable else 'NOT writable'})" if home else "-"
    return [
        f"  {'container':<14} {image} image, UID {box.uid}, /dev/shm {shm}",
        f"  {'':<14} GPU devices: {gpus}; LIVEFUSE_HOME {volume}",
    ]
