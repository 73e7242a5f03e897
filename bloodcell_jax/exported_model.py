"""Runs a model exported by `python main.py --mode=export`, with nothing but jax, numpy (and pillow
for image files): no Flax, no bloodcell_jax. `--mode=export` copies this file into the export
directory as `load_model.py`.

  from load_model import ExportedClassifier
  model = ExportedClassifier("checkpoints/cpu_small/export")
  probs = model.predict_proba(images)  # uint8 (N, H, W, 3) RGB at model.image_size -> (N, 8)

  python checkpoints/cpu_small/export/load_model.py cell1.jpg cell2.png   # CSV on stdout
"""

import json
import os
import sys

import jax
import numpy as np


class ExportedClassifier:
  """The serialized StableHLO function (normalisation, model, test-time views, softmax) and its weights."""

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

  def predict_proba(self, images: np.ndarray) -> np.ndarray:
    """Class probabilities (N, classes) for uint8 RGB images (N, image_size, image_size, 3)."""
    images = np.asarray(images)
    expected = (self.image_size, self.image_size, 3)
    if images.ndim != 4 or images.shape[1:] != expected or images.dtype != np.uint8:
      raise ValueError(f"images must be uint8 (N, {self.image_size}, {self.image_size}, 3), got "
                       f"{images.dtype} {images.shape}")
    chunks = [np.asarray(self._function.call(self._weights, images[i:i + self.batch_size]))
              for i in range(0, len(images), self.batch_size)]
    return np.concatenate(chunks) if chunks else np.zeros((0, len(self.class_names)), np.float32)

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
  probs = model.predict_proba(model.read_images(argv[1:]))
  print(",".join(["file", "predicted"] + [f"p_{name}" for name in model.class_names]))
  for path, p in zip(argv[1:], probs):
    print(",".join([path, model.class_names[int(p.argmax())]] + [f"{v:.6f}" for v in p]))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
