"""EfficientNet (B0-B3, Lite0-4), EfficientNetV2 (S/M/L) and MobileNetV3 (Small/Large) as timm builds them.

The three families share timm's block language: a variant is a list of stages of block strings
such as `ir_r2_k5_s2_e6_c40_se0.25` (inverted residual, 2 repeats, 5x5 depthwise, stride 2,
expansion 6, 40 channels, squeeze-excite 1/4). `resolve_blocks` turns a variant into concrete
blocks (channel rounding, depth scaling, strides, squeeze-excite widths, stochastic-depth rates)
with timm's arithmetic, and one Flax module builds any of them.

Module names mirror timm's state-dict keys (`blocks_1_0/conv_dw/kernel` for
`blocks.1.0.conv_dw.weight`), so ported weights map by a table of patterns. BatchNorm keeps its
running statistics in the `batch_stats` collection; in training it normalises with the statistics
of the whole global batch (averaged over the devices of `axis_name`) and updates the running ones
(PyTorch's momentum 0.1 is Flax's 0.9; Flax's running variance uses the biased batch variance,
PyTorch's the unbiased one, a factor n/(n-1) with n = batch x height x width); in eval it uses the
running statistics. eps 1e-5, or 1e-3 for the TensorFlow ports (`tf_`), which also use
TensorFlow's "SAME" padding (extra pixel after) where the others use timm's symmetric padding.
"""

import dataclasses
import functools
import math
import re

import jax
import jax.numpy as jnp
from flax import linen as nn

from bloodcell_jax.models import taps
from bloodcell_jax.models.convnext import DropPath
from bloodcell_jax.models.depthwise import DepthwiseConv
from bloodcell_jax.models.patch_conv import PatchConv

ACTIVATIONS = {"relu": nn.relu, "relu6": nn.relu6, "silu": nn.silu, "hard_swish": nn.hard_swish, "hard_sigmoid": nn.hard_sigmoid,
               "sigmoid": nn.sigmoid}
_BLOCK_ACTS = {"re": "relu", "hs": "hard_swish", "sw": "silu"}

_EFFICIENTNET = (("ds_r1_k3_s1_e1_c16_se0.25",), ("ir_r2_k3_s2_e6_c24_se0.25",), ("ir_r2_k5_s2_e6_c40_se0.25",),
                 ("ir_r3_k3_s2_e6_c80_se0.25",), ("ir_r3_k5_s1_e6_c112_se0.25",), ("ir_r4_k5_s2_e6_c192_se0.25",),
                 ("ir_r1_k3_s1_e6_c320_se0.25",))
_LITE = tuple((stage[0].replace("_se0.25", ""),) for stage in _EFFICIENTNET)  # no squeeze-excite
_V2_S = (("cn_r2_k3_s1_e1_c24_skip",), ("er_r4_k3_s2_e4_c48",), ("er_r4_k3_s2_e4_c64",),
         ("ir_r6_k3_s2_e4_c128_se0.25",), ("ir_r9_k3_s1_e6_c160_se0.25",), ("ir_r15_k3_s2_e6_c256_se0.25",))
_V2_M = (("cn_r3_k3_s1_e1_c24_skip",), ("er_r5_k3_s2_e4_c48",), ("er_r5_k3_s2_e4_c80",),
         ("ir_r7_k3_s2_e4_c160_se0.25",), ("ir_r14_k3_s1_e6_c176_se0.25",), ("ir_r18_k3_s2_e6_c304_se0.25",),
         ("ir_r5_k3_s1_e6_c512_se0.25",))
_V2_L = (("cn_r4_k3_s1_e1_c32_skip",), ("er_r7_k3_s2_e4_c64",), ("er_r7_k3_s2_e4_c96",),
         ("ir_r10_k3_s2_e4_c192_se0.25",), ("ir_r19_k3_s1_e6_c224_se0.25",), ("ir_r25_k3_s2_e6_c384_se0.25",),
         ("ir_r7_k3_s1_e6_c640_se0.25",))
_MNV3_SMALL = (("ds_r1_k3_s2_e1_c16_se0.25_nre",), ("ir_r1_k3_s2_e4.5_c24_nre", "ir_r1_k3_s1_e3.67_c24_nre"),
               ("ir_r1_k5_s2_e4_c40_se0.25", "ir_r2_k5_s1_e6_c40_se0.25"), ("ir_r2_k5_s1_e3_c48_se0.25",),
               ("ir_r3_k5_s2_e6_c96_se0.25",), ("cn_r1_k1_s1_c576",))
_MNV3_LARGE = (("ds_r1_k3_s1_e1_c16_nre",), ("ir_r1_k3_s2_e4_c24_nre", "ir_r1_k3_s1_e3_c24_nre"),
               ("ir_r3_k5_s2_e3_c40_se0.25_nre",),
               ("ir_r1_k3_s2_e6_c80", "ir_r1_k3_s1_e2.5_c80", "ir_r2_k3_s1_e2.3_c80"),
               ("ir_r2_k3_s1_e6_c112_se0.25",), ("ir_r3_k5_s2_e6_c160_se0.25",), ("cn_r1_k1_s1_c960",))


@dataclasses.dataclass(frozen=True)
class Architecture:
  """One variant: its stages of block strings and timm's model-level settings."""

  family: str  # "efficientnet" (conv head before pooling) or "mobilenetv3" (conv head after pooling)
  stages: tuple
  channel_multiplier: float = 1.0
  depth_multiplier: float = 1.0
  stem_size: int = 32
  scale_stem: bool = True  # stem_size goes through the channel rounding
  scale_end_stages: bool = True  # the depth multiplier applies to the first and last stage too
  num_features: int = 1280
  scale_num_features: bool = True  # num_features goes through the channel rounding
  act: str = "silu"
  se_gate: str = "sigmoid"
  se_act: str | None = None  # None: the block's activation
  se_from_expanded: bool = False  # squeeze-excite ratio of the expanded (True) or input (False) channels
  se_round_divisible: bool = False  # squeeze-excite width rounded to a multiple of 8 (else to nearest)
  same_padding: bool = False  # TensorFlow "SAME" (the tf_ ports) instead of symmetric padding
  bn_eps: float = 1e-5
  bn_momentum: float = 0.9  # Flax convention (PyTorch 0.1)
  head_bias: bool = False


def _efficientnet(channels: float, depth: float, tf: bool = False) -> Architecture:
  return Architecture("efficientnet", _EFFICIENTNET, channels, depth, same_padding=tf,
                      bn_eps=1e-3 if tf else 1e-5, bn_momentum=0.99 if tf else 0.9)


def _efficientnet_lite(channels: float, depth: float, tf: bool = False) -> Architecture:
  """Lite: ReLU6, no squeeze-excite, stem, head and the end stages' depth not scaled (mobile accelerators)."""
  return Architecture("efficientnet", _LITE, channels, depth, scale_stem=False, scale_end_stages=False,
                      scale_num_features=False, act="relu6", same_padding=tf, bn_eps=1e-3 if tf else 1e-5,
                      bn_momentum=0.99 if tf else 0.9)


def _efficientnet_v2(stages, stem: int, scale_num_features: bool) -> Architecture:
  return Architecture("efficientnet", stages, stem_size=stem, scale_num_features=scale_num_features,
                      same_padding=True, bn_eps=1e-3, bn_momentum=0.99)


def _mobilenet_v3(stages, num_features: int) -> Architecture:
  return Architecture("mobilenetv3", stages, stem_size=16, num_features=num_features, scale_num_features=False,
                      act="hard_swish", se_gate="hard_sigmoid", se_act="relu", se_from_expanded=True,
                      se_round_divisible=True, head_bias=True)


# timm model names (the pretrained tag after the dot is not part of the architecture).
VARIANTS = {
    "efficientnet_b0": _efficientnet(1.0, 1.0), "efficientnet_b1": _efficientnet(1.0, 1.1),
    "efficientnet_b2": _efficientnet(1.1, 1.2), "efficientnet_b3": _efficientnet(1.2, 1.4),
    "tf_efficientnet_b0": _efficientnet(1.0, 1.0, tf=True), "tf_efficientnet_b1": _efficientnet(1.0, 1.1, tf=True),
    "tf_efficientnet_b2": _efficientnet(1.1, 1.2, tf=True), "tf_efficientnet_b3": _efficientnet(1.2, 1.4, tf=True),
    **{f"{tf}efficientnet_lite{i}": _efficientnet_lite(c, d, tf=bool(tf))
       for tf in ("", "tf_") for i, (c, d) in enumerate(((1.0, 1.0), (1.0, 1.1), (1.1, 1.2), (1.2, 1.4), (1.4, 1.8)))},
    "tf_efficientnetv2_s": _efficientnet_v2(_V2_S, 24, True), "tf_efficientnetv2_m": _efficientnet_v2(_V2_M, 24, False),
    "tf_efficientnetv2_l": _efficientnet_v2(_V2_L, 32, False),
    "mobilenetv3_small_100": _mobilenet_v3(_MNV3_SMALL, 1024), "mobilenetv3_large_100": _mobilenet_v3(_MNV3_LARGE, 1280),
}


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.9) -> int:
  """timm's channel rounding: nearest multiple of `divisor`, never more than 10% below `value`."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < round_limit * value else rounded


@dataclasses.dataclass(frozen=True)
class Block:
  """A concrete block: every width, stride and rate resolved."""

  kind: str  # ds (depthwise separable), ir (inverted residual), er (edge residual / fused MBConv), cn (conv)
  in_chs: int
  out_chs: int
  mid_chs: int
  kernel: int
  stride: int
  se_chs: int  # 0: no squeeze-excite
  act: str
  skip: bool
  drop_path: float


def _parse(text: str) -> tuple[dict, int]:
  kind, *options = text.split("_")
  spec = {"kind": kind, "skip": None, "act": None, "se": 0.0, "e": 1.0}
  for option in options:
    if option in ("skip", "noskip"):
      spec["skip"] = option == "skip"
    elif option.startswith("n") and option[1:] in _BLOCK_ACTS:
      spec["act"] = _BLOCK_ACTS[option[1:]]
    else:
      key, value = re.match(r"([a-z]+)(\d.*)", option).groups()
      spec[key] = float(value)
  if kind not in ("ds", "ir", "er", "cn"):
    raise ValueError(f"unknown block kind {kind!r} in {text!r}")
  return spec, int(spec["r"])


def _scaled_repeats(repeats: list[int], multiplier: float) -> list[int]:
  """timm's per-stage depth scaling (ceil of the total, spread from the last block string back)."""
  total, scaled_total = sum(repeats), int(math.ceil(sum(repeats) * multiplier))
  out = []
  for r in reversed(repeats):
    scaled = max(1, round(r / total * scaled_total))
    out.append(scaled)
    total -= r
    scaled_total -= scaled
  return out[::-1]


def resolve_blocks(arch: Architecture, drop_path_rate: float = 0.0) -> tuple[int, list[list[Block]], int]:
  """(stem channels, blocks per stage, channels into the head) of `arch`."""
  round_chs = lambda c: make_divisible(c * arch.channel_multiplier)
  stem = round_chs(arch.stem_size) if arch.scale_stem else arch.stem_size
  specs_per_stage = []
  for i, stage in enumerate(arch.stages):
    parsed = [_parse(text) for text in stage]
    end_stage = i in (0, len(arch.stages) - 1)
    repeats = _scaled_repeats([r for _, r in parsed], 1.0 if end_stage and not arch.scale_end_stages
                              else arch.depth_multiplier)
    specs_per_stage.append([spec for (spec, _), n in zip(parsed, repeats) for _ in range(n)])
  count = sum(len(s) for s in specs_per_stage)
  in_chs, index, stages = stem, 0, []
  for specs in specs_per_stage:
    blocks = []
    for position, spec in enumerate(specs):
      kind, stride = spec["kind"], int(spec["s"]) if position == 0 else 1
      out_chs = round_chs(spec["c"])
      mid_chs = in_chs if kind == "ds" else out_chs if kind == "cn" else make_divisible(in_chs * spec["e"])
      se_chs = 0
      if spec["se"]:
        ratio = spec["se"] if arch.se_from_expanded else spec["se"] / spec["e"]
        se_chs = make_divisible(mid_chs * ratio) if arch.se_round_divisible else round(mid_chs * ratio)
      same_shape = stride == 1 and in_chs == out_chs
      # A plain conv block keeps its input only when asked (`_skip`); the others unless told not to.
      wanted = spec["skip"] is True if kind == "cn" else spec["skip"] is not False
      skip = same_shape and wanted
      blocks.append(Block(kind, in_chs, out_chs, mid_chs, int(spec["k"]), stride, se_chs, spec["act"] or arch.act,
                          skip, drop_path_rate * index / count))
      in_chs, index = out_chs, index + 1
    stages.append(blocks)
  return stem, stages, in_chs


def _padding(arch: Architecture, kernel: int, stride: int):
  if arch.same_padding:
    return "SAME"
  pad = ((stride - 1) + (kernel - 1)) // 2
  return ((pad, pad), (pad, pad))


@dataclasses.dataclass(frozen=True)
class _Layers:
  """What every conv + BatchNorm pair of one model shares."""

  arch: Architecture
  depthwise_impl: str
  matmul_impl: str
  axis_name: str | None
  dtype: jnp.dtype | None

  def conv_bn(self, x: jax.Array, train: bool, features: int, kernel: int, stride: int, act: str | None,
              conv_name: str, bn_name: str, depthwise: bool = False) -> jax.Array:
    """Conv (no bias) + BatchNorm + optional activation (timm's conv + BatchNormAct2d), created in
    the calling module's scope so the names are timm's (`conv_dw`, `bn2`)."""
    padding = _padding(self.arch, kernel, stride)
    if depthwise:
      x = DepthwiseConv(kernel, self.depthwise_impl, self.dtype, nn.initializers.he_normal(), stride, padding,
                        use_bias=False, write_output=train, name=conv_name)(x)  # an inference BN reads it once
    elif kernel == 1 and stride == 1:  # pointwise: a matmul (patch_conv.py says why)
      x = PatchConv(features, 1, self.dtype, nn.initializers.he_normal(), use_bias=False, matmul_impl=self.matmul_impl,
                    name=conv_name)(x)
    else:
      x = nn.Conv(features, (kernel, kernel), (stride, stride), padding=padding, use_bias=False, dtype=self.dtype,
                  kernel_init=nn.initializers.he_normal(), name=conv_name)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.arch.bn_momentum, epsilon=self.arch.bn_eps,
                     axis_name=self.axis_name if train else None, dtype=self.dtype, name=bn_name)(x)
    return ACTIVATIONS[act](x) if act else x


class SqueezeExcite(nn.Module):
  reduced: int
  act: str
  gate: str
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = ACTIVATIONS[self.act](nn.Conv(self.reduced, (1, 1), dtype=self.dtype, name="conv_reduce")(s))
    s = nn.Conv(x.shape[-1], (1, 1), dtype=self.dtype, name="conv_expand")(s)
    return x * ACTIVATIONS[self.gate](s)


class MBlock(nn.Module):
  """Any of timm's ds / ir / er / cn blocks, with its parameter names."""

  block: Block
  arch: Architecture
  depthwise_impl: str = "auto"
  matmul_impl: str = "auto"
  axis_name: str | None = None
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    b, arch = self.block, self.arch
    layers = _Layers(arch, self.depthwise_impl, self.matmul_impl, self.axis_name, self.dtype)
    conv_bn = functools.partial(layers.conv_bn, train=train)
    squeeze = lambda h: SqueezeExcite(b.se_chs, arch.se_act or b.act, arch.se_gate, self.dtype, name="se")(h) \
        if b.se_chs else h
    shortcut = x
    if b.kind == "ds":
      x = conv_bn(x, features=b.in_chs, kernel=b.kernel, stride=b.stride, act=b.act, conv_name="conv_dw",
                  bn_name="bn1", depthwise=True)
      x = conv_bn(squeeze(x), features=b.out_chs, kernel=1, stride=1, act=None, conv_name="conv_pw", bn_name="bn2")
    elif b.kind == "ir":
      x = conv_bn(x, features=b.mid_chs, kernel=1, stride=1, act=b.act, conv_name="conv_pw", bn_name="bn1")
      x = conv_bn(x, features=b.mid_chs, kernel=b.kernel, stride=b.stride, act=b.act, conv_name="conv_dw",
                  bn_name="bn2", depthwise=True)
      x = conv_bn(squeeze(x), features=b.out_chs, kernel=1, stride=1, act=None, conv_name="conv_pwl", bn_name="bn3")
    elif b.kind == "er":
      x = conv_bn(x, features=b.mid_chs, kernel=b.kernel, stride=b.stride, act=b.act, conv_name="conv_exp",
                  bn_name="bn1")
      x = conv_bn(squeeze(x), features=b.out_chs, kernel=1, stride=1, act=None, conv_name="conv_pwl", bn_name="bn2")
    else:
      x = conv_bn(x, features=b.out_chs, kernel=b.kernel, stride=b.stride, act=b.act, conv_name="conv", bn_name="bn1")
    if b.skip:
      x = shortcut + DropPath(b.drop_path)(x, deterministic=not train)
    return x


class EfficientNet(nn.Module):
  """EfficientNet / EfficientNetV2 / MobileNetV3 on normalised NHWC images; float32 logits."""

  num_classes: int
  arch: Architecture
  drop_path_rate: float = 0.0
  head_dropout: float = 0.0
  depthwise_impl: str = "auto"
  matmul_impl: str = "auto"
  axis_name: str | None = None  # the pmap axis over which BatchNorm averages its training statistics
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    arch = self.arch
    stem, stages, head_in = resolve_blocks(arch, self.drop_path_rate)
    layers = _Layers(arch, self.depthwise_impl, self.matmul_impl, self.axis_name, self.dtype)
    x = layers.conv_bn(x, train, stem, 3, 2, arch.act, "conv_stem", "bn1")
    for i, blocks in enumerate(stages):
      for j, block in enumerate(blocks):
        x = MBlock(block, arch, self.depthwise_impl, self.matmul_impl, self.axis_name, self.dtype,
                   name=f"blocks_{i}_{j}")(x, train)
      x = taps.stage(self, x, i)
    features = make_divisible(arch.num_features * arch.channel_multiplier) if arch.scale_num_features \
        else arch.num_features
    if arch.family == "efficientnet":
      x = layers.conv_bn(x, train, features, 1, 1, arch.act, "conv_head", "bn2")
      x = jnp.mean(x, axis=(1, 2))
    else:
      x = jnp.mean(x, axis=(1, 2), keepdims=True)
      x = nn.Conv(features, (1, 1), use_bias=arch.head_bias, dtype=self.dtype, name="conv_head")(x)
      x = ACTIVATIONS[arch.act](x).reshape(x.shape[0], -1)
    x = nn.Dropout(self.head_dropout)(x, deterministic=not train)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
    return x.astype(jnp.float32)
