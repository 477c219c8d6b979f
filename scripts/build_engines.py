#!/usr/bin/env python3
"""Build FP16 TensorRT engines for livefuse's installed models, on the GPU that will run them.

Engines go to HOME/engines as <model>-<onnx sha256[:12]>-trt<version>-sm<cc>-fp16.engine with a
JSON record next to each (inputs, batch profiles, the layers kept in FP32, build time, TensorRT
version, GPU). Engines that already fit this machine are skipped (--force rebuilds them).
Examples:
    python scripts/build_engines.py                       # every installed model
    python scripts/build_engines.py --model inswapper_128 --max-batch 4
    python scripts/build_engines.py --model inswapper_128_fp16 --weight-streaming

Exit status: 0 all built or up to date, 1 a model failed or TensorRT/GPU is missing, 2 bad options.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from livefuse.config import load_settings
from livefuse.engines.build import BuildResult, build_engines
from livefuse.engines.plan import build_parser, options_from_args
from livefuse.errors import ConfigError, LivefuseError

log = logging.getLogger("livefuse")


def _report(results: Sequence[BuildResult]) -> None:
    for result in results:
        where = f" {result.engine}" if result.engine else ""
        print(f"{result.model:<20} {result.status:<10}{where}")
        if result.message and result.status != "failed":
            print(f"{'':<20} {result.message}")


def resolve_home(home: Path | None) -> Path | None:
    """``--home``, else the config file's or environment's ``home`` (as the CLI reads it), else
    None (the default home)."""
    if home is not None:
        return Path(home).expanduser()
    configured = load_settings({}).runtime.home
    return Path(configured).expanduser() if configured else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parser.description, parser.formatter_class = __doc__, argparse.RawDescriptionHelpFormatter
    args = parser.parse_args(argv)
    try:
        options = options_from_args(args)
        options = dataclasses.replace(options, home=resolve_home(options.home))
    except ConfigError as exc:
        parser.error(str(exc))  # usage and exit status 2, as for any other bad option
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        results = build_engines(options)
    except LivefuseError as exc:
        log.error("%s", exc)
        return 1
    _report(results)
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
