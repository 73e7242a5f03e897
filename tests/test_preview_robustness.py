import numpy as np
import pytest
from PIL import Image

from bloodcell_jax.data.sources import ImageSet
from bloodcell_jax.robustness import CORRUPTIONS, corrupt, corruption_policy
from conftest import run_main


def test_preview_writes_a_grid_of_real_images_per_policy(tmp_path):
  out = tmp_path / "preview.png"
  result = run_main(["--mode=preview", "--config", "configs/quickstart.py", "--config.data.image_size=32",
                     "--preview_policy=light", "--preview_policy=randaugment(1, 5)", "--preview_columns=3",
                     f"--output={out}"])
  assert result.returncode == 0, result.stderr[-2000:]
  image = np.asarray(Image.open(out).convert("RGB"))
  # 2 policies x (22 px title + 8 classes x (96 + 4) px rows); margin + 4 columns of 100 px
  assert image.shape == (2 * (22 + 8 * 100), 120 + 4 * 100, 3)
  assert image.std() > 20  # pictures, not a blank canvas
  bad = run_main(["--mode=preview", "--config", "configs/quickstart.py", "--preview_policy=blur(1, 1)",
                  f"--output={tmp_path / 'x.png'}"])
  assert bad.returncode == 2 and "unknown op 'blur'" in bad.stderr and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruptions_are_deterministic_uint8_and_change_the_images(name):
  rng = np.random.default_rng(0)
  y, x = np.mgrid[0:32, 0:32] / 32
  smooth = (np.stack([np.sin(3 * x), np.cos(2 * y), x * y], -1) * 80 + 120).astype(np.uint8)
  images = np.stack([np.roll(smooth, i, axis=0) for i in range(5)])
  data = ImageSet(images, rng.integers(0, 8, 5), np.array([f"#{i}" for i in range(5)]))
  a = corrupt(data, name, 0.8, seed=0)
  b = corrupt(data, name, 0.8, seed=0)
  assert a.images.dtype == np.uint8 and a.images.shape == images.shape
  np.testing.assert_array_equal(a.images, b.images)
  np.testing.assert_array_equal(a.labels, data.labels)
  assert np.abs(a.images.astype(int) - images).mean() > 0.5
  with pytest.raises(ValueError, match="unknown corruption"):
    corruption_policy("fog", 0.5)
