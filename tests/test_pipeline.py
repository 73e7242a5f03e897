import numpy as np
import pytest

from bloodcell_jax.data import pipeline
from bloodcell_jax.data.sources import ImageSet


def _set(n, size=4):
  images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, size, size, 3), np.uint8)
  return ImageSet(images, (np.arange(n) % 8).astype(np.int32), np.array([f"#{i}" for i in range(n)]))


def test_train_batches_cover_an_epoch_once_in_device_layout():
  data = _set(50)
  batches = list(pipeline.train_batches(data, 16, 4, seed=1, epoch=0))
  assert len(batches) == 3  # 50 // 16: the partial batch is dropped
  assert batches[0]["image"].shape == (4, 4, 4, 4, 3) and batches[0]["label"].shape == (4, 4)
  seen = np.concatenate([b["image"][..., 0, 0, 0].reshape(-1) for b in batches])
  assert len(set(seen.tolist())) == 48
  again = list(pipeline.train_batches(data, 16, 4, seed=1, epoch=0))
  np.testing.assert_array_equal(batches[1]["label"], again[1]["label"])
  other_epoch = list(pipeline.train_batches(data, 16, 4, seed=1, epoch=1))
  assert not np.array_equal(batches[0]["image"], other_epoch[0]["image"])
  resumed = list(pipeline.train_batches(data, 16, 4, seed=1, epoch=0, start_step=2))
  np.testing.assert_array_equal(resumed[0]["image"], batches[2]["image"])


def test_eval_batches_pad_and_mask_the_tail():
  batches = list(pipeline.eval_batches(_set(10), 8, 2))
  assert len(batches) == 2
  np.testing.assert_array_equal(batches[1]["mask"].reshape(-1), [1, 1, 0, 0, 0, 0, 0, 0])
  assert batches[1]["image"].shape == (2, 4, 4, 4, 3)


def test_background_yields_in_order_and_reraises():
  assert list(pipeline.background(iter(range(20)), size=2)) == list(range(20))

  def failing():
    yield 1
    raise ValueError("boom")

  with pytest.raises(ValueError, match="boom"):
    list(pipeline.background(failing()))


def test_to_devices_delivers_sharded_batches():
  import jax
  batch = next(pipeline.to_devices(pipeline.train_batches(_set(32), 8, jax.local_device_count(), 0, 0)))
  assert batch["image"].shape[0] == jax.local_device_count()
  assert len(batch["image"].sharding.device_set) == jax.local_device_count()
