"""timm and transformers, the reference implementations of the parity tests, importable on a CPU-only PyTorch.

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


def stand_in_for_broken_torchvision():
  """Installs the stand-in where torchvision is installed but does not load beside this PyTorch."""
  if any(isinstance(finder, _StandInFinder) for finder in sys.meta_path):
    return
  try:
    import torchvision  # noqa: F401
    return
  except ImportError:
    return  # not installed: timm and transformers do without it
  except RuntimeError:
    pass  # present but built for another PyTorch
  for name in [n for n in sys.modules if n.split(".")[0] in ("torchvision", "timm", "transformers")]:
    del sys.modules[name]
  sys.meta_path.insert(0, _StandInFinder())


def import_timm():
  """The timm module, or pytest.skip with the reason where it cannot be imported at all."""
  import pytest
  stand_in_for_broken_torchvision()
  try:
    return importlib.import_module("timm")
  except ImportError as e:
    pytest.skip(f"timm is not installed ({e}); it is in requirements-dev.txt")


def import_transformers():
  """Hugging Face transformers (the ConvNeXt reference), or pytest.skip where it is not installed."""
  import pytest
  stand_in_for_broken_torchvision()
  return pytest.importorskip("transformers", reason="transformers not installed (requirements-dev.txt)")
