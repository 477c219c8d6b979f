"""Architecture-faithful stand-ins: random weights in the real layer structure (parameter count and
compute as the real models), for benchmarks."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

from livefuse.models.manifest import (
    ModelSpec,
)
from livefuse.testing.standins.graph import Builder, _emap, _Net
from livefuse.testing.standins.tiny import _head

# --------------------------------------------------------------------------- faithful: swappers


def _faithful_inswapper(net: _Net, spec: ModelSpec) -> list[str]:
    """inswapper_128 exactly as contracts §1.7/§1.8: 138,292,739 parameters, 174.58 GMAC."""
    target, source = net.image_input(spec.inputs[0]), net.image_input(spec.inputs[1])
    eps = 1e-7 if net.dtype == np.float16 else 1e-8  # fp16 clamps 1e-8 (contracts §1.2)
    x = net.leaky(net.conv(net.reflect_pad(target, 3), 3, 128, 7, p=0))
    x = net.leaky(net.conv(x, 128, 256, 3))
    x = net.leaky(net.conv(x, 256, 512, 3, 2))
    x = net.leaky(net.conv(x, 512, 1024, 3, 2))
    for _ in range(6):
        y = net.inorm(net.conv(net.reflect_pad(x, 1), 1024, 1024, 3, p=0), eps)
        scale, shift = net.style(source, 512, 1024)
        y = net.relu(net.add(net.mul(y, scale), shift))
        y = net.inorm(net.conv(net.reflect_pad(y, 1), 1024, 1024, 3, p=0), eps)
        scale, shift = net.style(source, 512, 1024)
        x = net.add(x, net.add(net.mul(y, scale), shift))
    x = net.leaky(net.conv(net.resize(x, 2.0), 1024, 512, 3))
    x = net.leaky(net.conv(net.resize(x, 2.0), 512, 256, 3))
    x = net.leaky(net.conv(x, 256, 128, 3))
    x = net.op("Tanh", net.conv(net.reflect_pad(x, 3), 128, 3, 7, p=0))
    out = net.float_output(net.op("Div", net.add(x, net.const(1.0)), net.const(2.0)))
    _emap(net, spec.name + "/emap")
    return [out]


def _faithful_simswap(net: _Net, spec: ModelSpec) -> list[str]:
    """SimSwap's Generator_Adain_Upsample at 256 (9 AdaIN blocks): ≈62.9 GMAC, ≈55 M params.

    HyperSwap's architecture is closed; this is the public model of the same class and size.
    """
    inputs = {c.name: c.name for c in spec.inputs}
    source, target = inputs["source"], inputs["target"]
    x = net.relu(net.conv(net.reflect_pad(target, 3), 3, 64, 7, p=0))  # BN folded into biases
    for cin, cout in ((64, 128), (128, 256), (256, 512)):
        x = net.relu(net.conv(x, cin, cout, 3, 2))
    for _ in range(9):
        y = net.inorm(net.conv(net.reflect_pad(x, 1), 512, 512, 3, p=0), 1e-8)
        scale, shift = net.style(source, 512, 512, plus_one=True)
        y = net.relu(net.add(net.mul(y, scale), shift))
        y = net.inorm(net.conv(net.reflect_pad(y, 1), 512, 512, 3, p=0), 1e-8)
        scale, shift = net.style(source, 512, 512, plus_one=True)
        x = net.add(x, net.add(net.mul(y, scale), shift))
    for cin, cout in ((512, 256), (256, 128), (128, 64)):
        x = net.relu(net.conv(net.resize(x, 2.0), cin, cout, 3))
    image = net.op("Tanh", net.conv(net.reflect_pad(x, 3), 64, 3, 7, p=0))
    mask = net.op("Sigmoid", net.conv(x, 64, 1, 3))
    return [image, mask]


# --------------------------------------------------------------------------- faithful: ArcFace


def _iresnet_block(net: _Net, x: str, cin: int, planes: int, stride: int) -> str:
    y = net.conv(net.bn(x, cin), cin, planes, 3)  # bn2 folded into this conv's bias
    y = net.conv(net.prelu(y, planes), planes, planes, 3, stride, gain=0.5)  # bn3 folded
    skip = x if stride == 1 and cin == planes else net.conv(x, cin, planes, 1, stride, 0)
    return net.add(y, skip)


def _faithful_arcface(net: _Net, spec: ModelSpec) -> list[str]:
    """IResNet-50 (layers 3/4/14/3): ≈6.31 GMAC and ≈43.6 M parameters at 112 px."""
    x = net.prelu(net.conv(spec.inputs[0].name, 3, 64, 3), 64)
    cin = 64
    for planes, blocks in ((64, 3), (128, 4), (256, 14), (512, 3)):
        for i in range(blocks):
            x = _iresnet_block(net, x, cin, planes, 2 if i == 0 else 1)
            cin = planes
    x = net.op("Flatten", net.bn(x, 512), axis=1)
    return [net.gemm(x, 512 * 7 * 7, 512)]  # the features BatchNorm1d is folded into the fc


# --------------------------------------------------------------------------- faithful: GFPGAN


def _res_block(net: _Net, x: str, cin: int, cout: int, factor: float) -> str:
    """GFPGANv1Clean's ResBlock: conv, resample, conv, plus a resampled 1x1 skip."""
    y = net.leaky(net.conv(x, cin, cin, 3))
    y = net.leaky(net.conv(net.resize(y, factor), cin, cout, 3))
    return net.add(y, net.conv(net.resize(x, factor), cin, cout, 1, bias=False))


def _mod_conv(net: _Net, x: str, w: str, cin: int, cout: int, k: int, *, act: bool = True) -> str:
    """StyleGAN2's modulated conv, approximated as scale-by-style, conv, demodulation scale."""
    scale = net.reshape(net.gemm(w, 512, cin, bias_mean=1.0, gain=0.1), [1, cin, 1, 1])
    y = net.conv(net.mul(x, scale), cin, cout, k, bias=False)
    y = net.add(net.mul(y, net.param([1, cout, 1, 1], 0.01, 1.0)), net.param([1, cout, 1, 1], 0.01))
    return net.leaky(y) if act else y


def _latent(net: _Net, latents: str, i: int) -> str:
    return net.op("Gather", latents, net.const(i, np.int64), axis=1)


# Channels per resolution: GFPGANv1Clean's U-Net (narrow 0.5) and StyleGAN2 decoder (x2).
_GFPGAN_UNET = MappingProxyType({4: 256, 8: 256, 16: 256, 32: 256, 64: 256, 128: 128, 256: 64, 512: 32})
_STYLEGAN = MappingProxyType({4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64})


def _gfpgan_encoder(net: _Net, image: str) -> tuple[str, list[str]]:
    feat = net.leaky(net.conv(image, 3, _GFPGAN_UNET[512], 1))
    skips: list[str] = []
    for res in (512, 256, 128, 64, 32, 16, 8):
        feat = _res_block(net, feat, _GFPGAN_UNET[res], _GFPGAN_UNET[res // 2], 0.5)
        skips.insert(0, feat)
    return net.leaky(net.conv(feat, 256, 256, 3)), skips


def _gfpgan_conditions(net: _Net, feat: str, skips: list[str]) -> list[tuple[str, str]]:
    conditions = []
    for i, res in enumerate((8, 16, 32, 64, 128, 256, 512)):
        cin, c = _GFPGAN_UNET[res // 2], _GFPGAN_UNET[res]
        feat = _res_block(net, net.add(feat, skips[i]), cin, c, 2.0)
        scale = net.conv(net.leaky(net.conv(feat, c, c, 3)), c, c, 3)
        shift = net.conv(net.leaky(net.conv(feat, c, c, 3)), c, c, 3)
        conditions.append((scale, shift))
    return conditions


def _faithful_gfpgan(net: _Net, spec: ModelSpec) -> list[str]:
    """GFPGANv1Clean as v1.4 configures it (512 px, channel multiplier 2, SFT on half the
    channels, 16 latents): U-Net encoder, SFT conditions and a StyleGAN2 decoder whose
    modulated convs are approximated by conv + scales. ≈198 GMAC."""
    feat, skips = _gfpgan_encoder(net, spec.inputs[0].name)
    latents = net.reshape(net.gemm(net.op("Flatten", feat, axis=1), 256 * 16, 16 * 512), [1, 16, 512])
    conditions = _gfpgan_conditions(net, feat, skips)
    out = _mod_conv(net, net.param([1, 512, 4, 4], 1.0), _latent(net, latents, 0), 512, 512, 3)
    rgb = _mod_conv(net, out, _latent(net, latents, 1), 512, 3, 1, act=False)
    for level, res in enumerate((8, 16, 32, 64, 128, 256, 512)):
        cin, c, i = _STYLEGAN[res // 2], _STYLEGAN[res], 1 + 2 * level
        out = _mod_conv(net, net.resize(out, 2.0), _latent(net, latents, i), cin, c, 3)
        same, sft = net.ops("Split", [out, net.const([c // 2, c // 2], np.int64)], 2, axis=1)
        scale, shift = conditions[level]
        out = net.op("Concat", same, net.add(net.mul(sft, scale), shift), axis=1)
        out = _mod_conv(net, out, _latent(net, latents, i + 1), c, c, 3)
        rgb = net.add(net.resize(rgb, 2.0), _mod_conv(net, out, _latent(net, latents, i + 2), c, 3, 1, act=False))
    return [net.op("Clip", rgb, net.const(-1.0), net.const(1.0))]


def _gpen(net: _Net, spec: ModelSpec, size: int, channels: Mapping[int, int]) -> list[str]:
    """GPEN's FullGenerator shape: a strided-conv encoder whose features are concatenated into
    a StyleGAN2 decoder (so decoder convs read twice the channels)."""
    feats = [net.leaky(net.conv(spec.inputs[0].name, 3, channels[size], 1))]
    res = size
    while res > 4:
        feats.append(net.leaky(net.conv(feats[-1], channels[res], channels[res // 2], 3, 2)))
        res //= 2
    flat = net.op("Flatten", feats[-1], axis=1)
    latent = net.gemm(flat, channels[4] * 16, 512)
    out = _mod_conv(
        net,
        net.op("Concat", net.param([1, channels[4], 4, 4], 1.0), feats[-1], axis=1),
        latent,
        2 * channels[4],
        channels[4],
        3,
    )
    rgb = _mod_conv(net, out, latent, channels[4], 3, 1, act=False)
    res, skip = 8, len(feats) - 2
    while res <= size:
        cin, c = channels[res // 2], channels[res]
        out = _mod_conv(net, net.resize(out, 2.0), latent, cin, c, 3)
        out = _mod_conv(net, net.op("Concat", out, feats[skip], axis=1), latent, c + channels[res], c, 3)
        rgb = net.add(net.resize(rgb, 2.0), _mod_conv(net, out, latent, c, 3, 1, act=False))
        res, skip = res * 2, skip - 1
    return [net.op("Clip", rgb, net.const(-1.0), net.const(1.0))]


def _faithful_gpen(net: _Net, spec: ModelSpec) -> list[str]:
    size = int(spec.inputs[0].shape[-1])
    if size == 512:  # channel multiplier 2
        channels = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64}
    else:  # GPEN-BFR-256: channel multiplier 1, narrow 0.5
        channels = {4: 256, 8: 256, 16: 256, 32: 256, 64: 128, 128: 64, 256: 32}
    return _gpen(net, spec, size, channels)


# --------------------------------------------------------------------------- faithful: masks


def _frn_tlu(net: _Net, x: str, c: int) -> str:
    """DeepFaceLab's FRN + TLU, with the ops of the XSeg export."""
    nu2 = net.op("GlobalAveragePool", net.mul(x, x))
    x = net.mul(x, net.op("Reciprocal", net.op("Sqrt", net.add(nu2, net.const(1e-6)))))
    x = net.add(net.mul(x, net.param([1, c, 1, 1], 0.01, 1.0)), net.param([1, c, 1, 1], 0.01))
    return net.op("Max", x, net.param([1, c, 1, 1], 0.01, -1.0))


def _xseg_conv(net: _Net, x: str, cin: int, cout: int) -> str:
    return _frn_tlu(net, net.conv(x, cin, cout, 3), cout)


def _blur_pool(net: _Net, x: str, c: int) -> str:
    kernel = np.outer([1.0, 3.0, 3.0, 1.0], [1.0, 3.0, 3.0, 1.0]) / 64.0
    weight = net.const(np.broadcast_to(kernel, (c, 1, 4, 4)).copy())
    padded = net.op("Pad", x, net.const([0, 0, 1, 1, 0, 0, 2, 2], np.int64), mode="reflect")
    return net.op("Conv", padded, weight, kernel_shape=[4, 4], strides=[2, 2], group=c)


def _faithful_xseg(net: _Net, spec: ModelSpec) -> list[str]:
    """DeepFaceLab's XSegNet (base 32 channels, 256 px): blur-pool U-Net with a dense bottleneck."""
    x = net.op("Transpose", spec.inputs[0].name, perm=[0, 3, 1, 2])
    plan = ((3, 32, 2), (32, 64, 2), (64, 128, 2), (128, 256, 3), (256, 256, 3), (256, 256, 3))
    skips: list[str] = []
    for cin, cout, convs in plan:
        x = _xseg_conv(net, x, cin, cout)
        for _ in range(convs - 1):
            x = _xseg_conv(net, x, cout, cout)
        skips.append(x)
        x = _blur_pool(net, x, cout)
    x = net.op("MatMul", net.op("Flatten", x, axis=1), net.param([4096, 512], 1 / 64))
    x = net.op("MatMul", x, net.param([512, 4096], 1 / math.sqrt(512)))
    x = net.reshape(x, [1, 256, 4, 4])
    cin = 256
    for (_, cout, convs), skip in zip(reversed(plan), reversed(skips), strict=True):
        up = min(cout, 128)
        x = _frn_tlu(net, net.deconv(x, cin, up, 3, 2, 1, 1), up)
        x = _xseg_conv(net, net.op("Concat", x, skip, axis=1), up + cout, cout)
        for _ in range(convs - 1):
            x = _xseg_conv(net, x, cout, cout)
        cin = cout
    x = net.op("Sigmoid", net.conv(x, 32, 1, 3))
    return [net.op("Transpose", x, perm=[0, 2, 3, 1])]


def _basic_block(net: _Net, x: str, cin: int, cout: int, stride: int) -> str:
    y = net.conv(net.relu(net.conv(x, cin, cout, 3, stride)), cout, cout, 3)
    skip = x if stride == 1 and cin == cout else net.conv(x, cin, cout, 1, stride, 0)
    return net.relu(net.add(y, skip))


def _resnet34(net: _Net, image: str) -> tuple[str, str, str]:
    x = net.relu(net.conv(image, 3, 64, 7, 2))
    x = net.op("MaxPool", x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    feats, cin = [], 64
    for cout, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for i in range(blocks):
            x = _basic_block(net, x, cin, cout, 2 if i == 0 and cout != 64 else 1)
            cin = cout
        feats.append(x)
    return feats[1], feats[2], feats[3]


def _arm(net: _Net, x: str, cin: int) -> str:
    feat = net.relu(net.conv(x, cin, 128, 3))
    attention = net.op("Sigmoid", net.conv(net.op("GlobalAveragePool", feat), 128, 128, 1))
    return net.mul(feat, attention)


def _faithful_bisenet(net: _Net, spec: ModelSpec) -> list[str]:
    """BiSeNet with a ResNet-34 backbone as yakhyo/face-parsing builds it (BN folded)."""
    feat8, feat16, feat32 = _resnet34(net, spec.inputs[0].name)
    avg = net.relu(net.conv(net.op("GlobalAveragePool", feat32), 512, 128, 1))
    up32 = net.add(_arm(net, feat32, 512), net.resize(avg, 16.0, mode="nearest"))
    cp16 = net.relu(net.conv(net.resize(up32, 2.0, mode="nearest"), 128, 128, 3))
    up16 = net.add(_arm(net, feat16, 256), cp16)
    cp8 = net.relu(net.conv(net.resize(up16, 2.0, mode="nearest"), 128, 128, 3))
    fused = net.relu(net.conv(net.op("Concat", feat8, cp8, axis=1), 256, 256, 1))
    gate = net.relu(net.conv(net.op("GlobalAveragePool", fused), 256, 64, 1, bias=False))
    gate = net.op("Sigmoid", net.conv(gate, 64, 256, 1, bias=False))
    fused = net.add(net.mul(fused, gate), fused)
    heads = ((fused, 256, 256, 8.0), (cp8, 128, 64, 8.0), (cp16, 128, 64, 16.0))
    outs = []
    for x, cin, mid, factor in heads:
        y = net.conv(net.relu(net.conv(x, cin, mid, 3)), mid, 19, 1, bias=False)
        outs.append(net.resize(y, factor, align=True))
    return outs


# --------------------------------------------------------------------------- faithful: detectors


def _faithful_scrfd(net: _Net, spec: ModelSpec) -> list[str]:
    """SCRFD-10G-KPS: ResNet-v1e basic blocks (3,4,2,3) with planes 56/88/88/224, a 56-channel
    PAFPN and a head of 3 stacked 80-channel convs per stride (BN folded)."""
    x = net.relu(net.conv(spec.inputs[0].name, 3, 28, 3, 2))
    x = net.relu(net.conv(net.relu(net.conv(x, 28, 28, 3)), 28, 56, 3))
    x = net.op("MaxPool", x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    feats, cin = [], 56
    for i, (cout, blocks) in enumerate(((56, 3), (88, 4), (88, 2), (224, 3))):
        for b in range(blocks):
            x = _basic_block(net, x, cin, cout, 2 if b == 0 and i > 0 else 1)
            cin = cout
        feats.append(x)
    lat = [net.conv(f, c, 56, 1) for f, c in zip(feats[1:], (88, 88, 224), strict=True)]
    lat[1] = net.add(lat[1], net.resize(lat[2], 2.0, mode="nearest"))
    lat[0] = net.add(lat[0], net.resize(lat[1], 2.0, mode="nearest"))
    outs = [net.conv(t, 56, 56, 3) for t in lat]
    outs[1] = net.add(outs[1], net.conv(outs[0], 56, 56, 3, 2))
    outs[2] = net.add(outs[2], net.conv(outs[1], 56, 56, 3, 2))
    levels = [net.conv(t, 56, 56, 3) for t in outs]
    heads = []
    for f in levels:
        for cin in (56, 80, 80):
            f = net.relu(net.conv(f, cin, 80, 3))
        heads.append(f)
    scores = [_head(net, f, 80, 1, 2, score=True, batch=False) for f in heads]
    boxes = [_head(net, f, 80, 4, 2, score=False, batch=False) for f in heads]
    kps = [_head(net, f, 80, 10, 2, score=False, batch=False) for f in heads]
    return scores + boxes + kps


def _dp_unit(net: _Net, x: str, cin: int, cout: int) -> str:
    """YuNet's ConvDPUnit: a 1x1 conv then a depthwise 3x3 conv."""
    return net.relu(net.conv(net.conv(x, cin, cout, 1), cout, cout, 3, group=cout))


def _faithful_yunet(net: _Net, spec: ModelSpec) -> list[str]:
    """YuNet-n (2023mar): depthwise-separable backbone 16/64 channels, tiny FPN, shared heads."""
    x = net.relu(net.conv(spec.inputs[0].name, 3, 16, 3, 2))
    x = _dp_unit(net, x, 16, 16)
    x = net.op("MaxPool", x, kernel_shape=[2, 2], strides=[2, 2])
    x = _dp_unit(net, _dp_unit(net, x, 16, 64), 64, 64)
    feats = []
    for _ in range(3):
        x = net.op("MaxPool", x, kernel_shape=[2, 2], strides=[2, 2])
        x = _dp_unit(net, _dp_unit(net, x, 64, 64), 64, 64)
        feats.append(x)
    feats[1] = _dp_unit(net, net.add(feats[1], net.resize(feats[2], 2.0, mode="nearest")), 64, 64)
    feats[0] = _dp_unit(net, net.add(feats[0], net.resize(feats[1], 2.0, mode="nearest")), 64, 64)
    heads = [_dp_unit(net, f, 64, 64) for f in feats]
    cls = [_head(net, f, 64, 1, 1, score=True, batch=True) for f in heads]
    obj = [_head(net, f, 64, 1, 1, score=True, batch=True) for f in heads]
    boxes = [_head(net, f, 64, 4, 1, score=False, batch=True) for f in heads]
    kps = [_head(net, f, 64, 10, 1, score=False, batch=True) for f in heads]
    return cls + obj + boxes + kps


_FAITHFUL: Mapping[str, Builder] = MappingProxyType(
    {
        "arcface": _faithful_arcface,
        "inswapper": _faithful_inswapper,
        "hyperswap": _faithful_simswap,
        "gfpgan": _faithful_gfpgan,
        "gpen": _faithful_gpen,
        "xseg": _faithful_xseg,
        "bisenet": _faithful_bisenet,
        "scrfd": _faithful_scrfd,
        "yunet": _faithful_yunet,
    }
)
