"""Neural stages from manifest records: the only place that reads a record's ``io`` table."""

from __future__ import annotations

from typing import Any

import numpy as np

from livefuse.errors import ConfigError
from livefuse.geometry.crop import CropSpec

#: The role each neural setting must name.
ROLES = {"swapper": "swapper", "enhancer": "enhancer", "occlusion": "occluder", "parser": "parser"}


def crop_spec(spec: Any) -> CropSpec:
    """The ``CropSpec`` a record's ``io`` table describes."""
    io = spec.io
    if io is None:
        raise ConfigError(f"model {spec.name!r} has no io table in the manifest")
    template = io.template_points if io.template_points is not None else np.zeros((5, 2))
    out_range = io.output_range or (0.0, 1.0)
    return CropSpec(
        size=int(io.size),
        template=np.asarray(template, np.float64),
        mean=np.asarray(io.mean, np.float32),
        std=np.asarray(io.std, np.float32),
        rgb=io.colour == "RGB",
        nchw=io.layout == "NCHW",
        output_range=(float(out_range[0]), float(out_range[1])),
    )


def check_role(spec: Any, setting: str) -> None:
    """A clear error when e.g. ``--swapper gfpgan_1.4`` names a model of another role."""
    want = ROLES[setting]
    if spec.role != want:
        raise ConfigError(f"{spec.name!r} is a {spec.role} model, not a {want}; pass a {want} to --{setting}")
