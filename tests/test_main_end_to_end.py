"""main.py as a user runs it: train on the bundled sample over 2 devices, resume, eval, predict, export."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bloodcell_jax import trust
from bloodcell_jax.classes import CLASS_NAMES
from conftest import ROOT, run_main

TINY = ["--config", "configs/quickstart.py", "--config.data.image_size=32", "--config.model.depths=(1,1,1,1)",
        "--config.model.dims=(8,16,24,32)", "--config.train.batch_size=32"]


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_train_resume_eval_predict(tmp_path):
  workdir = str(tmp_path / "run")
  first = run_main(TINY + [f"--workdir={workdir}", "--config.train.num_epochs=2"], devices=2)
  assert first.returncode == 0, first.stderr[-3000:]
  rows = _rows(workdir)
  assert [r["epoch"] for r in rows] == [0, 1]
  assert rows[1]["step"] == 2 * (256 // 32)  # 256 of the 320 sample images train
  for split in ("train", "val"):
    for key in ("loss", "accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1",
                "macro_auc", "per_class_recall"):
      assert key in rows[1][split]
  assert np.isfinite(rows[1]["val"]["loss"])
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["model"]["dims"] == [8, 16, 24, 32]
  with open(os.path.join(workdir, "split.json")) as f:
    split = json.load(f)
  assert len(split["train_ids"]) == 256 and len(split["val_ids"]) == 64
  assert set(split["train_ids"]).isdisjoint(split["val_ids"])

  # The same command with more epochs resumes after epoch 2 instead of starting over.
  second = run_main(TINY + [f"--workdir={workdir}", "--config.train.num_epochs=3"], devices=1)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "resumed from" in second.stderr
  assert [r["epoch"] for r in _rows(workdir)] == [0, 1, 2]
  assert _rows(workdir)[2]["step"] == 3 * 8

  # A checkpoint of another model is refused.
  other = run_main(TINY[:3] + ["--config.model.name=cnn", f"--workdir={workdir}"], devices=1)
  assert other.returncode == 2 and "another model" in other.stderr

  # The end-of-training report (validation split, best checkpoint) and the TensorBoard curves.
  report_dir = os.path.join(workdir, "report", "validation")
  for name in ("metrics.json", "report.md", "training_curves.png", "confusion_matrix.png", "reliability.png",
               "misclassified.png", "calibration.png", "accuracy_coverage.png", "explanations.png"):
    assert os.path.exists(os.path.join(report_dir, name)), name
  assert len(os.listdir(os.path.join(workdir, "tensorboard"))) == 2  # one event file per session
  with open(os.path.join(workdir, "run.json")) as f:
    info = json.load(f)
  assert [s["local_devices"] for s in info["sessions"]] == [2, 1] and info["num_params"] > 0

  relative = os.path.relpath(workdir, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  evaluated = run_main(["--mode=eval", f"--workdir={relative}", "--corruptions=jpeg,mixed", "--severity=0.5",
                        "--tta=flips"], devices=2)  # relative to the repo root
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  with open(os.path.join(report_dir, "metrics.json")) as f:
    result = json.load(f)
  robustness = result["robustness"]
  assert set(robustness["results"]) == {"clean", "jpeg", "mixed"} and robustness["severity"] == 0.5
  assert robustness["results"]["clean"]["accuracy"] == result["accuracy"]
  assert result["num_images"] == 64 and result["tta"]["views"] == "flips" and result["tta"]["num_views"] == 4
  assert np.array(result["confusion_matrix"]).sum() == 64
  assert sum(row["support"] for row in result["per_class"].values()) == 64
  assert "confusion matrix" in evaluated.stdout and "with flips TTA" in evaluated.stdout
  # Fitted at the end of training with the run's dihedral views; eval used flips, for which no temperature exists.
  assert result["trust"]["temperature"] is None and set(result["trust"]["data"]) == {"clean", "corrupted"}
  assert result["trust"]["data"]["corrupted"]["images"] == 2 * 64

  out = str(tmp_path / "pred.csv")
  predicted = run_main(["--mode=predict", f"--workdir={workdir}", "--data=sample", f"--output={out}",
                        "--top_k=3", "--tta=dihedral"])
  assert predicted.returncode == 0, predicted.stderr[-3000:]
  with open(out) as f:
    rows = list(csv.reader(f))
  assert rows[0] == ["id", "predicted", "confidence", "top2", "p_top2", "top3", "p_top3"] + [
      f"p_{c}" for c in CLASS_NAMES] + ["rejected", "reject_score", "reject_reason"]
  assert len(rows) == 321
  probs = np.array([[float(v) for v in r[7:15]] for r in rows[1:]])
  np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
  fitted = trust.load(workdir, result["step"])
  threshold = fitted.rejector.threshold
  for row in rows[1:]:
    assert (row[15] == "true") == (row[17] != "") and row[17] in ("", "not a cell", "low confidence")
    assert (row[17] == "not a cell") == (float(row[16]) > threshold)
  for row, p in zip(rows[1:], probs):
    ranked = np.argsort(-p, kind="stable")
    assert [row[1], row[3], row[5]] == [CLASS_NAMES[i] for i in ranked[:3]]
    assert float(row[2]) >= float(row[4]) >= float(row[6])

  # Without a fitted record predict refuses (rejection is on by default); --mode=calibrate fits it again;
  # --reject=off leaves the rejection columns out; --explain writes one overlay per image.
  os.rename(os.path.join(workdir, "trust"), os.path.join(workdir, "trust-aside"))
  files = ",".join(os.path.join(ROOT, "bloodcell_jax", "sample_data", "pbc96_sample", r[0]) for r in rows[1:4])
  refused = run_main(["--mode=predict", f"--workdir={workdir}", f"--data={files}", f"--output={out}"])
  assert refused.returncode == 2 and "--mode=calibrate" in refused.stderr and "Traceback" not in refused.stderr
  calibrated = run_main(["--mode=calibrate", f"--workdir={workdir}"])
  assert calibrated.returncode == 0, calibrated.stderr[-3000:]
  refitted = trust.load(workdir, result["step"])
  assert refitted.temperatures == pytest.approx(fitted.temperatures, rel=1e-4)  # the same fit
  assert refitted.rejector.threshold == pytest.approx(threshold, rel=1e-3)
  explained = str(tmp_path / "explained")
  plain = run_main(["--mode=predict", f"--workdir={workdir}", f"--data={files}", f"--output={out}", "--reject=off",
                    f"--explain={explained}"])
  assert plain.returncode == 0, plain.stderr[-3000:]
  with open(out) as f:
    plain_rows = list(csv.reader(f))
  assert plain_rows[0][-1] == f"p_{CLASS_NAMES[-1]}" and len(plain_rows) == 4
  assert sorted(os.listdir(explained)) == [f"{i:05d}_{os.path.splitext(os.path.basename(r[0]))[0]}.png"
                                        for i, r in enumerate(rows[1:4])]

  # The exported model, loaded without the training code in a fresh process, gives the same probabilities.
  exported = run_main(["--mode=export", f"--workdir={workdir}", "--tta=dihedral"])
  assert exported.returncode == 0, exported.stderr[-3000:]
  files = [os.path.join("bloodcell_jax", "sample_data", "pbc96_sample", i) for i in rows[1][0:1] + rows[2][0:1]]
  loader = subprocess.run([sys.executable, os.path.join(workdir, "export", "load_model.py")] + files,
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=""))
  assert loader.returncode == 0, loader.stderr[-3000:]
  lines = list(csv.reader(loader.stdout.splitlines()))
  exported_probs = np.array([[float(v) for v in line[2:10]] for line in lines[1:]])
  np.testing.assert_allclose(exported_probs, probs[:2], atol=2e-6)
  assert [[line[10], line[12]] for line in lines[1:]] == [[r[15], r[17]] for r in rows[1:3]]
  np.testing.assert_allclose([float(line[11]) for line in lines[1:]], [float(r[16]) for r in rows[1:3]], rtol=1e-4)

  table = subprocess.run([sys.executable, "-m", "bloodcell_jax.tools.compare", workdir, f"--output={tmp_path / 'cmp'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert table.returncode == 0, table.stderr[-3000:]
  with open(tmp_path / "cmp.csv") as f:
    (compared,) = list(csv.DictReader(f))
  assert compared["epochs"] == "3" and compared["val accuracy"] == f"{result['accuracy']:.4f}"


def test_eval_without_a_run_is_a_clear_error(tmp_path):
  result = run_main(["--mode=eval", f"--workdir={tmp_path}"])
  assert result.returncode == 2
  assert "config.json: missing" in result.stderr and "Traceback" not in result.stderr


def test_early_stopping_when_the_metric_stops_improving(tmp_path):
  # With a zero learning rate nothing changes after epoch 1, so patience 1 stops after epoch 2.
  workdir = str(tmp_path / "run")
  result = run_main(TINY + [f"--workdir={workdir}", "--config.optim.learning_rate=0.0", "--config.eval.report=False",
                            "--config.train.early_stopping_patience=1", "--config.train.num_epochs=5"])
  assert result.returncode == 0, result.stderr[-3000:]
  assert [r["epoch"] for r in _rows(workdir)] == [0, 1]
  assert "early stopping" in result.stderr


def test_diverging_loss_stops_with_one_line(tmp_path):
  result = run_main(TINY + [f"--workdir={tmp_path / 'run'}", "--config.optim.name=sgd",
                            "--config.optim.learning_rate=1e30", "--config.optim.grad_clip_norm=0",
                            "--config.optim.warmup_epochs=0", "--config.train.num_epochs=1"])
  assert result.returncode == 1
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "became NaN/inf at step 2 (epoch 1)" in errors[0]
  assert "skip_nonfinite_steps=True" in errors[0]
  assert "Traceback" not in result.stderr
  assert not os.path.exists(tmp_path / "run" / "metrics.jsonl")  # nothing recorded from a diverged epoch
