"""Data hygiene on real cells: planted blended outliers found, real cells kept, outputs all-or-nothing."""

import json
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw

from bloodcell_jax.tools.clean import clean, main
from bloodcell_jax.data.hygiene import find_problems
from bloodcell_jax.data.sources import load_source


def _pictures():
  """Four non-cell pictures: a text meme, a flag, a cartoon face, a colour texture."""
  pictures = []
  image = Image.new("RGB", (96, 96), (240, 240, 240))
  draw = ImageDraw.Draw(image)
  draw.text((5, 10), "MUCH WOW", fill=(0, 0, 0))
  draw.text((10, 70), "SUCH CELL", fill=(200, 0, 0))
  draw.rectangle((30, 30, 66, 60), fill=(250, 200, 0))
  pictures.append(np.asarray(image))
  flag = np.zeros((96, 96, 3), np.uint8)
  flag[:32], flag[32:64], flag[64:] = (0, 90, 200), (255, 255, 255), (220, 30, 30)
  pictures.append(flag)
  image = Image.new("RGB", (96, 96), (90, 200, 90))
  draw = ImageDraw.Draw(image)
  draw.ellipse((10, 10, 86, 86), fill=(255, 220, 0))
  draw.ellipse((30, 30, 40, 42), fill=(0, 0, 0))
  draw.ellipse((56, 30, 66, 42), fill=(0, 0, 0))
  draw.arc((28, 40, 68, 75), 20, 160, fill=(0, 0, 0), width=4)
  pictures.append(np.asarray(image))
  y, x = np.mgrid[0:96, 0:96]
  pictures.append(np.stack([(x * 2.6) % 256, ((x // 12 + y // 12) % 2) * 255, (y * 2.6) % 256], -1).astype(np.uint8))
  return pictures


def contaminate(images, labels, copies=100, duplicates=5, seed=0):
  """Real cells + each picture blended (alpha 0.4-0.7) into `copies` random cells under random
  labels + a few exact duplicates. Returns images, labels and the planted-outlier mask."""
  rng = np.random.default_rng(seed)
  blended, blended_labels = [], []
  for picture in _pictures():
    for _ in range(copies):
      alpha = rng.uniform(0.4, 0.7)
      cell = images[rng.integers(len(images))]
      blended.append(np.round(alpha * picture + (1 - alpha) * cell).astype(np.uint8))
      blended_labels.append(rng.integers(8))
  dup = rng.choice(len(images), duplicates, replace=False)
  all_images = np.concatenate([images, np.stack(blended), images[dup]])
  all_labels = np.concatenate([labels, blended_labels, labels[dup]]).astype(np.int32)
  planted = np.zeros(len(all_images), bool)
  planted[len(images):len(images) + len(blended)] = True
  return all_images, all_labels, planted


@pytest.fixture(scope="module")
def pbc96():
  from conftest import PBC96
  if not os.path.isdir(PBC96):
    pytest.skip(f"real data not found at {os.path.normpath(PBC96)} (it sits beside the repository in CI)")
  return load_source(PBC96, 96)["all"]


def test_planted_outliers_are_removed_and_real_cells_kept(pbc96):
  rng = np.random.default_rng(1)
  subset = np.concatenate([rng.choice(np.flatnonzero(pbc96.labels == c), 300, replace=False) for c in range(8)])
  images, labels, planted = contaminate(pbc96.images[subset], pbc96.labels[subset])
  findings = find_problems(images, labels)
  removed = np.zeros(len(images), bool)
  removed[[f.index for f in findings]] = True
  recall = removed[planted].mean()
  real = np.arange(len(images)) < len(subset)
  false_removal = removed[real].mean()
  assert recall >= 0.99 and false_removal <= 0.005, (recall, false_removal)
  duplicates = [f for f in findings if f.reason == "exact_duplicate"]
  assert len(duplicates) == 5 and all(f.index >= len(subset) + 400 for f in duplicates)  # the copies go
  assert {f.reason for f in findings if planted[f.index]} == {"blended_outlier"}


def test_real_cells_lose_at_most_half_a_percent(pbc96):
  """Every other image of pbc96 (6,831 cells of 8 classes): the neighbour search costs the square of
  the count, and the whole folder is minutes of a 2-core CPU (`bloodcell_jax.tools.clean --dry_run`)."""
  half = pbc96.subset(np.arange(0, len(pbc96), 2))
  findings = find_problems(half.images, half.labels)
  assert len(findings) <= 0.005 * len(half), [(half.ids[f.index], f.reason) for f in findings]


def test_blank_saturated_greyscale_wrong_size_and_conflicting_duplicates(tmp_path):
  rng = np.random.default_rng(0)
  y, x = np.mgrid[0:96, 0:96]
  def cell(seed):
    r = np.random.default_rng(seed)
    cx, cy, rad = r.uniform(30, 66, 2).tolist() + [r.uniform(15, 30)]
    inside = ((x - cx) ** 2 + (y - cy) ** 2 < rad ** 2)[..., None]
    return np.where(inside, r.integers(60, 140, 3), r.integers(180, 240, 3)).astype(np.uint8) + \
        rng.integers(0, 8, (96, 96, 3)).astype(np.uint8)
  root = tmp_path / "data"
  for c, name in enumerate(["basophil", "eosinophil"]):
    (root / name).mkdir(parents=True)
    for i in range(12):
      Image.fromarray(cell(c * 100 + i)).save(root / name / f"{i}.png")
  Image.fromarray(np.full((96, 96, 3), 128, np.uint8)).save(root / "basophil" / "blank.png")
  Image.fromarray((rng.integers(0, 2, (96, 96, 3)) * 255).astype(np.uint8)).save(root / "basophil" / "saturated.png")
  Image.fromarray(cell(7)[..., 0]).save(root / "basophil" / "grey.png")  # mode L
  Image.fromarray(cell(8)).resize((64, 64)).save(root / "basophil" / "small.png")
  import shutil
  shutil.copy(root / "basophil" / "3.png", root / "eosinophil" / "copy_of_basophil_3.png")  # same pixels, other label
  manifest = clean(str(root), output=str(tmp_path / "out"))
  reasons = {os.path.basename(e["id"]): e["reason"] for e in manifest["removed"]}
  assert reasons == {"blank.png": "blank", "saturated.png": "saturated", "grey.png": "colour_layout",
                     "small.png": "wrong_size", "3.png": "exact_duplicate", "copy_of_basophil_3.png": "exact_duplicate"}
  assert all(e["conflicting_labels"] for e in manifest["removed"] if e["reason"] == "exact_duplicate")
  kept = sorted(os.listdir(tmp_path / "out" / "basophil")) + sorted(os.listdir(tmp_path / "out" / "eosinophil"))
  assert len(kept) == 24 - 1  # 12 + 12 cells minus basophil 3 (its copy carries another label)
  assert os.path.exists(tmp_path / "out.removed.png") and os.path.exists(tmp_path / "out.manifest.json")
  assert len(os.listdir(root / "basophil")) == 16  # the input is untouched
  assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_npz_output_keeps_the_format_and_dry_run_writes_nothing(tmp_path, capsys):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (40, 96, 96, 3), dtype=np.uint8)
  images[5] = images[4]
  labels = (np.arange(40) % 4)[:, None]
  labels[5] = labels[4]
  source = tmp_path / "training_set.npz"
  np.savez(source, images=images, labels=labels)
  assert main(["--data", str(source), "--dry_run"]) == 0
  assert "dry run" in capsys.readouterr().out and not os.path.exists(tmp_path / "training_set_clean.npz")
  assert main(["--data", str(source), "--balance_target", "12"]) == 0
  with np.load(tmp_path / "training_set_clean.npz") as out:
    assert out["images"].shape == (39, 96, 96, 3) and out["labels"].shape == (39, 1)
  with np.load(tmp_path / "training_set_clean_balanced.npz") as out:
    assert np.bincount(out["labels"][:, 0]).tolist() == [12, 12, 12, 12]
  with open(tmp_path / "training_set_clean.npz.manifest.json") as f:
    manifest = json.load(f)
  assert [(e["index"], e["reason"], e["group"]) for e in manifest["removed"]] == [(5, "exact_duplicate", 4)]
  assert main(["--data", str(tmp_path / "missing.npz")]) == 2
  capsys.readouterr()
  # Every threshold is a flag: an impossible blank_std marks every image blank.
  assert main(["--data", str(source), "--dry_run", "--blank_std=300"]) == 0
  assert "training_set.npz: 40 images, 40 to remove" in capsys.readouterr().out
  assert main(["--data", str(source), "--near_duplicate=high"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: flag --near_duplicate=high:")
  assert main(["--dry_run"]) == 2
  assert "the flag --data is required" in capsys.readouterr().err


def test_training_cleans_and_caches(tmp_path):
  from bloodcell_jax.data.prepare import load_train_val
  from conftest import tiny_config
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
  images[1] = images[0]  # an exact duplicate under the same label: one copy goes
  labels = np.arange(64) % 8
  labels[1] = labels[0]
  np.savez(tmp_path / "d.npz", images=images, labels=labels)
  config = tiny_config(**{"data.source": str(tmp_path / "d.npz"), "data.clean": True,
                          "data.clean_cache": str(tmp_path / "cache")})
  data = load_train_val(config.data)
  assert len(data.train) + len(data.val) == 63
  assert len(os.listdir(tmp_path / "cache")) == 1
  assert len(load_train_val(config.data).train) == len(data.train)  # from the cache
