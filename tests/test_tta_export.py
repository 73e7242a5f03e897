"""Test-time views inside the eval step, and the jax.export artefact against the model it came from."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import jax_utils

from bloodcell_jax import tta
from bloodcell_jax.export import export_checkpoint
from bloodcell_jax.exported_model import ExportedClassifier
from bloodcell_jax.models import create_model
from bloodcell_jax.distributed import AXIS
from bloodcell_jax.steps import StepConfig, eval_step, normalize
from conftest import init_params, tiny_config


def test_views_are_the_dihedral_group():
  image = np.arange(2 * 4 * 4 * 1).reshape(2, 4, 4, 1)  # no symmetry: every view differs
  views = np.asarray(tta.views(jnp.asarray(image), "dihedral"))
  keys = {v.tobytes() for v in views}
  assert len(keys) == 8
  for v in views:  # closed under the group: the views of a view are the same eight images
    assert {w.tobytes() for w in np.asarray(tta.views(jnp.asarray(v), "dihedral"))} == keys
  np.testing.assert_array_equal(views[0], image)
  np.testing.assert_array_equal(np.asarray(tta.views(jnp.asarray(image), "hflip"))[1], image[:, :, ::-1])
  np.testing.assert_array_equal(np.asarray(tta.views(jnp.asarray(image), "rot90"))[1], np.rot90(image, 1, (1, 2)))
  with pytest.raises(ValueError, match="unknown test-time augmentation 'spin'"):
    tta.check("spin")


def _model_and_params():
  config = tiny_config()
  model = create_model(config.model, 8)
  return config, model, init_params(model, 32, seed=0)


def test_eval_step_averages_softmax_over_the_views():
  config, model, params = _model_and_params()
  images = np.random.default_rng(0).integers(0, 256, (1, 4, 32, 32, 3), dtype=np.uint8)
  batch = {"image": images, "label": np.zeros((1, 4), np.int32), "mask": np.ones((1, 4), np.float32)}
  device = jax.local_devices()[:1]

  def run(name):
    cfg = StepConfig(num_classes=8, mean=(0.5,) * 3, std=(0.25,) * 3, tta=name)
    step = jax.pmap(functools.partial(eval_step, model=model, cfg=cfg), axis_name=AXIS, devices=device)
    return step(jax_utils.replicate({"params": params}, device), batch, jax_utils.replicate(jnp.ones(8), device))

  plain_metrics, plain, none_tta = run("none")
  assert none_tta is None
  metrics, probs, averaged = run("dihedral")
  np.testing.assert_allclose(probs, plain, atol=1e-6)  # the plain view and the loss do not change
  np.testing.assert_allclose(metrics["loss_sum"], plain_metrics["loss_sum"], rtol=1e-6)
  by_hand = np.mean([jax.nn.softmax(model.apply({"params": params}, normalize(
      np.rot90(images[0], k, (1, 2))[:, :, ::-1] if m else np.rot90(images[0], k, (1, 2)), (0.5,) * 3, (0.25,) * 3),
      train=False)) for m in (False, True) for k in range(4)], axis=0)
  np.testing.assert_allclose(averaged[0], by_hand, atol=1e-6)
  assert not np.allclose(averaged[0], plain[0], atol=1e-4)  # the views really differ for this model


def test_exported_function_equals_the_model_for_any_batch_size(tmp_path):
  config, model, params = _model_and_params()
  config.data.mean, config.data.std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
  serialized, weights = export_checkpoint(config, {"params": params}, "flips", platforms=("cpu",))
  (tmp_path / "f.bin").write_bytes(serialized)
  np.savez(tmp_path / "w.npz", **{f"w{i:04d}": w for i, w in enumerate(weights)})
  (tmp_path / "model.json").write_text(
      '{"function_file": "f.bin", "weights_file": "w.npz", "class_names": %s, "image_size": 32, "batch_size": 4}'
      % str(list("abcdefgh")).replace("'", '"'))
  loaded = ExportedClassifier(str(tmp_path))
  images = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
  apply = lambda x: model.apply({"params": params}, x, train=False)
  _, _, expected = tta.probabilities(apply, normalize(images, config.data.mean, config.data.std), "flips")
  for count in (1, 5):  # 5 runs as batches of 4 and 1: the batch dimension is symbolic
    np.testing.assert_allclose(loaded.predict_proba(images[:count]), np.asarray(expected)[:count], atol=2e-6)
  assert loaded.predict(images[:2]) == [list("abcdefgh")[i] for i in np.asarray(expected)[:2].argmax(-1)]
  with pytest.raises(ValueError, match=r"uint8 \(N, 32, 32, 3\)"):
    loaded.predict_proba(images.astype(np.float32))
