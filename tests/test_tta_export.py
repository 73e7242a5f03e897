"""Test-time views inside the eval step, and the jax.export artefact against the model it came from."""

import csv
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import jax_utils

from bloodcell_jax import open_set, trust, tta
from bloodcell_jax.classes import CLASS_NAMES
from bloodcell_jax.export import export_checkpoint, write_export
from bloodcell_jax.exported_model import ExportedClassifier
from bloodcell_jax.models import create_model
from bloodcell_jax.distributed import AXIS
from bloodcell_jax.steps import StepConfig, eval_step, normalize
from bare_env import make_site
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

  plain_metrics, out = run("none")
  plain, none_tta = out["probs"], out["tta_probs"]
  assert none_tta is None and "features" not in out
  metrics, out = run("dihedral")
  probs, averaged = out["probs"], out["tta_probs"]
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
  _, _, expected, _ = tta.probabilities(lambda x: (apply(x), None), normalize(images, config.data.mean,
                                                                             config.data.std), "flips")
  for count in (1, 5):  # 5 runs as batches of 4 and 1: the batch dimension is symbolic
    np.testing.assert_allclose(loaded.predict_proba(images[:count]), np.asarray(expected)[:count], atol=2e-6)
  assert loaded.predict(images[:2]) == [list("abcdefgh")[i] for i in np.asarray(expected)[:2].argmax(-1)]
  with pytest.raises(ValueError, match=r"uint8 \(N, 32, 32, 3\)"):
    loaded.predict_proba(images.astype(np.float32))


def _fitted_export(tmp_path):
  """A tiny model with a temperature and rejector fitted on its own outputs, exported; the images
  the tests feed it, and the model's own answers for them (calibrated TTA probabilities, scores)."""
  config, model, params = _model_and_params()
  variables = {"params": params}
  cfg = StepConfig(num_classes=8, mean=tuple(config.data.mean), std=tuple(config.data.std), tta="flips", outputs=True)
  step = jax.pmap(functools.partial(eval_step, model=model, cfg=cfg), axis_name=AXIS, devices=jax.local_devices()[:1])
  rng = np.random.default_rng(5)

  def outputs(images):
    batch = {"image": images[None], "label": np.zeros((1, len(images)), np.int32),
             "mask": np.ones((1, len(images)), np.float32)}
    return jax.tree.map(lambda x: np.asarray(x)[0], step(jax_utils.replicate(variables, jax.local_devices()[:1]), batch,
                                                         jax_utils.replicate(jnp.ones(8), jax.local_devices()[:1]))[1])

  train = outputs(rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8))
  val = outputs(rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8))
  labels = rng.integers(0, 8, 64)
  fitted = trust.fit(3, train["features"], labels, val, labels, "flips", "mahalanobis", 0.1, 0.2, 8)
  directory = str(tmp_path / "export")
  write_export(directory, config, variables, "flips", fitted, platforms=("cpu",))
  images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  images[2] = 200  # a blank frame
  mine = outputs(images)
  probs = fitted.calibrate(mine["tta_probs"], "flips")
  scores = open_set.scores("mahalanobis", fitted.rejector.arrays, mine["features"], mine["logits"])
  return directory, images, probs, scores, fitted


def test_export_carries_the_calibration_and_the_rejector(tmp_path):
  directory, images, probs, scores, fitted = _fitted_export(tmp_path)
  loaded = ExportedClassifier(directory)
  answers = loaded.answer(images)
  np.testing.assert_allclose(answers["probs"], probs, atol=2e-6)
  np.testing.assert_allclose(answers["reject_score"], scores, rtol=1e-4, atol=1e-4)
  assert answers["reason"].tolist() == fitted.decide(scores, probs).tolist()
  assert loaded.rejection["threshold"] == fitted.rejector.threshold and loaded.rejection["min_confidence"] == 0.2


def test_loader_runs_with_only_what_the_readme_lists(tmp_path):
  """`load_model.py` in a process whose import path holds jax, numpy, pillow and flatbuffers (and
  what they require), nothing else: the same answers; without flatbuffers it cannot load."""
  from PIL import Image

  directory, images, probs, scores, _ = _fitted_export(tmp_path)
  files = []
  for i, image in enumerate(images):
    files.append(str(tmp_path / f"cell{i}.png"))
    Image.fromarray(image).save(files[-1])
  readme = ["jax", "numpy", "pillow", "flatbuffers"]
  results = {}
  for name, distributions in (("listed", readme), ("without flatbuffers", readme[:-1])):
    site = str(tmp_path / name.replace(" ", "_"))
    linked = make_site(site, distributions)
    assert "flax" not in linked and ("flatbuffers" in linked) == (name == "listed")
    results[name] = subprocess.run(
        [sys.executable, "-S", os.path.join(directory, "load_model.py")] + files, capture_output=True, text=True,
        timeout=300, cwd=str(tmp_path), env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": site,
                                             "JAX_PLATFORMS": "cpu", "HOME": str(tmp_path)})
  listed = results["listed"]
  assert listed.returncode == 0, listed.stderr[-3000:]
  rows = list(csv.DictReader(listed.stdout.splitlines()))
  np.testing.assert_allclose([[float(r[f"p_{c}"]) for c in CLASS_NAMES] for r in rows], probs, atol=2e-6)
  np.testing.assert_allclose([float(r["reject_score"]) for r in rows], scores, rtol=1e-4, atol=1e-4)
  missing = results["without flatbuffers"]
  assert missing.returncode != 0 and "flatbuffers" in missing.stderr
