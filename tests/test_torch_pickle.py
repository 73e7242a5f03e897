"""PyTorch files read without PyTorch: equal to torch.load on both of torch.save's formats, and a file
that asks for code to run, or is damaged, is one error and nothing else."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from bloodcell_jax.pretrained import torch_pickle
from bloodcell_jax.pretrained.readers import read_file
from conftest import ROOT

torch = pytest.importorskip("torch", reason="PyTorch not installed (pip install -r requirements-dev.txt)")


def _state():
  generator = torch.Generator().manual_seed(0)
  weight = torch.randn((6, 4), generator=generator)
  return {
      "transposed": weight.t(),  # non-contiguous: strides (1, 4)
      "sliced": weight[1:5:2, ::3],  # an offset into a shared storage
      "shared": weight,
      "half": torch.randn(5, generator=generator).half(),
      "bfloat16": torch.randn(7, generator=generator).to(torch.bfloat16),
      "steps": torch.arange(3),
      "count": torch.tensor(17),
      "parameter": torch.nn.Parameter(torch.ones(2, 2)),
      "empty": torch.zeros((0, 3)),
  }


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_equal_to_torch_load(tmp_path, zip_format):
  path = tmp_path / "w.pth"
  state = _state()
  torch.save({"state_dict": state, "epoch": 3}, path, _use_new_zipfile_serialization=zip_format)
  ours = torch_pickle.load(str(path))
  assert ours["epoch"] == 3 and list(ours["state_dict"]) == list(state)
  for key, tensor in state.items():
    expected = tensor.detach().float().numpy() if tensor.dtype == torch.bfloat16 else tensor.detach().numpy()
    assert ours["state_dict"][key].dtype == expected.dtype and ours["state_dict"][key].shape == expected.shape, key
    np.testing.assert_array_equal(ours["state_dict"][key], expected, err_msg=key)
  tensors, _, _ = read_file(str(path))  # the port's reader: unwraps state_dict, float32
  assert tensors["half"].dtype == np.float32 and set(tensors) == set(state)


class _Exploit:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


def test_code_in_the_pickle_is_refused_not_run(tmp_path):
  marker = tmp_path / "ran"
  for zip_format in (True, False):
    path = tmp_path / f"evil_{zip_format}.pth"
    torch.save({"weight": torch.ones(2), "payload": _Exploit(marker)}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(torch_pickle.TorchFileError, match=r"evil_.*\.pth: .*refuses to load (posix|os)\.system"):
      torch_pickle.load(str(path))
  plain = tmp_path / "plain.pkl"  # not a PyTorch file at all, with a payload
  plain.write_bytes(pickle.dumps(_Exploit(marker)))
  with pytest.raises(torch_pickle.TorchFileError, match="plain.pkl: "):
    torch_pickle.load(str(plain))
  assert not marker.exists()


def test_damaged_files_are_one_error(tmp_path):
  path = tmp_path / "w.pth"
  torch.save(_state(), path, _use_new_zipfile_serialization=False)
  data = path.read_bytes()
  for name, damaged in (("cut", data[:len(data) - 40]), ("header", data[:30]), ("empty", b""),
                        ("garbage", bytes(range(256)) * 4)):
    broken = tmp_path / f"{name}.pth"
    broken.write_bytes(damaged)
    with pytest.raises(torch_pickle.TorchFileError, match=f"{name}.pth: "):
      torch_pickle.load(str(broken))
  torch.save(_state(), path)  # zip: a storage entry cut short
  import zipfile
  with zipfile.ZipFile(path) as source, zipfile.ZipFile(tmp_path / "short.pth", "w") as target:
    for item in source.infolist():
      content = source.read(item)
      target.writestr(item, content[:4] if "/data/" in item.filename else content)
  with pytest.raises(torch_pickle.TorchFileError, match="short.pth: .*fewer than"):
    torch_pickle.load(str(tmp_path / "short.pth"))


def test_reads_without_pytorch_importable(tmp_path):
  path = tmp_path / "w.pth"
  torch.save({"weight": torch.arange(6.0).reshape(2, 3)}, path)
  code = ("import sys; sys.modules['torch'] = None\n"  # `import torch` now fails
          "from bloodcell_jax.pretrained.readers import read_file\n"
          f"print(read_file({str(path)!r})[0]['weight'].sum())")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "15.0"
