"""The deployment files agree with the code: the images' CUDA and the drivers the README
names are the ones ``livefuse doctor`` checks against, and the images keep their promises
(non-root, /healthz, entrypoint). The images themselves are built and run by
deploy/ci/check_images.sh; the manifests are validated by deploy/ci/check_manifests.py."""

from __future__ import annotations

import re
from pathlib import Path

from livefuse.container.checks import IMAGE_CUDA_ENV
from livefuse.doctor import MINOR_COMPAT_DRIVER, needed_driver

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = (REPO / "deploy" / "Dockerfile").read_text()


def stages() -> dict[str, str]:
    """Each named stage's text."""
    parts = re.split(r"^FROM (\S+) AS (\S+)\n", DOCKERFILE, flags=re.M)
    return {parts[i + 1]: parts[i + 2] for i in range(1, len(parts) - 2, 3)}


def test_images_run_livefuse_as_uid_10001_with_a_healthz_check() -> None:
    runtime = stages()["runtime"]
    assert "USER 10001:10001" in runtime
    assert 'ENTRYPOINT ["livefuse"]' in runtime
    assert "/healthz" in runtime.split("HEALTHCHECK", 1)[1].split("\n\n")[0]
    assert "ENV LIVEFUSE_HOME=/data" in runtime
    assert list(stages())[-1] == "cpu", "a plain docker build gives the CPU image"


def test_cuda_images_declare_a_cuda_doctor_knows_and_the_readme_names_its_driver() -> None:
    readme = (REPO / "README.md").read_text()
    for target, major in (("cuda12", 12), ("cuda13", 13)):
        found = re.search(rf"{IMAGE_CUDA_ENV}=(\d+\.\d+)", stages()[target])
        assert found, f"{target} does not set {IMAGE_CUDA_ENV}"
        cuda = found[1]
        assert cuda.startswith(f"{major}.")
        floor = MINOR_COMPAT_DRIVER[major][0]
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{target}` |"))
        assert f"≥ {floor}" in row, f"README's {target} row lacks driver {floor}"
        full = needed_driver(cuda)
        assert full is not None and (full == floor or f"≥ {full}" in row)
        assert f"{major}.{cuda.split('.')[1]}" in row or cuda in row
