"""Tiny stand-ins: the real interface, a small seeded computation, well under 1 MB each."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from livefuse.models.manifest import (
    ModelSpec,
)
from livefuse.testing.standins.graph import Builder, _emap, _Net

# --------------------------------------------------------------------------- tiny stand-ins


def _tiny_arcface(net: _Net, spec: ModelSpec) -> list[str]:
    # No Sub/Mul node near the top: insightface would take it for in-graph normalisation.
    x = net.leaky(net.conv(spec.inputs[0].name, 3, 8, 4, 4, 0))
    x = net.leaky(net.conv(x, 8, 8, 4, 4, 0))
    x = net.op("Flatten", net.conv(x, 8, 4, 1), axis=1)
    return [net.gemm(x, 4 * 7 * 7, 512, gain=4.0)]


def _tiny_inswapper(net: _Net, spec: ModelSpec) -> list[str]:
    target, source = net.image_input(spec.inputs[0]), net.image_input(spec.inputs[1])
    x = net.leaky(net.conv(target, 3, 8, 4, 4, 0))
    scale, shift = net.style(source, 512, 8, plus_one=True)
    x = net.leaky(net.add(net.mul(x, scale), shift))
    x = net.conv(net.resize(x, 4.0), 8, 3, 3, gain=0.5)
    # Keep the target visible (the swap of a stand-in should look like a face crop), with a
    # slope of at most 1 so that one grey level in moves the output by at most one level.
    x = net.add(x, net.mul(net.op("Sub", target, net.const(0.5)), net.const(2.0)))
    out = net.mul(net.add(net.op("Tanh", x), net.const(1.0)), net.const(0.5))
    out = net.float_output(out)
    _emap(net, spec.name + "/emap")
    return [out]


def _tiny_hyperswap(net: _Net, spec: ModelSpec) -> list[str]:
    inputs = {c.name: c for c in spec.inputs}
    source, target = inputs["source"].name, inputs["target"].name
    x = net.leaky(net.conv(target, 3, 8, 8, 8, 0))
    scale, shift = net.style(source, 512, 8, plus_one=True)
    x = net.resize(net.leaky(net.add(net.mul(x, scale), shift)), 8.0)
    image = net.op("Tanh", net.add(net.conv(x, 8, 3, 3, gain=0.5), target))  # slope <= 1, as above
    mask = net.op("Sigmoid", net.conv(x, 8, 1, 1))
    return [image, mask]


def _tiny_enhancer(net: _Net, spec: ModelSpec) -> list[str]:
    image = spec.inputs[0].name
    x = net.leaky(net.conv(image, 3, 8, 8, 8, 0))
    detail = net.op("Tanh", net.resize(net.conv(x, 8, 3, 1), 8.0))
    out = net.add(image, net.mul(detail, net.const(0.25)))
    return [net.op("Clip", out, net.const(-1.0), net.const(1.0))]


def _tiny_xseg(net: _Net, spec: ModelSpec) -> list[str]:
    x = net.op("Transpose", spec.inputs[0].name, perm=[0, 3, 1, 2])
    x = net.relu(net.conv(x, 3, 8, 8, 8, 0))
    x = net.op("Sigmoid", net.resize(net.conv(x, 8, 1, 1), 8.0))
    return [net.op("Transpose", x, perm=[0, 2, 3, 1])]


def _tiny_bisenet(net: _Net, spec: ModelSpec) -> list[str]:
    x = net.relu(net.conv(spec.inputs[0].name, 3, 8, 8, 8, 0))
    return [net.resize(net.conv(x, 8, 19, 1), 8.0, align=True) for _ in spec.outputs]


def _detector_levels(net: _Net, image: str, width: int) -> list[str]:
    f8 = net.relu(net.conv(image, 3, width, 8, 8, 0))
    f16 = net.relu(net.conv(f8, width, width, 2, 2, 0))
    f32 = net.relu(net.conv(f16, width, width, 2, 2, 0))
    return [f8, f16, f32]


def _head(net: _Net, x: str, cin: int, cols: int, anchors: int, *, score: bool, batch: bool) -> str:
    y = net.conv(x, cin, anchors * cols, 1)
    if score:
        # Mostly low scores, like a real detector on an empty image.
        y = net.op("Sigmoid", net.add(y, net.const(-4.0)))
    return net.to_nhwc_rows(y, cols, batch_dim=batch)


def _tiny_scrfd(net: _Net, spec: ModelSpec) -> list[str]:
    levels = _detector_levels(net, spec.inputs[0].name, 8)
    scores = [_head(net, f, 8, 1, 2, score=True, batch=False) for f in levels]
    boxes = [_head(net, f, 8, 4, 2, score=False, batch=False) for f in levels]
    kps = [_head(net, f, 8, 10, 2, score=False, batch=False) for f in levels]
    return scores + boxes + kps


def _tiny_yunet(net: _Net, spec: ModelSpec) -> list[str]:
    image = net.mul(spec.inputs[0].name, net.const(1.0 / 255.0))  # the input is raw 0..255
    levels = _detector_levels(net, image, 8)
    cls = [_head(net, f, 8, 1, 1, score=True, batch=True) for f in levels]
    obj = [_head(net, f, 8, 1, 1, score=True, batch=True) for f in levels]
    boxes = [_head(net, f, 8, 4, 1, score=False, batch=True) for f in levels]
    kps = [_head(net, f, 8, 10, 1, score=False, batch=True) for f in levels]
    return cls + obj + boxes + kps


_TINY: Mapping[str, Builder] = MappingProxyType(
    {
        "arcface": _tiny_arcface,
        "inswapper": _tiny_inswapper,
        "hyperswap": _tiny_hyperswap,
        "gfpgan": _tiny_enhancer,
        "gpen": _tiny_enhancer,
        "xseg": _tiny_xseg,
        "bisenet": _tiny_bisenet,
        "scrfd": _tiny_scrfd,
        "yunet": _tiny_yunet,
    }
)
