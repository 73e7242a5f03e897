"""Key tables: where each tensor of a ConvNeXt checkpoint goes in our Flax parameter tree.

Three naming schemes are in use: timm's, the original facebookresearch/ConvNeXt release, and Hugging
Face transformers' ConvNextForImageClassification. Each rule maps a module prefix (regex, indices
captured) to our module path; the tensor's last name (weight/bias/gamma) then gives the leaf, and
the layout change follows from the module kind: PyTorch conv (O, I, kh, kw) -> Flax (kh, kw, I, O),
linear (O, I) -> (I, O), LayerNorm weight -> scale.
"""

import re

import numpy as np

# scheme: [(module regex, our module path template)], tried in order; {0}, {1} are the captured indices
TABLES = {
    "timm": [
        (r"stem\.0", "stem_0"),
        (r"stem\.1", "stem_1"),
        (r"stages\.(\d+)\.downsample\.0", "stages_{0}/downsample_0"),
        (r"stages\.(\d+)\.downsample\.1", "stages_{0}/downsample_1"),
        (r"stages\.(\d+)\.blocks\.(\d+)\.conv_dw", "stages_{0}/blocks_{1}/conv_dw"),
        (r"stages\.(\d+)\.blocks\.(\d+)\.norm", "stages_{0}/blocks_{1}/norm"),
        (r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc1", "stages_{0}/blocks_{1}/mlp_fc1"),
        (r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc2", "stages_{0}/blocks_{1}/mlp_fc2"),
        (r"stages\.(\d+)\.blocks\.(\d+)", "stages_{0}/blocks_{1}"),  # .gamma
        (r"head\.norm", "head_norm"),
        (r"head\.fc", "head_fc"),
    ],
    "facebook": [
        (r"downsample_layers\.0\.0", "stem_0"),
        (r"downsample_layers\.0\.1", "stem_1"),
        (r"downsample_layers\.([1-9]\d*)\.0", "stages_{0}/downsample_0"),
        (r"downsample_layers\.([1-9]\d*)\.1", "stages_{0}/downsample_1"),
        (r"stages\.(\d+)\.(\d+)\.dwconv", "stages_{0}/blocks_{1}/conv_dw"),
        (r"stages\.(\d+)\.(\d+)\.norm", "stages_{0}/blocks_{1}/norm"),
        (r"stages\.(\d+)\.(\d+)\.pwconv1", "stages_{0}/blocks_{1}/mlp_fc1"),
        (r"stages\.(\d+)\.(\d+)\.pwconv2", "stages_{0}/blocks_{1}/mlp_fc2"),
        (r"stages\.(\d+)\.(\d+)", "stages_{0}/blocks_{1}"),  # .gamma
        (r"norm", "head_norm"),
        (r"head", "head_fc"),
    ],
    "huggingface": [
        (r"convnext\.embeddings\.patch_embeddings", "stem_0"),
        (r"convnext\.embeddings\.layernorm", "stem_1"),
        (r"convnext\.encoder\.stages\.(\d+)\.downsampling_layer\.0", "stages_{0}/downsample_0"),
        (r"convnext\.encoder\.stages\.(\d+)\.downsampling_layer\.1", "stages_{0}/downsample_1"),
        (r"convnext\.encoder\.stages\.(\d+)\.layers\.(\d+)\.dwconv", "stages_{0}/blocks_{1}/conv_dw"),
        (r"convnext\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layernorm", "stages_{0}/blocks_{1}/norm"),
        (r"convnext\.encoder\.stages\.(\d+)\.layers\.(\d+)\.pwconv1", "stages_{0}/blocks_{1}/mlp_fc1"),
        (r"convnext\.encoder\.stages\.(\d+)\.layers\.(\d+)\.pwconv2", "stages_{0}/blocks_{1}/mlp_fc2"),
        (r"convnext\.encoder\.stages\.(\d+)\.layers\.(\d+)", "stages_{0}/blocks_{1}"),  # .layer_scale_parameter
        (r"convnext\.layernorm", "head_norm"),
        (r"classifier", "head_fc"),
    ],
}
# Which key marks which scheme.
SIGNATURES = {"timm": "stem.0.weight", "facebook": "downsample_layers.0.0.weight",
              "huggingface": "convnext.embeddings.patch_embeddings.weight"}
_LEAVES = {"weight": None, "bias": "bias", "gamma": "gamma", "layer_scale_parameter": "gamma"}
_NORMS = ("stem_1", "downsample_0", "norm", "head_norm")
_COMPILED = {scheme: [(re.compile(rf"^{pattern}\.(weight|bias|gamma|layer_scale_parameter)$"), target)
                      for pattern, target in rules] for scheme, rules in TABLES.items()}


def detect_scheme(keys) -> str | None:
  keys = set(keys)
  return next((scheme for scheme, key in SIGNATURES.items() if key in keys), None)


def target_of(scheme: str, key: str) -> str | None:
  """Our parameter path ("stages_1/blocks_0/conv_dw/kernel") for a source key, or None."""
  for pattern, template in _COMPILED[scheme]:
    match = pattern.match(key)
    if match:
      *indices, leaf = match.groups()
      module = template.format(*indices)
      name = _LEAVES[leaf] or ("scale" if module.rsplit("/", 1)[-1] in _NORMS else "kernel")
      return f"{module}/{name}"
  return None


def to_flax_layout(path: str, tensor: np.ndarray) -> np.ndarray:
  """PyTorch layout to Flax layout for the leaf at `path`."""
  if path.endswith("/kernel"):
    if "/mlp_fc" in path and tensor.ndim == 4:  # timm's conv_mlp=True (atto ... nano): a 1x1 conv is a linear
      return tensor[:, :, 0, 0].T
    if tensor.ndim == 4:  # conv (O, I, kh, kw) -> (kh, kw, I, O); depthwise (C, 1, k, k) -> (k, k, 1, C)
      return np.transpose(tensor, (2, 3, 1, 0))
    if tensor.ndim == 2:  # linear (O, I) -> (I, O)
      return tensor.T
  return tensor


def architecture(tensors: dict, scheme: str) -> tuple[tuple[int, ...], tuple[int, ...], int]:
  """(blocks per stage, channels per stage, classes of the head) read off the tensors' shapes."""
  blocks: dict[int, set[int]] = {}
  dims: dict[int, int] = {}
  num_classes = 0
  for key, tensor in tensors.items():
    path = target_of(scheme, key)
    if path is None:
      continue
    match = re.match(r"stages_(\d+)/blocks_(\d+)/conv_dw/kernel", path)
    if match:
      stage, block = int(match.group(1)), int(match.group(2))
      blocks.setdefault(stage, set()).add(block)
      dims[stage] = tensor.shape[0]
    if path == "head_fc/kernel":
      num_classes = tensor.shape[0]
  stages = sorted(blocks)
  return tuple(max(blocks[s]) + 1 for s in stages), tuple(dims[s] for s in stages), num_classes
