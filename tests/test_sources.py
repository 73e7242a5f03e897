"""The three data formats, resizing, and one clear error line per kind of bad input."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from bloodcell_jax.data.prepare import load_eval_set, load_train_val
from bloodcell_jax.data.sources import load_source
from bloodcell_jax.errors import UserInputError
from conftest import run_main, tiny_config


def _images(n, size=96, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _save(path, **arrays):
  np.savez(path, **arrays)
  return str(path)


def test_course_npz_with_column_labels(tmp_path):
  labels = np.arange(16).reshape(-1, 1) % 8
  path = _save(tmp_path / "training_set.npz", images=_images(16), labels=labels)
  sets = load_source(path, 96)
  assert list(sets) == ["all"]
  assert sets["all"].images.shape == (16, 96, 96, 3) and sets["all"].images.dtype == np.uint8
  np.testing.assert_array_equal(sets["all"].labels, labels[:, 0])
  assert sets["all"].ids[3] == "#3"


def test_medmnist_npz_keeps_its_splits_and_is_resized(tmp_path):
  arrays = {}
  for i, split in enumerate(("train", "val", "test")):
    arrays[f"{split}_images"] = _images(8 + i, size=28, seed=i)
    arrays[f"{split}_labels"] = (np.arange(8 + i) % 8).reshape(-1, 1)
  path = _save(tmp_path / "bloodmnist.npz", **arrays)
  sets = load_source(path, 64)
  assert {k: len(v) for k, v in sets.items()} == {"train": 8, "val": 9, "test": 10}
  assert sets["train"].images.shape == (8, 64, 64, 3)
  config = tiny_config(**{"data.source": path, "data.image_size": 64})
  data = load_train_val(config.data)
  assert (len(data.train), len(data.val)) == (8, 9) and "own" in data.how_split
  assert len(load_eval_set(path, 64)) == 10  # eval uses the test split


def test_float_images_in_unit_range_are_converted(tmp_path):
  images = np.full((2, 96, 96, 3), 0.5, np.float32)
  path = _save(tmp_path / "f.npz", images=images, labels=np.array([0, 1]))
  assert load_source(path, 96)["all"].images.max() == 128


def test_bundled_sample_folder():
  sets = load_source("sample", 64)
  data = sets["all"]
  assert data.images.shape == (320, 64, 64, 3)
  np.testing.assert_array_equal(np.bincount(data.labels), [40] * 8)
  assert data.ids[0].startswith("basophil" + os.sep)


def test_class_folders_with_other_names_png_and_unlabelled_prediction(tmp_path):
  for name in ("Immature_Granulocytes", "NEUTROPHILS"):
    (tmp_path / name).mkdir()
    for i in range(2):
      Image.fromarray(_images(1, size=50, seed=i)[0]).save(tmp_path / name / f"{i}.png")
  (tmp_path / "README.txt").write_text("ignored")
  data = load_source(str(tmp_path), 32)["all"]
  np.testing.assert_array_equal(data.labels, [3, 3, 6, 6])
  assert data.images.shape == (4, 32, 32, 3)
  loose = tmp_path / "NEUTROPHILS"
  unlabelled = load_eval_set(str(loose), 32)
  np.testing.assert_array_equal(unlabelled.labels, [-1, -1])


def _error(fn):
  with pytest.raises(UserInputError) as info:
    fn()
  message = str(info.value)
  assert "\n" not in message
  return message


def test_single_image_files_for_prediction(tmp_path):
  paths = []
  for i, size in enumerate((96, 40)):
    path = str(tmp_path / f"cell{i}.png")
    Image.fromarray(np.full((size, size, 3), 60 * (i + 1), np.uint8)).save(path)
    paths.append(path)
  one = load_eval_set(paths[0], 64)
  assert one.images.shape == (1, 64, 64, 3) and one.labels.tolist() == [-1] and one.ids.tolist() == [paths[0]]
  both = load_eval_set(",".join(paths), 64)
  assert both.images.shape == (2, 64, 64, 3) and both.ids.tolist() == paths
  assert both.images[1].min() == both.images[1].max() == 120  # resized, colour kept
  with pytest.raises(UserInputError, match="missing.png: no such image file"):
    load_eval_set(f"{paths[0]},{tmp_path / 'missing.png'}", 64)
  (tmp_path / "notes.txt").write_text("x")
  with pytest.raises(UserInputError, match="notes.txt: not an image file"):
    load_eval_set(f"{paths[0]},{tmp_path / 'notes.txt'}", 64)


@pytest.mark.parametrize("arrays, expected", [
    ({"pictures": _images(2)}, "missing keys"),
    ({"images": _images(2)}, "missing key 'labels'"),
    ({"images": _images(2)[..., 0], "labels": np.array([0, 1])}, "expected rank 4"),
    ({"images": _images(2)[..., :2], "labels": np.array([0, 1])}, "colour channels"),
    ({"images": _images(2).astype(np.complex64), "labels": np.array([0, 1])}, "unsupported dtype"),
    ({"images": np.full((2, 96, 96, 3), np.nan, np.float32), "labels": np.array([0, 1])}, "NaN or inf"),
    ({"images": np.full((2, 96, 96, 3), 300.0, np.float32), "labels": np.array([0, 1])}, "must lie in"),
    ({"images": _images(2), "labels": np.array([0, 8])}, "labels out of range"),
    ({"images": _images(2), "labels": np.array([0, -1])}, "labels out of range"),
    ({"images": _images(2), "labels": np.array([0.5, 1.0])}, "must be integers"),
    ({"images": _images(2), "labels": np.array(["a", "b"])}, "must be integers"),
    ({"images": _images(2), "labels": np.zeros((2, 2), int)}, "expected shape (N,)"),
    ({"images": _images(3), "labels": np.array([0, 1])}, "3 images but 'labels' has 2"),
])
def test_bad_npz_contents(tmp_path, arrays, expected):
  path = _save(tmp_path / "bad.npz", **arrays)
  message = _error(lambda: load_source(path, 96))
  assert path in message and expected in message


def test_bad_files_and_folders(tmp_path):
  assert "no such file" in _error(lambda: load_source(str(tmp_path / "nope.npz"), 96))
  (tmp_path / "text.npz").write_text("hello")
  assert "not an npz" in _error(lambda: load_source(str(tmp_path / "text.npz"), 96))
  (tmp_path / "empty").mkdir()
  assert "empty folder" in _error(lambda: load_source(str(tmp_path / "empty"), 96))
  (tmp_path / "odd" / "cats").mkdir(parents=True)
  assert "not a known class" in _error(lambda: load_source(str(tmp_path / "odd"), 96))
  broken = tmp_path / "broken" / "platelet"
  broken.mkdir(parents=True)
  (broken / "cell.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
  message = _error(lambda: load_source(str(tmp_path / "broken"), 96))
  assert "cell.jpg" in message and "unreadable image" in message
  one = tmp_path / "one.npz"
  np.savez(one, images=_images(4), labels=np.zeros(4, int))
  assert "only 1 class" in _error(lambda: load_source(str(one), 96, min_classes=2))


def test_main_reports_bad_input_in_one_line_with_status_2(tmp_path):
  path = _save(tmp_path / "bad.npz", images=_images(4), labels=np.array([0, 1, 2, 9]))
  result = run_main(["--config", "configs/quickstart.py", f"--workdir={tmp_path / 'run'}",
                     f"--config.data.source={path}"])
  assert result.returncode == 2, result.stderr
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert lines == [f"error: {path}: 'labels': labels out of range: found [0, 9], expected 0..7"]
  assert "Traceback" not in result.stderr


def test_main_rejects_batch_not_divisible_by_devices(tmp_path):
  result = run_main(["--config", "configs/quickstart.py", f"--workdir={tmp_path / 'run'}",
                     "--config.train.batch_size=30"], devices=4)
  assert result.returncode == 2
  assert "train.batch_size=30 is not divisible by the 4 local devices" in result.stderr
  assert "Traceback" not in result.stderr


def test_pbc96_loads_with_all_classes(pbc96_dir, tmp_path):
  # A copy of a few files per class keeps this fast; the layout and names are the real ones.
  for name in sorted(os.listdir(pbc96_dir)):
    src = os.path.join(pbc96_dir, name)
    if os.path.isdir(src):
      os.makedirs(tmp_path / name)
      for f in sorted(os.listdir(src))[:3]:
        shutil.copy(os.path.join(src, f), tmp_path / name / f)
  data = load_source(str(tmp_path), 96)["all"]
  np.testing.assert_array_equal(np.bincount(data.labels), [3] * 8)
  assert data.images.shape == (24, 96, 96, 3)


@pytest.mark.parametrize("override, expected", [
    ("--config.optim.name=adam", "optim.name='adam' is not one of lion, adamw, sgd"),
    ("--config.model.variant=huge", "unknown ConvNeXt variant 'huge'"),
    ("--config.data.augment=heavier", "data.augment: augment policy 'heavier' is not understood"),
    ("--config.data.val_fraction=1.5", "data.val_fraction=1.5 must lie in (0, 1)"),
])
def test_main_rejects_bad_config_values(tmp_path, override, expected):
  result = run_main(["--config", "configs/quickstart.py", f"--workdir={tmp_path / 'run'}", override])
  assert result.returncode == 2, result.stderr[-2000:]
  assert f"error: config: {expected}" in result.stderr and "Traceback" not in result.stderr
  assert not os.path.exists(tmp_path / "run" / "config.json")
