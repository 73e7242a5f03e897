"""Calibration, open-set rejection and the verified record that carries them (trust.py), with the
numbers computed by hand, and the fault cases of the record: a kill while it is written, a flipped
bit, a truncated file."""

import os

import jax
import numpy as np
import pytest

from bloodcell_jax import calibration, open_set, trust
from bloodcell_jax.checkpointing import Damaged
from bloodcell_jax.metrics import accuracy_coverage, rejection_summary


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_temperature_recovers_the_overconfidence_of_a_model():
  """Labels drawn from softmax(z); the model reports softmax(2.5 z): the fitted T is 2.5."""
  rng = np.random.default_rng(0)
  z = rng.normal(size=(20000, 8)) * 2
  labels = (rng.random((20000, 1)) > np.cumsum(_softmax(z), -1)).sum(-1)
  probs = _softmax(2.5 * z)
  t = calibration.fit_temperature(probs, labels)
  assert t == pytest.approx(2.5, rel=0.05)
  nll = [calibration.negative_log_likelihood(probs, labels, x) for x in (1.0, t, 4.0)]
  assert nll[1] < nll[0] and nll[1] < nll[2]
  # On plain predictions, temperature scaling of log-probabilities is softmax(logits / T) exactly.
  np.testing.assert_allclose(calibration.apply_temperature(probs, t), _softmax(2.5 * z / t), rtol=1e-4, atol=1e-6)
  assert (calibration.apply_temperature(probs, t).argmax(-1) == probs.argmax(-1)).all()
  with pytest.raises(ValueError, match="labelled"):
    calibration.fit_temperature(probs[:3], np.array([0, -1, 2]))


def _clusters(rng, n, centres, spread=0.3):
  labels = rng.integers(0, len(centres), n)
  return centres[labels] + spread * rng.normal(size=(n, centres.shape[1])), labels


def test_mahalanobis_score_equals_the_formula_and_rejects_what_lies_elsewhere():
  rng = np.random.default_rng(1)
  centres = rng.normal(size=(3, 6)) * 3
  train, train_labels = _clusters(rng, 600, centres)
  held_out, _ = _clusters(rng, 2000, centres)
  logits = np.zeros((2000, 3), np.float32)
  rejector = open_set.fit("mahalanobis", [train], train_labels, 3, [held_out], logits, 0.05)

  unit = lambda x: x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-6)  # noqa: E731
  u = unit(train)
  means = np.stack([u[train_labels == c].mean(0) for c in range(3)])
  centred = u - means[train_labels]
  cov = centred.T @ centred / (len(u) - 1)
  cov = 0.9 * cov + 0.1 * np.trace(cov) / 6 * np.eye(6)
  precision = np.linalg.inv(cov)
  d = lambda x: np.min([np.einsum("bd,de,be->b", unit(x) - m, precision, unit(x) - m) for m in means], 0)  # noqa
  held = d(held_out)
  expected = (held - np.median(held)) / held.std()
  got = open_set.scores("mahalanobis", rejector.arrays, [held_out], logits)
  np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
  assert rejector.threshold == pytest.approx(np.quantile(expected, 0.95), rel=1e-3, abs=1e-3)
  fresh, _ = _clusters(rng, 2000, centres)
  assert (open_set.scores("mahalanobis", rejector.arrays, [fresh], logits) > rejector.threshold).mean() \
      == pytest.approx(0.05, abs=0.02)
  elsewhere = rng.normal(size=(500, 6)) * 3 + 8 * np.sign(rng.normal(size=(1, 6)))
  assert (open_set.scores("mahalanobis", rejector.arrays, [elsewhere], logits[:500]) > rejector.threshold).mean() > 0.95


def test_stages_add_up_and_knn_equals_brute_force():
  rng = np.random.default_rng(2)
  centres = [rng.normal(size=(2, 4)) * 3, rng.normal(size=(2, 5)) * 3]
  labels = rng.integers(0, 2, 300)
  blocks = [c[labels] + 0.3 * rng.normal(size=(300, c.shape[1])) for c in centres]
  logits = rng.normal(size=(300, 2)).astype(np.float32)
  knn = open_set.fit("knn", blocks, labels, 2, blocks, logits, 0.1)
  unit = lambda x: x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-6)  # noqa: E731
  raw = np.stack([1 - np.sort(unit(b) @ unit(b).T, 1)[:, -open_set.KNN_K] for b in blocks], -1)
  np.testing.assert_allclose(knn.arrays["centre"], np.median(raw, 0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(open_set.scores("knn", knn.arrays, blocks, logits),
                             ((raw - np.median(raw, 0)) / raw.std(0)).sum(-1), rtol=1e-3, atol=1e-3)
  energy = open_set.fit("energy", blocks, labels, 2, blocks, logits, 0.1)
  lse = np.log(np.exp(logits).sum(-1))
  np.testing.assert_allclose(open_set.scores("energy", energy.arrays, blocks, logits),
                             (-lse - np.median(-lse)) / (-lse).std(), rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="choose from mahalanobis"):
    open_set.check_method("odin")


def test_reasons_and_what_the_report_counts():
  probs = np.array([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8], [0.6, 0.4]])
  reasons = trust.decide(np.array([0.0, 0.0, 5.0, 1.0]), probs, threshold=2.0, min_confidence=0.58)
  assert reasons.tolist() == ["", "low confidence", "not a cell", ""]
  summary = rejection_summary(np.array([0, 1, 1, 1]), probs, reasons, 2)
  assert summary["rejected"] == 0.5 and summary["by_reason"] == {"low confidence": 0.25, "not a cell": 0.25}
  assert summary["rejected_by_class"] == {"0": 0.0, "1": 2 / 3}
  assert summary["accuracy_all"] == 0.5 and summary["accuracy_kept"] == 0.5  # kept: #0 right, #3 wrong
  coverage, accuracy = accuracy_coverage(np.array([True, False, True, True]), np.array([0.1, 0.9, 0.2, 0.3]))
  np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
  np.testing.assert_allclose(accuracy, [1.0, 1.0, 1.0, 0.75])


def _fitted(step=7):
  rng = np.random.default_rng(3)
  centres = rng.normal(size=(8, 5)) * 3
  labels = rng.integers(0, 8, 400)
  blocks = [centres[labels] + 0.3 * rng.normal(size=(400, 5))]
  logits = rng.normal(size=(400, 8)).astype(np.float32)
  val = {"probs": _softmax(3 * logits), "tta_probs": _softmax(2 * logits), "logits": logits, "features": blocks}
  fitted = trust.fit(step, blocks, labels, val, labels, "flips", "mahalanobis", 0.01, 0.3, 8,
                     trust.weights_fingerprint({"params": {"w": np.arange(3.0)}}))
  return fitted, blocks, logits


def test_record_round_trip(tmp_path):
  fitted, blocks, logits = _fitted()
  assert set(fitted.temperatures) == {"none", "flips"}
  trust.save(str(tmp_path), fitted)
  loaded = trust.load(str(tmp_path), 7)
  assert loaded.temperatures == fitted.temperatures and loaded.min_confidence == 0.3
  assert loaded.rejector.threshold == fitted.rejector.threshold and loaded.summary == fitted.summary
  for name, array in fitted.rejector.arrays.items():
    np.testing.assert_array_equal(loaded.rejector.arrays[name], array)
  np.testing.assert_array_equal(open_set.scores("mahalanobis", loaded.rejector.arrays, blocks, logits),
                                open_set.scores("mahalanobis", fitted.rejector.arrays, blocks, logits))
  assert trust.load(str(tmp_path), 8) is None  # another step: nothing fitted
  assert trust.load(str(tmp_path), 7, weights=fitted.weights) is not None
  with pytest.raises(Damaged, match="fitted for other weights"):  # e.g. a restarted run reached step 7 again
    trust.load(str(tmp_path), 7, weights="0badcafe")
  ece = fitted.summary["expected_calibration_error"]["none"]
  assert ece["after"] < ece["before"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "settings"])
def test_a_damaged_record_is_refused(tmp_path, damage):
  fitted, _, _ = _fitted()
  path = trust.save(str(tmp_path), fitted)
  data = bytearray(open(path, "rb").read())
  if damage == "flip":  # one bit in the middle of the (compressed) arrays
    data[len(data) // 2] ^= 0x10
  elif damage == "truncate":
    data = data[:len(data) * 2 // 3]
  open(path, "wb").write(bytes(data))
  if damage == "settings":  # a valid file whose settings no longer match the manifest
    with np.load(path) as archive:
      files = dict(archive)
    settings = bytes(files["settings"]).replace(b'"min_confidence": 0.3', b'"min_confidence": 0.0')
    files["settings"] = np.frombuffer(settings, np.uint8)
    np.savez_compressed(path, **files)
  with pytest.raises(Damaged, match=os.path.basename(path)):
    trust.load(str(tmp_path), 7)


def test_a_kill_while_writing_leaves_the_previous_record(tmp_path, monkeypatch):
  """The record is written under a temporary name and renamed: a write that dies half way (here the
  writer raises after writing part of the file) leaves the earlier record whole."""
  fitted, _, _ = _fitted()
  trust.save(str(tmp_path), fitted)
  real = np.savez_compressed

  def dies_half_way(file, **arrays):
    real(file, **arrays)
    with open(file, "r+b") as f:
      f.truncate(os.path.getsize(file) // 2)
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(np, "savez_compressed", dies_half_way)
  changed = trust.Trust(7, {"none": 9.0}, fitted.rejector, 0.5, fitted.summary)
  with pytest.raises(OSError):
    trust.save(str(tmp_path), changed)
  monkeypatch.undo()
  assert trust.load(str(tmp_path), 7).temperatures == fitted.temperatures


def test_score_runs_inside_jit_with_the_arrays_as_arguments():
  """What the export does: the rejector's arrays are function arguments, not constants."""
  fitted, blocks, logits = _fitted()
  names = sorted(fitted.rejector.arrays)
  function = jax.jit(lambda arrays, b, l: open_set.score("mahalanobis", dict(zip(names, arrays)), b, l))
  np.testing.assert_allclose(function([fitted.rejector.arrays[n] for n in names], blocks, logits),
                             open_set.scores("mahalanobis", fitted.rejector.arrays, blocks, logits), rtol=1e-5)
