"""Import rules: livefuse's packages form layers, and imports only run down them.

A module may import from its own package and from packages on a lower layer, never from the
same layer's other packages or from above. ``livefuse.testing`` (stand-ins, fake camera,
emulator) sits beside the product: tests, benchmarks and scripts import it, the product never
does. docs/architecture.md draws the same layers.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "livefuse"

#: Each top-level module or package of livefuse and its layer, lowest first.
LAYERS: dict[str, int] = {
    # the ground: small values and errors every layer uses
    "_compat": 0,
    "errors": 0,
    "scratch": 0,
    "faces": 0,
    "signals": 0,
    "progress": 0,
    "frame": 1,
    "buffers": 1,
    "geometry": 1,
    "imagefile": 1,
    # data: settings, model records and files
    "config": 2,
    "models": 2,
    # running models; where livefuse keeps its own records
    "runtime": 3,
    "state": 3,
    # the stages and what feeds them
    "face": 4,
    "pipeline": 4,
    "samples": 4,
    "engines": 4,
    "audit": 4,
    "swap": 5,
    "io": 5,
    "provenance": 5,
    # test tooling: above the stages it stands in for, imported by no product module
    "testing": 6,
    # the composition root and what is built on it
    "app": 6,
    "web": 7,
    "doctor": 7,
    # running inside a container: doctor's checks there, PID-1 signals, writable volumes
    "container": 8,
    # the job service (on the server's app and errors) and the cluster (registry, gateway) on it
    "jobs": 8,
    "cluster": 9,
    "commands": 10,
    "job_commands": 11,
    "cli": 12,
    "__main__": 13,
    # the public API re-exports from every layer
    "__init__": 14,
}


def _top(module: str) -> str | None:
    """``livefuse.swap.neural.models`` → ``swap``; None for other packages."""
    parts = module.split(".")
    if parts[0] != "livefuse":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """Every livefuse module ``path`` imports (also inside functions), with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    here = ".".join(("livefuse", *path.relative_to(PACKAGE).with_suffix("").parts))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = here.split(".")[: -node.level]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            if module == "livefuse":  # "from livefuse import web": the names are modules
                for alias in node.names:
                    yield node.lineno, f"livefuse.{alias.name}"
            else:
                yield node.lineno, module


def _owner(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def violations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        owner = _owner(path)
        for line, module in _imports(path):
            target = _top(module)
            if target is None or target == owner:
                continue
            where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}"
            if target == "testing":
                found.append(f"{where}: the product never imports livefuse.testing")
            elif LAYERS[target] >= LAYERS[owner]:
                found.append(
                    f"{where}: {owner} (layer {LAYERS[owner]}) may not import {target} (layer {LAYERS[target]})"
                )
    return found


def test_every_module_has_a_layer() -> None:
    owners = {_owner(path) for path in PACKAGE.rglob("*.py")}
    assert owners - set(LAYERS) == set(), "add new packages to LAYERS and to docs/architecture.md"


def test_imports_run_down_the_layers() -> None:
    assert violations() == []


def test_face_analysis_knows_nothing_of_swapping() -> None:
    face = [m for path in (PACKAGE / "face").rglob("*.py") for _, m in _imports(path)]
    assert [m for m in face if m.startswith(("livefuse.swap", "livefuse.app"))] == []


@pytest.mark.parametrize(
    "text, expected",
    [
        ("from livefuse.swap.mesh import MeshSwapper", "face (layer 4) may not import swap (layer 5)"),
        ("from livefuse.testing.standins import make_tiny", "the product never imports livefuse.testing"),
        ("from livefuse import app", "face (layer 4) may not import app (layer 6)"),
    ],
)
def test_a_wrong_arrow_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: str) -> None:
    fake = tmp_path / "livefuse"
    (fake / "face").mkdir(parents=True)
    (fake / "face" / "bad.py").write_text(text + "\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", fake)
    assert [v.split(": ", 1)[1] for v in violations()] == [expected]


def test_the_architecture_page_draws_the_same_layers() -> None:
    """docs/architecture.md's table names every package on the layer ``LAYERS`` gives it."""
    import re

    page = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    drawn: dict[str, int] = {}
    for layer, names in re.findall(r"^\| (\d+) \| ([^|]+) \|", page, re.M):
        for name in re.findall(r"`([^`]+)`", names):
            drawn["__init__" if name == "livefuse/__init__.py" else name] = int(layer)
    assert drawn == LAYERS
