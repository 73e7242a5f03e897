"""Evaluation report: calibration by hand, the plots as real images, the report directory, the comparison table."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from bloodcell_jax import plots, report
from bloodcell_jax.classes import CLASS_NAMES
from bloodcell_jax.tools import compare as compare_tool
from bloodcell_jax.tools.compare import compare
from bloodcell_jax.errors import UserInputError
from bloodcell_jax.metrics import detailed_metrics, expected_calibration_error, reliability_bins


def _probs_with(confidences, predicted, num_classes=3):
  probs = np.zeros((len(confidences), num_classes))
  for row, (c, p) in enumerate(zip(confidences, predicted)):
    probs[row] = (1 - c) / (num_classes - 1)
    probs[row, p] = c
  return probs


def test_expected_calibration_error_by_hand():
  # One example per bin of ten: |accuracy - confidence| is 0.07, 0.62 (wrong), 0.23 and 0.45.
  labels = np.array([0, 1, 1, 0])
  probs = _probs_with([0.93, 0.62, 0.77, 0.55], [0, 2, 1, 0])
  assert expected_calibration_error(labels, probs, num_bins=10) == pytest.approx((0.07 + 0.62 + 0.23 + 0.45) / 4)
  bins = reliability_bins(labels, probs, num_bins=10)
  assert bins["count"].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 0, 1]
  assert bins["accuracy"][6] == 0.0 and bins["confidence"][6] == pytest.approx(0.62)
  assert np.isnan(bins["accuracy"][0])
  # Two examples sharing a bin: accuracy 1/2 against mean confidence 0.575.
  both = _probs_with([0.55, 0.6], [0, 1])
  assert expected_calibration_error(np.array([0, 0]), both, num_bins=10) == pytest.approx(0.075)


def test_detailed_metrics_per_class_and_confusion():
  labels = np.array([0, 0, 0, 1, 1, 2])
  probs = _probs_with([0.9] * 6, [0, 0, 1, 1, 2, 2])
  m = detailed_metrics(labels, probs)
  assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
  # Class 0 scores: positives 0.9, 0.9, 0.05; negatives 0.05 x 3 -> (6 wins + 3 ties / 2) / 9 pairs.
  assert m["per_class"]["0"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8),
                                 "auc": pytest.approx(7.5 / 9), "support": 3}
  assert m["per_class"]["1"]["precision"] == 0.5 and m["per_class"]["1"]["recall"] == 0.5
  assert m["per_class"]["2"]["f1"] == pytest.approx(2 / 3) and m["per_class"]["2"]["support"] == 1
  assert m["expected_calibration_error"] == pytest.approx(abs(4 / 6 - 0.9))


def _image(png: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _assert_real_plot(png: bytes, size: tuple[int, int]):
  image = _image(png)
  assert image.shape[:2] == (size[1], size[0])  # PIL sizes are (width, height)
  assert image.std() > 10  # not blank
  assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50


def _history(epochs=5):
  rng = np.random.default_rng(0)
  rows = []
  for e in range(epochs):
    metrics = lambda: {"loss": 2.0 / (e + 1), "accuracy": 0.5 + 0.08 * e + 0.01 * rng.random(),
                       "balanced_accuracy": 0.5 + 0.07 * e, "macro_auc": None}
    rows.append({"epoch": e, "step": 10 * (e + 1), "learning_rate": 1e-3 * (1 - e / epochs), "time_s": 1.0,
                 "train": metrics(), "val": metrics()})
  return rows


def test_plots_are_real_images_of_the_stated_size():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 8, 200)
  probs = rng.dirichlet(np.ones(8) * 0.3, 200)
  images = rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8)
  matrix = np.array(detailed_metrics(labels, probs)["confusion_matrix"])
  _assert_real_plot(plots.training_curves(_history(), best_epoch=3), (1300, 380))
  _assert_real_plot(plots.confusion_matrix(matrix, list(CLASS_NAMES)), (1400, 620))
  _assert_real_plot(plots.reliability_diagram(reliability_bins(labels, probs), 0.1), (550, 650))
  wrong = (probs.argmax(-1) != labels).sum()
  assert wrong >= 24
  _assert_real_plot(plots.misclassified_grid(images, labels, probs, list(CLASS_NAMES)), (1140, 4 * 225 + 40))


def test_misclassified_grid_shows_the_most_confident_errors_first():
  labels = np.array([0, 0, 0, 1])
  probs = _probs_with([0.99, 0.6, 0.9, 0.95], [1, 1, 0, 1], num_classes=2)  # errors: #0 (0.99), #1 (0.6)
  images = np.zeros((4, 8, 8, 3), np.uint8)
  images[0], images[1] = 255, 128
  grid = _image(plots.misclassified_grid(images, labels, probs, ["a", "b"], count=2, columns=2))
  assert grid.shape[:2] == (int((2.25 + 0.4) * 100), int(2 * 1.9 * 100))
  left, right = grid[:, : grid.shape[1] // 2], grid[:, grid.shape[1] // 2:]
  # The first tile is the all-white image (the 0.99 error), the second the grey one.
  assert (np.abs(right.astype(int) - 128).sum(-1) < 3).sum() > 1000
  assert (np.abs(left.astype(int) - 128).sum(-1) < 3).sum() < 50


def test_write_report_writes_every_file(tmp_path):
  rng = np.random.default_rng(1)
  labels = np.repeat(np.arange(8), 10)
  probs = rng.dirichlet(np.ones(8), 80)
  evaluation = report.Evaluation(rng.integers(0, 256, (80, 32, 32, 3), dtype=np.uint8), labels,
                                 np.array([f"#{i}" for i in range(80)]), probs, probs[:, ::-1].copy(), "hflip")
  result = report.write_report(str(tmp_path), evaluation, title="t", context={"run": "r"},
                               record={"step": 7}, history=_history(), best_epoch=1,
                               robustness={"severity": 0.5, "mean_corrupted_accuracy": 0.1,
                                           "results": {"clean": {"accuracy": 0.2, "balanced_accuracy": 0.2,
                                                                 "macro_f1": 0.1}}})
  assert sorted(os.listdir(tmp_path)) == ["confusion_matrix.png", "metrics.json", "misclassified.png",
                                          "reliability.png", "report.md", "training_curves.png"]
  with open(tmp_path / "metrics.json") as f:
    saved = json.load(f)  # strict JSON: NaN became null
  assert saved["step"] == 7 and saved["tta"]["views"] == "hflip" and saved["tta"]["num_views"] == 2
  assert saved["accuracy"] == result["accuracy"] == pytest.approx((probs.argmax(-1) == labels).mean())
  assert saved["tta"]["accuracy"] == pytest.approx((probs[:, ::-1].argmax(-1) == labels).mean())
  markdown = (tmp_path / "report.md").read_text()
  for name in ("training_curves.png", "confusion_matrix.png", "reliability.png", "misclassified.png"):
    assert f"]({name})" in markdown
  assert "| accuracy |" in markdown and "with TTA (hflip, 2 views)" in markdown and "Robustness" in markdown


def test_compare_refuses_a_directory_that_is_not_a_run(tmp_path):
  with pytest.raises(UserInputError, match="no config.json"):
    compare([str(tmp_path)], str(tmp_path / "table"))
  with pytest.raises(UserInputError, match="no such run directory"):
    compare([str(tmp_path / "missing")], str(tmp_path / "table"))
  assert not os.path.exists(tmp_path / "table.md")


def test_compare_command_takes_run_directories_as_positional_arguments(tmp_path, capsys):
  assert compare_tool.main([str(tmp_path), f"--output={tmp_path / 'table'}", "--test", "bloodmnist_test"]) == 2
  assert capsys.readouterr().err == f"error: {tmp_path}: no config.json; not the run directory of a training run\n"
  assert compare_tool.main([f"--output={tmp_path / 'table'}"]) == 2
  assert capsys.readouterr().err.startswith("error: missing RUN_DIR (usage: python -m bloodcell_jax.tools.compare ")
  assert not os.path.exists(tmp_path / "table.md")


def test_report_with_calibration_rejection_and_explanations(tmp_path):
  """What predict answers, summarised: calibration error before/after and the shares rejected, on
  clean and corrupted images, computed by hand here; and the three figures it draws."""
  from bloodcell_jax import open_set, trust

  rng = np.random.default_rng(2)
  labels = np.repeat(np.arange(8), 10)
  raw = rng.dirichlet(np.ones(8), 80)
  calibrated = rng.dirichlet(np.ones(8), 80)
  reasons = np.array(["not a cell" if i % 10 == 0 else "low confidence" if i % 10 == 1 else "" for i in range(80)],
                     dtype=object)
  answers = report.Answers(labels, raw, calibrated, rng.normal(size=80), reasons)
  corrupted = report.Answers.join([answers, answers])
  fitted = trust.Trust(3, {"none": 1.5}, open_set.Rejector("mahalanobis", {}, 2.0, 0.01), 0.4, {})
  explanations = {"indices": np.array([0, 5, 11]), "heatmaps": rng.random((3, 32, 32)).astype(np.float32),
                  "predictions": raw[[0, 5, 11]].argmax(-1)}
  evaluation = report.Evaluation(rng.integers(0, 256, (80, 32, 32, 3), dtype=np.uint8), labels,
                                 np.array([f"#{i}" for i in range(80)]), raw, answers=answers,
                                 corrupted_answers=corrupted, trust=fitted, explanations=explanations)
  result = report.write_report(str(tmp_path), evaluation, title="t", context={"run": "r"}, record={})
  for name in ("calibration.png", "accuracy_coverage.png", "explanations.png"):
    assert os.path.exists(tmp_path / name)
  _assert_real_plot((tmp_path / "accuracy_coverage.png").read_bytes(), (600, 450))
  summary = result["trust"]
  assert summary["temperature"] == 1.5 and summary["threshold"] == 2.0
  clean = summary["data"]["clean"]
  assert clean["rejected"] == pytest.approx(0.2) and clean["by_reason"] == {"low confidence": 0.1, "not a cell": 0.1}
  assert clean["expected_calibration_error"]["before"] == pytest.approx(expected_calibration_error(labels, raw))
  assert clean["expected_calibration_error"]["after"] == pytest.approx(expected_calibration_error(labels, calibrated))
  kept = reasons == ""
  assert clean["accuracy_kept"] == pytest.approx((calibrated.argmax(-1) == labels)[kept].mean())
  assert summary["data"]["corrupted"]["images"] == 160
  markdown = (tmp_path / "report.md").read_text()
  assert "Calibration and rejection" in markdown and "| clean (80) |" in markdown and "](explanations.png)" in markdown
