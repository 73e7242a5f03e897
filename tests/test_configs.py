"""Every config file loads, and its model builds (shapes only, so even xlarge costs nothing)."""

import glob
import importlib
import os

import jax
import jax.numpy as jnp
import pytest

from bloodcell_jax.classes import NUM_CLASSES
from bloodcell_jax.models import create_model
from conftest import ROOT

CONFIGS = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if not os.path.basename(p).startswith("_") and os.path.basename(p) != "accelerator.py")


def test_expected_configs_exist():
  expected = {"default", "quickstart", "cpu_small", "cnn"} | {
      f"convnext_{v}" for v in ("atto", "femto", "pico", "nano", "tiny", "small", "base", "large", "xlarge")}
  assert expected <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_its_model(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  assert config.train.batch_size > 0 and config.data.image_size >= 32
  if name != "default":
    assert importlib.import_module(f"configs.{name}").__doc__.strip()
  model = create_model(config.model, NUM_CLASSES)
  size = config.data.image_size
  out = jax.eval_shape(lambda: model.apply(model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3))),
                                           jnp.zeros((2, size, size, 3))))
  assert out.shape == (2, NUM_CLASSES)
