import numpy as np

from bloodcell_jax.data.sources import load_source
from bloodcell_jax.tools.oversample import main, oversample


def test_oversample_raises_minority_classes_with_augmented_copies_of_their_own_class():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
  labels = np.array([0] * 20 + [1] * 7 + [2] * 3)
  out, out_labels, source = oversample(images, labels, target=12, seed=1)
  assert np.bincount(out_labels, minlength=8)[:3].tolist() == [20, 12, 12]  # never subsampled
  np.testing.assert_array_equal(out[:30], images)  # originals untouched, first
  np.testing.assert_array_equal(out_labels, labels[source])
  added = np.arange(30, len(out))
  assert all(not np.array_equal(out[i], images[source[i]]) for i in added)
  assert out.dtype == np.uint8 and out.shape[1:] == images.shape[1:]


def test_oversample_command_writes_a_course_format_file(tmp_path, capsys):
  output = tmp_path / "balanced.npz"
  assert main(["--data", "sample", "--target", "45", "--output", str(output), "--image_size", "32"]) == 0
  sets = load_source(str(output), 32)
  assert np.bincount(sets["all"].labels, minlength=8).tolist() == [45] * 8
  assert "wrote" in capsys.readouterr().out
  assert main(["--data", "sample", "--target", "45", "--output", str(tmp_path / "x.csv")]) == 2
  assert "must be an .npz" in capsys.readouterr().err
  assert not list(tmp_path.glob("*.tmp*"))
  assert main(["--data", "sample", "--output", str(output)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: the flag --target is required")
  assert main(["--data", "sample", "--target", "many", "--output", str(output)]) == 2
  assert capsys.readouterr().err.startswith("error: flag --target=many:")
