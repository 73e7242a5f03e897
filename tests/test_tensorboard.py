"""Our TensorBoard event files, read back by TensorBoard's own loader."""

import io

import numpy as np
import pytest
from PIL import Image

from bloodcell_jax.tensorboard_writer import EventWriter, crc32c
from bloodcell_jax.train import tensorboard_scalars


def test_crc32c_check_value():
  assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C catalogue's check value
  assert crc32c(b"") == 0


def test_tensorboard_reads_our_scalars_and_images(tmp_path):
  event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                          reason="tensorboard is in requirements-dev.txt")
  row = {"epoch": 2, "learning_rate": 1e-3, "time_s": 4.5,
         "train": {"loss": 0.7, "accuracy": 0.8, "macro_auc": float("nan")},
         "val": {"loss": 0.6, "accuracy": 0.85, "macro_auc": 0.97}}
  png = io.BytesIO()
  Image.fromarray(np.full((6, 10, 3), 200, np.uint8)).save(png, format="PNG")
  with EventWriter(str(tmp_path)) as writer:
    writer.write_scalars(3, tensorboard_scalars(row))
    writer.write_scalars(4, {"loss/train": 0.5})
    writer.write_png(4, "plots/confusion", png.getvalue(), 6, 10)
  events = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"images": 0, "scalars": 0})
  events.Reload()
  assert set(events.Tags()["scalars"]) == {"loss/train", "loss/val", "accuracy/train", "accuracy/val",
                                           "macro_auc/val", "optim/learning_rate", "time/epoch_s"}
  assert [(e.step, round(e.value, 6)) for e in events.Scalars("loss/train")] == [(3, 0.7), (4, 0.5)]
  assert events.Scalars("macro_auc/val")[0].value == pytest.approx(0.97)
  (image,) = events.Images("plots/confusion")
  assert (image.step, image.width, image.height, image.encoded_image_string) == (4, 10, 6, png.getvalue())
