import os
import platform
import subprocess
import sys

import pytest

from bloodcell_jax import platform_setup
from conftest import ROOT


@pytest.mark.skipif(platform_setup.nvidia_driver_present(), reason="this machine has an NVIDIA driver")
def test_cpu_only_machine_starts_quietly():
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "JAX_PLATFORM_NAME", "XLA_FLAGS")}
  code = "import bloodcell_jax, jax; print(jax.default_backend())"
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0 and result.stdout.strip() == "cpu"
  assert "Traceback" not in result.stderr and "CUDA" not in result.stderr


def test_user_choice_of_platform_wins(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  platform_setup.select_backend()
  assert os.environ["JAX_PLATFORMS"] == "cuda"


_REALLOCATION_FAULTS = """
import sys
from bloodcell_jax import platform_setup
if sys.argv[1] == "keep":
  platform_setup.keep_freed_host_memory()
import numpy as np, resource
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(50_000_000 // 8); del a  # 50 MB: above glibc's mmap threshold
before = faults(); a = np.ones(50_000_000 // 8); print(faults() - before)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the allocator setting is for glibc on Linux")
def test_training_processes_reuse_freed_host_memory_unless_the_user_tuned_malloc():
  """With keep_freed_host_memory (main.py's train and benchmark modes on CPU) a freed block comes
  back without page faults (XLA frees each step's buffers); importing the package alone, or with
  the user's own GLIBC_TUNABLES, leaves glibc as it is and the block faults in again."""
  base = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}

  def faults(mode, **extra):
    result = subprocess.run([sys.executable, "-c", _REALLOCATION_FAULTS, mode], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={**base, "JAX_PLATFORMS": "cpu", **extra})
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip())

  assert faults("keep") <= 2
  assert faults("import-only") >= 20
  assert faults("keep", GLIBC_TUNABLES="glibc.malloc.check=0") >= 20
