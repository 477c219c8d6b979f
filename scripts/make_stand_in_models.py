#!/usr/bin/env python3
"""Write stand-in ONNX models for livefuse's optional neural models.

--tiny      tiny stand-ins with the real interfaces (tests; < 1 MB each, milliseconds to run)
--faithful  architecture-faithful stand-ins with random weights (benchmarks; big: inswapper_128
            is 554 MB), with their parameter count and MACs per run

Files go to OUT/tiny and OUT/faithful (default OUT: .cache/standins, which git ignores).
Examples:
    python scripts/make_stand_in_models.py --tiny
    python scripts/make_stand_in_models.py --faithful --only inswapper_128,w600k_r50
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from livefuse.testing import standins

DEFAULT_OUT = Path(__file__).resolve().parents[1] / ".cache" / "standins"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="write the tiny stand-ins")
    parser.add_argument("--faithful", action="store_true", help="write the architecture-faithful stand-ins")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument(
        "--only", default="", metavar="NAME,...", help=f"comma-separated subset of: {', '.join(standins.STANDIN_NAMES)}"
    )
    return parser


def _names(parser: argparse.ArgumentParser, only: str) -> list[str]:
    names = [n.strip() for n in only.split(",") if n.strip()] or list(standins.STANDIN_NAMES)
    unknown = [n for n in names if n not in standins.STANDIN_NAMES]
    if unknown:
        parser.error(f"no stand-in for {', '.join(unknown)}; choose from {', '.join(standins.STANDIN_NAMES)}")
    return names


def _tiny(names: list[str], out: Path) -> None:
    for name in names:
        path = standins.make_tiny(name, out)
        print(f"{name:<20} {path.stat().st_size / 1e3:9.1f} kB  {path}")


def _faithful(names: list[str], out: Path) -> None:
    print(f"{'model':<20} {'params':>10} {'GMAC/run':>9} {'size':>9} {'build':>7}  file")
    for name in names:
        cost = standins.faithful_model(name, shapes_only=True)
        params = standins.count_params(cost, exclude=("emap",))
        macs = standins.count_macs(cost)
        start = time.perf_counter()
        path = standins.make_faithful(name, out)
        took = time.perf_counter() - start
        print(
            f"{name:<20} {params / 1e6:9.2f}M {macs / 1e9:9.2f} {path.stat().st_size / 1e6:7.1f}MB {took:6.1f}s  {path}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not (args.tiny or args.faithful):
        parser.error("say what to write: --tiny, --faithful or both")
    names = _names(parser, args.only)
    if args.tiny:
        _tiny(names, args.out / "tiny")
    if args.faithful:
        _faithful(names, args.out / "faithful")
    return 0


if __name__ == "__main__":
    sys.exit(main())
