"""Builds a model from `config.model`; one entry per architecture family."""

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from bloodcell_jax.distributed import AXIS as BATCH_AXIS  # BatchNorm's batch statistics average over it
from bloodcell_jax.models import efficientnet
from bloodcell_jax.models.cnn import SimpleCNN
from bloodcell_jax.models.convnext import VARIANTS, ConvNeXt

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _convnext(cfg: ml_collections.ConfigDict, num_classes: int, dtype) -> nn.Module:
  if cfg.variant not in VARIANTS:
    raise ValueError(f"unknown ConvNeXt variant {cfg.variant!r}; choose one of {', '.join(VARIANTS)}")
  depths, dims = VARIANTS[cfg.variant]
  return ConvNeXt(
      num_classes=num_classes,
      depths=tuple(cfg.depths or depths),
      dims=tuple(cfg.dims or dims),
      drop_path_rate=cfg.drop_path_rate,
      head_dropout=cfg.head_dropout,
      depthwise_impl=cfg.depthwise_impl,
      matmul_impl=cfg.matmul_impl,
      dtype=dtype)


def _cnn(cfg: ml_collections.ConfigDict, num_classes: int, dtype) -> nn.Module:
  return SimpleCNN(num_classes=num_classes, dropout=cfg.head_dropout, dtype=dtype)


def _efficientnet(cfg: ml_collections.ConfigDict, num_classes: int, dtype) -> nn.Module:
  """EfficientNet B0-B3 / V2 S-L and MobileNetV3 Small/Large (`model.variant` = timm's model name)."""
  if cfg.variant not in efficientnet.VARIANTS:
    raise ValueError(f"unknown {cfg.name} variant {cfg.variant!r}; choose one of {', '.join(efficientnet.VARIANTS)}")
  arch = efficientnet.VARIANTS[cfg.variant]
  width, depth = cfg.width_multiplier, cfg.depth_multiplier
  if width <= 0 or depth <= 0:
    raise ValueError(f"model.width_multiplier={width} and model.depth_multiplier={depth} must be positive")
  arch = dataclasses.replace(arch, channel_multiplier=arch.channel_multiplier * width,
                             depth_multiplier=arch.depth_multiplier * depth)
  return efficientnet.EfficientNet(
      num_classes=num_classes, arch=arch, drop_path_rate=cfg.drop_path_rate,
      head_dropout=cfg.head_dropout, depthwise_impl=cfg.depthwise_impl, matmul_impl=cfg.matmul_impl,
      axis_name=BATCH_AXIS, dtype=dtype)


_BUILDERS: dict[str, Callable[..., nn.Module]] = {"convnext": _convnext, "cnn": _cnn, "efficientnet": _efficientnet}


def model_names() -> tuple[str, ...]:
  return tuple(_BUILDERS)


def create_model(cfg: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  if cfg.name not in _BUILDERS:
    raise ValueError(f"unknown model {cfg.name!r}; choose one of {', '.join(_BUILDERS)}")
  if cfg.dtype not in DTYPES:
    raise ValueError(f"unknown model dtype {cfg.dtype!r}; choose one of {', '.join(DTYPES)}")
  return _BUILDERS[cfg.name](cfg, num_classes, DTYPES[cfg.dtype])
