"""Reading a checkpoint into {key: float32 numpy array}, whatever it came as.

.safetensors files are read with the `safetensors` package's numpy API (no PyTorch needed);
PyTorch pickles (.pth, .pt, .bin) need PyTorch and are loaded with `weights_only=True`; a Hugging
Face model directory is its model.safetensors or pytorch_model.bin; a timm model name is fetched
from the Hugging Face Hub (timm/<name>) when the machine has internet.
"""

import hashlib
import json
import os

import numpy as np

from bloodcell_jax.errors import UserInputError

_WRAPPERS = ("state_dict", "model", "model_ema", "module")
_HF_FILES = ("model.safetensors", "pytorch_model.bin")


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
  try:
    import torch
  except ImportError:
    raise UserInputError(f"{path}: reading PyTorch files needs PyTorch (pip install torch); "
                         ".safetensors files do not") from None
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:
    raise UserInputError(f"{path}: not a readable PyTorch state dict ({e})") from None
  for wrapper in _WRAPPERS:  # training checkpoints wrap the weights
    if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
      obj = obj[wrapper]
      break
  if not isinstance(obj, dict):
    raise UserInputError(f"{path}: holds a {type(obj).__name__}, not a state dict")
  return {k.removeprefix("module."): v.float().numpy() for k, v in obj.items() if hasattr(v, "numpy")}


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
