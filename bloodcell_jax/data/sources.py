"""One loader for the three formats users have: the course npz, MedMNIST npz files, class folders.

Every source comes back as named `ImageSet`s of uint8 RGB images at the requested size with int32
labels in BloodMNIST's class order. Anything malformed raises `UserInputError` with one line that
names the file and the problem, before any training starts.
"""

import concurrent.futures
import dataclasses
import os
import zipfile

import numpy as np
from PIL import Image

from bloodcell_jax.classes import CLASS_NAMES, NUM_CLASSES, class_index
from bloodcell_jax.errors import UserInputError

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "sample_data", "pbc96_sample")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MEDMNIST_SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class ImageSet:
  """Images (N, H, W, 3) uint8, labels (N,) int32 and an id per image (file path or "#index")."""

  images: np.ndarray
  labels: np.ndarray
  ids: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)

  def subset(self, indices: np.ndarray) -> "ImageSet":
    return ImageSet(self.images[indices], self.labels[indices], self.ids[indices])


def resolve_path(source: str) -> str:
  """`sample` names the bundled images; anything else is a path (with ~ expanded)."""
  return SAMPLE_DIR if source == "sample" else os.path.expanduser(source)


def load_source(source: str, image_size: int, min_classes: int = 0,
                allow_unlabelled: bool = False) -> dict[str, ImageSet]:
  """Reads `source` into {"all": ...} or, for MedMNIST files, {"train", "val", "test"}.

  With `allow_unlabelled` (prediction), a folder of images without class sub-folders and an npz
  with `images` but no `labels` are accepted; their labels are -1.
  """
  path = resolve_path(source)
  if allow_unlabelled and "," in source and not os.path.exists(path):
    return {"all": _load_files([resolve_path(p) for p in source.split(",") if p], image_size)}
  if not os.path.exists(path):
    raise UserInputError(f"{path}: no such file or folder")
  if allow_unlabelled and os.path.isfile(path) and _is_image_file(path):
    sets = {"all": _load_files([path], image_size)}
  elif os.path.isdir(path):
    sets = {"all": _load_folder(path, image_size, allow_unlabelled)}
  else:
    sets = _load_npz(path, image_size, allow_unlabelled)
  present = np.unique(np.concatenate([s.labels for s in sets.values()]))
  present = present[present >= 0]
  if min_classes and len(present) < min_classes:
    raise UserInputError(
        f"{path}: only {len(present)} class(es) present ({', '.join(CLASS_NAMES[i] for i in present)}); "
        f"at least {min_classes} are needed to train a classifier")
  return sets


def _load_npz(path: str, image_size: int, allow_unlabelled: bool) -> dict[str, ImageSet]:
  if not zipfile.is_zipfile(path):
    raise UserInputError(f"{path}: not an npz file (expected a NumPy .npz archive, which is a zip file)")
  try:
    with np.load(path, allow_pickle=False) as archive:
      arrays = {key: archive[key] for key in archive.files}
  except (ValueError, OSError, zipfile.BadZipFile) as e:
    raise UserInputError(f"{path}: cannot read the npz archive ({e})") from None
  if allow_unlabelled and "images" in arrays and "labels" not in arrays:
    images = _checked_images(arrays["images"], f"{path}: 'images'")
    ids = np.array([f"#{i}" for i in range(len(images))])
    return {"all": ImageSet(resize_all(images, image_size), np.full(len(images), -1, np.int32), ids)}
  if "images" in arrays or "labels" in arrays:
    return {"all": _checked_set(path, arrays, "images", "labels", image_size)}
  if any(f"{split}_images" in arrays for split in MEDMNIST_SPLITS):
    return {
        split: _checked_set(path, arrays, f"{split}_images", f"{split}_labels", image_size)
        for split in MEDMNIST_SPLITS if f"{split}_images" in arrays
    }
  raise UserInputError(
      f"{path}: missing keys: expected 'images' and 'labels' (course file) or 'train_images', "
      f"'train_labels', ... (MedMNIST), found {sorted(arrays) or 'no arrays'}")


def _checked_set(path: str, arrays: dict, image_key: str, label_key: str, image_size: int) -> ImageSet:
  for key in (image_key, label_key):
    if key not in arrays:
      raise UserInputError(f"{path}: missing key '{key}' (found {sorted(arrays)})")
  images = _checked_images(arrays[image_key], f"{path}: '{image_key}'")
  labels = _checked_labels(arrays[label_key], f"{path}: '{label_key}'")
  if len(images) != len(labels):
    raise UserInputError(
        f"{path}: '{image_key}' has {len(images)} images but '{label_key}' has {len(labels)} labels")
  if len(images) == 0:
    raise UserInputError(f"{path}: '{image_key}' holds no images")
  ids = np.array([f"#{i}" for i in range(len(images))])
  return ImageSet(resize_all(images, image_size), labels, ids)


def _checked_images(images: np.ndarray, where: str) -> np.ndarray:
  """uint8 (N, H, W, 3); float input in [0, 1] or [0, 255] and grey (N, H, W, 1) are converted."""
  if images.ndim != 4:
    raise UserInputError(f"{where}: expected rank 4 (N, H, W, 3), got shape {images.shape}")
  if images.shape[-1] not in (1, 3):
    raise UserInputError(f"{where}: expected 3 colour channels last (N, H, W, 3), got shape {images.shape}")
  if images.dtype == np.uint8:
    pass
  elif np.issubdtype(images.dtype, np.floating):
    if not np.all(np.isfinite(images)):
      raise UserInputError(f"{where}: contains NaN or inf values")
    low, high = float(images.min(initial=0)), float(images.max(initial=0))
    if low < 0 or high > 255:
      raise UserInputError(f"{where}: float pixel values must lie in [0, 1] or [0, 255], found [{low}, {high}]")
    scale = 255.0 if high <= 1.0 else 1.0
    images = np.clip(np.rint(images * scale), 0, 255).astype(np.uint8)
  elif np.issubdtype(images.dtype, np.integer):
    low, high = int(images.min(initial=0)), int(images.max(initial=0))
    if low < 0 or high > 255:
      raise UserInputError(f"{where}: integer pixel values must lie in [0, 255], found [{low}, {high}]")
    images = images.astype(np.uint8)
  else:
    raise UserInputError(f"{where}: unsupported dtype {images.dtype} (expected uint8 or float)")
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  return images


def _checked_labels(labels: np.ndarray, where: str) -> np.ndarray:
  if labels.ndim == 2 and labels.shape[1] == 1:
    labels = labels[:, 0]
  if labels.ndim != 1:
    raise UserInputError(f"{where}: expected shape (N,) or (N, 1), got {labels.shape}")
  if np.issubdtype(labels.dtype, np.floating):
    if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
      raise UserInputError(f"{where}: labels must be integers, found non-integer values")
  elif not np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_:
    raise UserInputError(f"{where}: labels must be integers, got dtype {labels.dtype}")
  if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
    raise UserInputError(
        f"{where}: labels out of range: found [{int(labels.min())}, {int(labels.max())}], "
        f"expected 0..{NUM_CLASSES - 1}")
  return labels.astype(np.int32)


def resize_all(images: np.ndarray, image_size: int) -> np.ndarray:
  """Bicubic resize to (image_size, image_size), skipped when the size already matches."""
  if images.shape[1:3] == (image_size, image_size):
    return images
  return np.stack([_resize(image, image_size) for image in images])


def _resize(image: np.ndarray, image_size: int) -> np.ndarray:
  pil = Image.fromarray(image)
  return np.asarray(pil.resize((image_size, image_size), Image.BICUBIC), dtype=np.uint8)


def _is_image_file(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _load_folder(path: str, image_size: int, allow_unlabelled: bool) -> ImageSet:
  files, labels = [], []
  entries = sorted(os.listdir(path))
  loose = [os.path.join(path, e) for e in entries if _is_image_file(e) and os.path.isfile(os.path.join(path, e))]
  has_class_folders = any(os.path.isdir(os.path.join(path, e)) and not e.startswith(".") for e in entries)
  if allow_unlabelled and loose and not has_class_folders:
    files, labels = loose, [-1] * len(loose)
    entries = []
  for entry in entries:
    folder = os.path.join(path, entry)
    if entry.startswith(".") or not os.path.isdir(folder):
      continue
    label = class_index(entry)
    if label is None:
      raise UserInputError(
          f"{folder}: folder name is not a known class (expected one of {', '.join(CLASS_NAMES)})")
    for root, _, names in sorted(os.walk(folder)):
      for name in sorted(names):
        if _is_image_file(name):
          files.append(os.path.join(root, name))
          labels.append(label)
  if not files:
    raise UserInputError(f"{path}: empty folder: no class sub-folders with {'/'.join(IMAGE_EXTENSIONS)} images")
  ids = np.array([os.path.relpath(f, path) for f in files])
  return ImageSet(_read_images(files, image_size), np.array(labels, np.int32), ids)


def _read_image(file: str, image_size: int) -> np.ndarray:
  try:
    with Image.open(file) as pil:
      pil = pil.convert("RGB")
      if pil.size != (image_size, image_size):
        pil = pil.resize((image_size, image_size), Image.BICUBIC)
      return np.asarray(pil, dtype=np.uint8)
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise UserInputError(f"{file}: unreadable image file ({e})") from None


def _read_images(files: list[str], image_size: int) -> np.ndarray:
  with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
    return np.stack(list(pool.map(lambda file: _read_image(file, image_size), files)))


def _load_files(files: list[str], image_size: int) -> ImageSet:
  """Unlabelled single image files (for prediction); ids are the paths as given."""
  for file in files:
    if not os.path.isfile(file):
      raise UserInputError(f"{file}: no such image file")
    if not _is_image_file(file):
      raise UserInputError(f"{file}: not an image file (expected {'/'.join(IMAGE_EXTENSIONS)})")
  return ImageSet(_read_images(files, image_size), np.full(len(files), -1, np.int32), np.array(files))
