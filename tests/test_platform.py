import os
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
