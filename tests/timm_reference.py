"""timm, the reference implementation of the parity tests, importable on a CPU-only PyTorch.

timm's model code needs no torchvision, but `import timm` imports it (for data transforms and
FrozenBatchNorm2d). PyPI's torchvision is built against CUDA PyTorch and fails to load next to the
CPU build ("operator torchvision::nms does not exist"). Where that happens, a stand-in for the
torchvision modules is installed before importing timm; the models built here never call it.
"""

import importlib
import importlib.abc
import importlib.machinery
import sys
import types


class _Placeholder(type):
  def __getattr__(cls, name):
    if name.startswith("__"):
      raise AttributeError(name)
    return f"{cls.__name__}.{name}"  # enum-like members timm reads at import (InterpolationMode.NEAREST)


class _Module(types.ModuleType):
  def __getattr__(self, name):
    if name.startswith("__"):
      raise AttributeError(name)
    value = _Placeholder(name, (), {"__init__": lambda self, *a, **k: None})
    setattr(self, name, value)
    return value


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  def find_spec(self, fullname, path, target=None):
    if fullname == "torchvision" or fullname.startswith("torchvision."):
      return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
    return None

  def create_module(self, spec):
    module = _Module(spec.name)
    module.__path__ = []
    return module

  def exec_module(self, module):
    if module.__name__ == "torchvision.ops.misc":
      import torch
      module.FrozenBatchNorm2d = type("FrozenBatchNorm2d", (torch.nn.BatchNorm2d,), {})


def import_timm():
  """The timm module, or pytest.skip with the reason where it cannot be imported at all."""
  import pytest
  try:
    import timm
    return timm
  except ImportError as e:
    if "torchvision" not in str(e):
      pytest.skip(f"timm is not installed ({e}); it is in requirements-dev.txt")
  except RuntimeError:
    pass  # torchvision present but built for another PyTorch
  for name in [n for n in sys.modules if n.split(".")[0] in ("torchvision", "timm")]:
    del sys.modules[name]
  sys.meta_path.insert(0, _StandInFinder())
  return importlib.import_module("timm")
