"""Finding images that should not be trained on: blended non-cell pictures, duplicates, blank or
saturated frames, and images of the wrong size or colour layout. Pure functions of the images.

Blended outliers (a real cell alpha-blended with a non-cell picture, the same picture reused for
hundreds of images) are found by what makes them different from cells: they share pixel-aligned
structure with many other images, and that sharing breaks when the image is turned. For each image
the detail features (a 24x24 image minus its local mean, normalised) are compared with every other
image's; `orientation_score` is the similarity to the 5th nearest neighbour as the image is, minus
the same similarity averaged over its 7 other flips/rotations. Cells have no orientation, so for
them the two agree (score near 0 on the 13,662 PBC images: 99.5th percentile 0.17); copies of a
reused picture lose their neighbours when turned (score above 0.18, usually 0.3 or more). Images
above `outlier_score` that link up with at least `min_group` others through nearest-neighbour
links form a group; members whose detail resembles the group's median (the reused picture, as
the cells average out) are removed, so a real cell removes nothing by a high score alone or by
linking to a group it does not resemble (cosine to the median: real cells at most 0.09, blends at
least 0.22 in the planted tests). In a coherent group (median norm at least 0.3) of at least 3 x `min_group`, every image as
like its median as the group's own members (10th percentile, at least `picture_similarity`) joins
it too: weaker blends of a picture already found, whose own score was low.
"""

import dataclasses
import hashlib

import jax
import jax.numpy as jnp
import numpy as np

from bloodcell_jax.neighbours import nearest

FEATURE_SIZE = 24
NEIGHBOURS = 5


@dataclasses.dataclass(frozen=True)
class Thresholds:
  outlier_score: float = 0.18  # orientation score above which an image is a blended-outlier candidate
  min_group: int = 10  # candidates linked to fewer others are kept (reused pictures repeat many times)
  group_similarity: float = 0.15  # members less similar than this to their group's median are kept
  picture_similarity: float = 0.2  # any image this similar to a group's median joins it (weak blends)
  near_duplicate: float = 0.97  # detail-feature cosine similarity of near-duplicate pairs
  blank_std: float = 2.0  # grey-level standard deviation (0-255) below which an image is blank
  saturated_fraction: float = 0.5  # share of pixels at 0 or 255 in some channel above which it is saturated


def detail_features(images: np.ndarray) -> np.ndarray:
  """(N, 24*24*3) float32 unit vectors: the image area-averaged to 24x24, minus its 3x3 local mean."""
  n, h, w = images.shape[:3]
  small = np.asarray(jax.image.resize(jnp.asarray(images, jnp.float32), (n, FEATURE_SIZE, FEATURE_SIZE, 3),
                                      "linear", antialias=True)) if (h, w) != (96, 96) else \
      images.reshape(n, FEATURE_SIZE, 4, FEATURE_SIZE, 4, 3).mean(axis=(2, 4), dtype=np.float32)
  padded = np.pad(small, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  local_mean = sum(padded[:, i:i + FEATURE_SIZE, j:j + FEATURE_SIZE] for i in range(3) for j in range(3)) / 9
  f = (small - local_mean).reshape(n, -1)
  f -= f.mean(axis=1, keepdims=True)
  return (f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-6)).astype(np.float32)


def orientation_scores(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(score, neighbour similarities, neighbour indices) per image; see the module docstring."""
  sims, neighbours = nearest(features, features, NEIGHBOURS, exclude_self=True)
  grid = features.reshape(-1, FEATURE_SIZE, FEATURE_SIZE, 3)
  turned = []
  for g in range(1, 8):
    t = np.rot90(grid, g % 4, axes=(1, 2))
    t = t[:, :, ::-1] if g >= 4 else t
    turned.append(nearest(np.ascontiguousarray(t).reshape(len(features), -1), features, NEIGHBOURS)[0][:, -1])
  return sims[:, -1] - np.mean(turned, axis=0), sims, neighbours


def _components(members: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
  """Group id per image: connected components of nearest-neighbour links among `members` (-1: not one)."""
  parent = np.arange(len(members))

  def find(a):
    while parent[a] != a:
      parent[a] = parent[parent[a]]
      a = parent[a]
    return a

  for i in np.flatnonzero(members):
    for j in neighbours[i]:
      if members[j]:
        parent[find(i)] = find(j)
  return np.where(members, [find(i) for i in range(len(members))], -1)


@dataclasses.dataclass
class Finding:
  index: int
  reason: str  # blended_outlier, exact_duplicate, near_duplicate, blank, saturated, colour_layout, wrong_size
  score: float
  group: int  # index of the group's first member, or -1
  conflicting_labels: bool = False


def find_problems(images: np.ndarray, labels: np.ndarray, thresholds: Thresholds = Thresholds(),
                  wrong_size: np.ndarray | None = None, colour_layout: np.ndarray | None = None) -> list[Finding]:
  """Every image to remove, with one reason each (the first that applies, in the order below).

  Duplicates: the first copy of a group whose members share a label is kept; a group whose members
  carry different labels is removed whole (which label is right cannot be known).
  """
  n = len(images)
  findings: dict[int, Finding] = {}

  def add(i, reason, score, group=-1, conflicting=False):
    if i not in findings:
      findings[int(i)] = Finding(int(i), reason, float(score), int(group), bool(conflicting))

  for i in np.flatnonzero(wrong_size if wrong_size is not None else np.zeros(n, bool)):
    add(i, "wrong_size", 1.0)
  stds = images.mean(axis=-1).reshape(n, -1).std(axis=1)
  for i in np.flatnonzero(stds < thresholds.blank_std):
    add(i, "blank", float(stds[i]))
  extreme = ((images == 0) | (images == 255)).any(axis=-1).reshape(n, -1).mean(axis=1)
  for i in np.flatnonzero(extreme > thresholds.saturated_fraction):
    add(i, "saturated", float(extreme[i]))

  grey = images.astype(np.int16)
  layout = np.all(grey[..., 0] == grey[..., 1], axis=(1, 2)) & np.all(grey[..., 1] == grey[..., 2], axis=(1, 2))
  if colour_layout is not None:
    layout |= colour_layout
  for i in np.flatnonzero(layout):
    add(i, "colour_layout", 1.0)
  features = detail_features(images)
  score, sims, neighbours = orientation_scores(features)
  candidates = score > thresholds.outlier_score
  groups = _components(candidates, neighbours)
  sizes = np.bincount(groups[groups >= 0], minlength=n) if candidates.any() else np.zeros(n, int)
  for group in np.flatnonzero(sizes >= thresholds.min_group):
    members = np.flatnonzero(groups == group)
    centre = np.median(features[members], axis=0)  # the reused picture's detail; cells average out
    similarity = features[members] @ (centre / (np.linalg.norm(centre) + 1e-6))
    members = members[similarity >= thresholds.group_similarity]  # real cells that merely linked in
    if len(members) < thresholds.min_group:
      continue
    joined = members
    centre = np.median(features[members], axis=0)
    coherent = np.linalg.norm(centre) >= 0.3  # members share one picture (unit vectors' median norm)
    if coherent and len(members) >= 3 * thresholds.min_group:  # look for the picture's weaker blends
      similarity = features @ (centre / (np.linalg.norm(centre) + 1e-6))
      bar = max(thresholds.picture_similarity, float(np.quantile(similarity[members], 0.1)))
      joined = np.union1d(members, np.flatnonzero(similarity >= bar))
    for i in joined:
      add(i, "blended_outlier", float(score[i]), members[0])

  digests = {}
  for i in range(n):
    digests.setdefault(hashlib.blake2b(images[i].tobytes(), digest_size=16).digest(), []).append(i)
  near = (sims > thresholds.near_duplicate) & (~np.isin(np.arange(n), list(findings)))[:, None]
  near_groups = _components(near.any(axis=1), np.where(near, neighbours, np.arange(n)[:, None]))
  for reason, members_of in (("exact_duplicate", [m for m in digests.values() if len(m) > 1]),
                             ("near_duplicate", [np.flatnonzero(near_groups == g).tolist()
                                                 for g in np.unique(near_groups[near_groups >= 0])])):
    for members in members_of:
      members = [m for m in members if m not in findings or findings[m].reason == reason]
      if len(members) < 2:
        continue
      conflicting = len(set(labels[members].tolist())) > 1
      for m in (members if conflicting else members[1:]):
        add(m, reason, 1.0, members[0], conflicting)
  return sorted(findings.values(), key=lambda f: f.index)
