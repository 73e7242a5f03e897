"""PyTorch state dicts (.pth / .pt / .bin) read without PyTorch, and without running their code.

A PyTorch file is a pickle whose tensors point into raw storages: either a zip (`torch.save` since
1.6: `<name>/data.pkl` plus one `<name>/data/<key>` entry per storage) or the legacy stream (magic
number, protocol, system info, the pickle, its storage keys, then each storage as an int64 element
count and its bytes). A pickle can call any importable function; this unpickler resolves only the
names a state dict needs (OrderedDict, the tensor-rebuild helpers, the storage types) to inert
records, and refuses every other, so a malicious or damaged file ends in `TorchFileError`, never in
code run. Tensors are then cut out of the storages as numpy arrays (bfloat16 widened to float32).
"""

import collections
import dataclasses
import io
import pickle
import struct
import zipfile

import numpy as np

from bloodcell_jax.errors import UserInputError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
_MAX_PICKLE_BYTES = 64 << 20  # a state dict's pickle is kilobytes; the tensors live in the storages

# numpy has no bfloat16: its storages are read as uint16 and widened (bfloat16 is a float32's top half).
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16, "BFloat16Storage": np.uint16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class TorchFileError(UserInputError):
  """Not a PyTorch state dict this reader accepts (damaged, or asks for code to run)."""


@dataclasses.dataclass(frozen=True)
class _StorageRef:
  kind: str  # a STORAGE_DTYPES name
  key: str
  numel: int


@dataclasses.dataclass(frozen=True)
class _TensorRef:
  storage: _StorageRef
  offset: int
  size: tuple
  stride: tuple


class _StorageType(str):
  """The `torch.<X>Storage` class a persistent id names; only its name matters."""


def _tensor_ref(storage, storage_offset, size, stride, *unused) -> _TensorRef:
  """Stands in for torch._utils._rebuild_tensor_v2 (the rest of its arguments: grad flags, hooks)."""
  if not isinstance(storage, _StorageRef):
    raise pickle.UnpicklingError("a tensor that does not point at a storage")
  return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _parameter(data, *unused):
  """Stands in for torch._utils._rebuild_parameter: a parameter is its tensor."""
  return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _tensor_ref,
    ("torch._utils", "_rebuild_parameter"): _parameter,
}


class _Unpickler(pickle.Unpickler):
  def find_class(self, module, name):
    if module == "torch" and name in STORAGE_DTYPES:
      return _StorageType(name)
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    raise pickle.UnpicklingError(f"refuses to load {module}.{name} (only tensors and dicts are read)")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
      raise pickle.UnpicklingError(f"refuses persistent object {str(pid)[:80]}")
    return _StorageRef(str(pid[1]), str(pid[2]), int(pid[4]))


class _NoObjects(pickle.Unpickler):
  """The legacy header's pickles: plain numbers and dicts only."""

  def find_class(self, module, name):
    raise pickle.UnpicklingError(f"refuses to load {module}.{name} in the file's header")


def _array(ref: _TensorRef, storage: np.ndarray) -> np.ndarray:
  """The tensor `ref` cut out of its storage: bounds checked, copied, bfloat16 widened to float32."""
  if len(ref.size) != len(ref.stride) or min(ref.size + ref.stride + (ref.offset,), default=0) < 0:
    raise pickle.UnpicklingError(f"a tensor with size {ref.size}, stride {ref.stride}, offset {ref.offset}")
  if 0 in ref.size:
    array = np.zeros(ref.size, storage.dtype)
  else:
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
    if last >= storage.size:
      raise pickle.UnpicklingError(f"a tensor of size {ref.size} reaches past its storage of {storage.size} elements")
    array = np.array(np.lib.stride_tricks.as_strided(
        storage[ref.offset:], ref.size, [s * storage.itemsize for s in ref.stride], writeable=False))
  if ref.storage.kind == "BFloat16Storage":
    array = (array.astype(np.uint32) << 16).view(np.float32)
  return array


def _resolve(obj, storages: dict):
  """`obj` with every tensor reference replaced by its array; anything but dicts and tensors refused."""
  if isinstance(obj, _TensorRef):
    return _array(obj, storages[obj.storage.key])
  if isinstance(obj, dict):
    return {key: _resolve(value, storages) for key, value in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_resolve(value, storages) for value in obj)
  return obj


def _storage_refs(obj, found: dict) -> dict:
  if isinstance(obj, _TensorRef):
    found.setdefault(obj.storage.key, obj.storage)
  elif isinstance(obj, dict):
    for value in obj.values():
      _storage_refs(value, found)
  elif isinstance(obj, (list, tuple)):
    for value in obj:
      _storage_refs(value, found)
  return found


def _typed(raw: bytes, ref: _StorageRef) -> np.ndarray:
  dtype = np.dtype(STORAGE_DTYPES[ref.kind])
  if len(raw) < ref.numel * dtype.itemsize:
    raise pickle.UnpicklingError(f"storage {ref.key} holds {len(raw)} bytes, fewer than its {ref.numel} elements")
  return np.frombuffer(raw, dtype, ref.numel)


def _load_zip(archive: zipfile.ZipFile):
  pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
  if len(pickles) != 1:
    raise pickle.UnpicklingError("a zip without exactly one data.pkl (not a PyTorch file)")
  prefix = pickles[0][:-len("data.pkl")]
  if prefix + "byteorder" in archive.namelist() and archive.read(prefix + "byteorder").strip() != b"little":
    raise pickle.UnpicklingError("saved on a big-endian machine, which this reader does not take")
  with archive.open(pickles[0]) as f:
    obj = _Unpickler(io.BytesIO(f.read(_MAX_PICKLE_BYTES))).load()
  refs = _storage_refs(obj, {})
  return _resolve(obj, {key: _typed(archive.read(f"{prefix}data/{key}"), ref) for key, ref in refs.items()})


def _load_legacy(f):
  header = _NoObjects(f)
  if header.load() != LEGACY_MAGIC:
    raise pickle.UnpicklingError("neither a zip nor PyTorch's legacy format (not a PyTorch file)")
  if header.load() != LEGACY_PROTOCOL:
    raise pickle.UnpicklingError("an unknown PyTorch legacy protocol")
  info = header.load()
  if not isinstance(info, dict) or not info.get("little_endian", False):
    raise pickle.UnpicklingError("saved on a big-endian machine, which this reader does not take")
  obj = _Unpickler(f).load()
  refs = _storage_refs(obj, {})
  keys = _NoObjects(f).load()
  if not isinstance(keys, list) or set(keys) != set(refs):
    raise pickle.UnpicklingError("its list of storages does not match its tensors")
  storages = {}
  for key in keys:  # each storage: int64 element count, then the elements
    ref = refs[key]
    count = struct.unpack("<q", f.read(8).ljust(8, b"\0"))[0]
    if count != ref.numel:
      raise pickle.UnpicklingError(f"storage {key} says {count} elements where its tensors expect {ref.numel}")
    storages[key] = _typed(f.read(count * np.dtype(STORAGE_DTYPES[ref.kind]).itemsize), ref)
  return _resolve(obj, storages)


def load(path: str):
  """The object a PyTorch file holds, tensors as numpy arrays; `TorchFileError` for anything else."""
  try:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as archive:
        return _load_zip(archive)
    with open(path, "rb") as f:
      return _load_legacy(f)
  except TorchFileError:
    raise
  except OSError as e:
    raise TorchFileError(f"{path}: cannot be read ({e.strerror or e})") from None
  except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError, AttributeError, IndexError,
          zipfile.BadZipFile, struct.error, RecursionError, MemoryError, UnicodeDecodeError) as e:
    reason = str(e) if isinstance(e, pickle.UnpicklingError) else f"damaged: {type(e).__name__}: {e}"
    raise TorchFileError(f"{path}: not a PyTorch state dict this reader accepts ({reason})") from None
