"""timm's EfficientNet / EfficientNetV2 / MobileNetV3 state-dict keys -> our variable paths.

One table of patterns; the leaf and its layout follow from the module kind: convolutions
(O, I, kh, kw) -> (kh, kw, I, O) (depthwise (C, 1, k, k) -> (k, k, 1, C)), the classifier
(O, I) -> (I, O), BatchNorm weight/bias -> params scale/bias and running_mean/var -> batch_stats
mean/var. `num_batches_tracked` counters carry nothing we use and are skipped.
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


def is_efficientnet_family(tensors: dict) -> bool:
  return SIGNATURE in tensors and any(k.startswith("blocks.0.0.") for k in tensors)


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
