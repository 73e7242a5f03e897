"""Runs a model exported by `python main.py --mode=export`, with nothing but jax, numpy, flatbuffers
(jax.export's serialization) and pillow (for image files): no Flax, no bloodcell_jax. `--mode=export`
copies this file into the export directory as `load_model.py`.

  from load_model import ExportedClassifier
  model = ExportedClassifier("checkpoints/cpu_small/export")
  probs = model.predict_proba(images)  # uint8 (N, H, W, 3) RGB at model.image_size -> (N, 8), calibrated
  answers = model.answer(images)  # also each image's rejection score, rejected and reason

  python checkpoints/cpu_small/export/load_model.py cell1.jpg cell2.png   # CSV on stdout
"""

import json
import os
import sys

import jax
import numpy as np


class ExportedClassifier:
  """The serialized StableHLO function (normalisation, model, test-time views, softmax, calibration,
  rejection score) and its weights."""

  def __init__(self, directory: str):
    with open(os.path.join(directory, "model.json")) as f:
      self.meta = json.load(f)
    with open(os.path.join(directory, self.meta["function_file"]), "rb") as f:
      self._function = jax.export.deserialize(bytearray(f.read()))
    with np.load(os.path.join(directory, self.meta["weights_file"])) as archive:
      self._weights = [archive[f"w{i:04d}"] for i in range(len(archive.files))]
    self.class_names = self.meta["class_names"]
    self.image_size = self.meta["image_size"]
    self.batch_size = self.meta["batch_size"]
    self.rejection = self.meta.get("rejection")  # None: the run had no fitted rejector

  def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    expected = (self.image_size, self.image_size, 3)
    if images.ndim != 4 or images.shape[1:] != expected or images.dtype != np.uint8:
      raise ValueError(f"images must be uint8 (N, {self.image_size}, {self.image_size}, 3), got "
                       f"{images.dtype} {images.shape}")
    chunks = [[np.asarray(o) for o in self._function.call(self._weights, images[i:i + self.batch_size])]
              for i in range(0, len(images), self.batch_size)]
    if not chunks:
      return np.zeros((0, len(self.class_names)), np.float32), np.zeros((0,), np.float32)
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])

  def predict_proba(self, images: np.ndarray) -> np.ndarray:
    """Class probabilities (N, classes) for uint8 RGB images (N, image_size, image_size, 3)."""
    return self._run(images)[0]

  def answer(self, images: np.ndarray) -> dict:
    """{"probs", "reject_score", "rejected", "reason"}: the reason is "not a cell" when the score
    exceeds the fitted threshold, "low confidence" when the top probability is below the fitted
    minimum, "" when the answer stands (and always without a fitted rejector)."""
    probs, scores = self._run(images)
    reasons = np.full(len(probs), "", dtype=object)
    if self.rejection:
      reasons[probs.max(-1) < self.rejection["min_confidence"]] = "low confidence"
      reasons[scores > self.rejection["threshold"]] = "not a cell"
    return {"probs": probs, "reject_score": scores, "rejected": reasons != "", "reason": reasons}

  def predict(self, images: np.ndarray) -> list[str]:
    return [self.class_names[i] for i in self.predict_proba(images).argmax(-1)]

  def read_images(self, paths: list[str]) -> np.ndarray:
    """Image files as the model's input: RGB, resized (bicubic) to image_size as in training."""
    from PIL import Image

    def read(path):
      with Image.open(path) as image:
        image = image.convert("RGB")
        if image.size != (self.image_size, self.image_size):
          image = image.resize((self.image_size, self.image_size), Image.BICUBIC)
        return np.asarray(image, np.uint8)

    return np.stack([read(p) for p in paths])


def main(argv: list[str]) -> int:
  if len(argv) < 2:
    print(f"usage: python {argv[0]} IMAGE [IMAGE ...]   (or import ExportedClassifier)", file=sys.stderr)
    return 2
  model = ExportedClassifier(os.path.dirname(os.path.abspath(argv[0])))
  answers = model.answer(model.read_images(argv[1:]))
  extra = ["rejected", "reject_score", "reject_reason"] if model.rejection else []
  print(",".join(["file", "predicted"] + [f"p_{name}" for name in model.class_names] + extra))
  for i, (path, p) in enumerate(zip(argv[1:], answers["probs"])):
    row = [path, model.class_names[int(p.argmax())]] + [f"{v:.6f}" for v in p]
    if extra:
      row += [str(bool(answers["rejected"][i])).lower(), f"{answers['reject_score'][i]:.6g}", answers["reason"][i]]
    print(",".join(row))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
