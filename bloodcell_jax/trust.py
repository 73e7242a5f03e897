"""What is fitted on a trained checkpoint so that its answers can be questioned: the temperature that
calibrates its probabilities (calibration.py) and the rejector that flags images unlike its
training cells (open_set.py), with the threshold chosen on the validation split.

Fitted for one checkpoint step at the end of training (or by `--mode=calibrate`) and stored beside
the run's checkpoints as `trust/<step>.npz`: the arrays, the settings as JSON and a CRC-32 manifest
of both (integrity.py), written under a temporary name and renamed, so a kill leaves the previous
record or none, never half of one. Every load verifies the manifest; a damaged record is refused
like a damaged checkpoint.
"""

import dataclasses
import json
import os

import numpy as np

from bloodcell_jax import calibration, integrity, open_set
from bloodcell_jax.atomic_files import write_npz_atomic
from bloodcell_jax.checkpointing import Damaged
from bloodcell_jax.metrics import expected_calibration_error

TRUST_DIR = "trust"
REASON_NOT_A_CELL, REASON_LOW_CONFIDENCE = "not a cell", "low confidence"


def weights_fingerprint(variables) -> str:
  """A digest of a checkpoint's variables: a record fitted for other weights (a run restarted in
  the same directory, a checkpoint replaced) is never applied to these."""
  return integrity.json_digest(integrity.tree_digests(variables))


@dataclasses.dataclass(frozen=True)
class Trust:
  step: int
  temperatures: dict  # {test-time augmentation name: T} for the views it was fitted with
  rejector: open_set.Rejector
  min_confidence: float  # calibrated top probability below which an answer is withheld
  summary: dict  # what the fit measured on the validation split (for reports)
  weights: str = ""  # weights_fingerprint of the variables it was fitted for

  def temperature(self, tta_name: str) -> float | None:
    return self.temperatures.get(tta_name)

  def calibrate(self, probs: np.ndarray, tta_name: str) -> np.ndarray:
    """The probabilities calibrated with the temperature fitted for these views (as they are if none was)."""
    temperature = self.temperature(tta_name)
    return probs if temperature is None else calibration.apply_temperature(probs, temperature)

  def decide(self, reject_scores: np.ndarray, calibrated_probs: np.ndarray) -> np.ndarray:
    """The reason each image is rejected ("" where it is kept): its features lie beyond the
    threshold, or its calibrated confidence is below `min_confidence`."""
    return decide(reject_scores, calibrated_probs, self.rejector.threshold, self.min_confidence)


def decide(reject_scores, calibrated_probs, threshold: float, min_confidence: float) -> np.ndarray:
  reasons = np.full(len(reject_scores), "", dtype=object)
  reasons[np.asarray(calibrated_probs).max(-1) < min_confidence] = REASON_LOW_CONFIDENCE
  reasons[np.asarray(reject_scores) > threshold] = REASON_NOT_A_CELL
  return reasons


def path_of(workdir: str, step: int) -> str:
  return os.path.join(workdir, TRUST_DIR, f"{step}.npz")


def fit(step: int, train_features, train_labels, val_outputs: dict, val_labels, tta_name: str, method: str,
        target_false_rejection: float, min_confidence: float, num_classes: int, weights: str = "") -> Trust:
  """Temperatures (for the plain and the test-time-averaged probabilities) and the rejector.

  `train_features` are per-stage feature statistics (taps.stage_statistics) of training images;
  `val_outputs` holds the validation split's "probs", "tta_probs" (or None), "logits" and "features".
  """
  val_labels = np.asarray(val_labels)
  candidates = {"none": val_outputs["probs"]}
  if val_outputs.get("tta_probs") is not None and tta_name != "none":
    candidates[tta_name] = val_outputs["tta_probs"]
  temperatures = {name: calibration.fit_temperature(p, val_labels) for name, p in candidates.items()}
  rejector = open_set.fit(method, train_features, train_labels, num_classes, val_outputs["features"],
                          val_outputs["logits"], target_false_rejection)
  summary = {"validation_images": int(len(val_labels)), "training_images": int(len(train_labels)),
             "expected_calibration_error": {
                 name: {"before": expected_calibration_error(val_labels, p),
                        "after": expected_calibration_error(val_labels,
                                                            calibration.apply_temperature(p, temperatures[name]))}
                 for name, p in candidates.items()}}
  return Trust(step, temperatures, rejector, float(min_confidence), summary, weights)


def _settings(trust: Trust) -> dict:
  return {"step": trust.step, "temperatures": trust.temperatures, "method": trust.rejector.method,
          "threshold": trust.rejector.threshold, "target_false_rejection": trust.rejector.target_false_rejection,
          "min_confidence": trust.min_confidence, "summary": trust.summary, "weights": trust.weights}


def save(workdir: str, trust: Trust) -> str:
  """Writes `trust/<step>.npz` atomically (replacing an earlier fit for the same step)."""
  settings = _settings(trust)
  arrays = {name: np.asarray(a) for name, a in trust.rejector.arrays.items()}
  manifest = integrity.make_manifest({"arrays": arrays}, {"settings": settings})
  path = path_of(workdir, trust.step)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  write_npz_atomic(path, **{f"array_{name}": a for name, a in arrays.items()},
                   settings=np.frombuffer(json.dumps(settings).encode(), np.uint8),
                   manifest=np.frombuffer(json.dumps(manifest).encode(), np.uint8))
  return path


def load(workdir: str, step: int, weights: str | None = None) -> Trust | None:
  """The verified record fitted for `step`, or None when there is none. Raises Damaged, also when
  `weights` (a weights_fingerprint) is given and the record was fitted for other weights."""
  path = path_of(workdir, step)
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as archive:
      files = {name: archive[name] for name in archive.files}
    settings = json.loads(files.pop("settings").tobytes())
    manifest = json.loads(files.pop("manifest").tobytes())
  except Exception as e:  # truncated or altered zip, JSON that does not parse, a missing member
    raise Damaged(f"{path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
  arrays = {name.removeprefix("array_"): a for name, a in files.items()}
  damage = integrity.find_damage(manifest, {"arrays": arrays}, {"settings": settings})
  if damage:
    raise Damaged(f"{path}: {damage}")
  rejector = open_set.Rejector(settings["method"], arrays, float(settings["threshold"]),
                               float(settings["target_false_rejection"]))
  if weights is not None and settings.get("weights") != weights:
    raise Damaged(f"{path}: was fitted for other weights than this checkpoint's")
  return Trust(int(settings["step"]), {k: float(v) for k, v in settings["temperatures"].items()}, rejector,
               float(settings["min_confidence"]), settings["summary"], settings.get("weights", ""))
