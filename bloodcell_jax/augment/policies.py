"""Augmentation policies: which ops run, with what probability and magnitude, parsed from a string.

A policy string is one of
  - a named policy: none, dihedral, light, medium, heavy, report (see NAMED);
  - `randaugment(N, M)`: the dihedral group, then N ops drawn uniformly per example from
    RANDAUGMENT_OPS at magnitude M/10 (M in 0..10), as in Cubuk et al. 2020;
  - a custom list `op(p, m) op(p, m) ...` (commas or spaces between), run in order, each op applied
    to an example with probability p at magnitude m in [0, 1]; for mixup/cutmix m is Beta's alpha.
Ops run per example with keys folded from the step key and the example's index, inside the jitted
step; mixing ops run last, on the whole device batch.
"""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np

from bloodcell_jax.augment import colour, degrade, geometric, mixing

IMAGE_OPS = {
    "dihedral": geometric.dihedral, "affine": geometric.random_affine, "rotate": geometric.rotate,
    "shear_x": geometric.shear_x, "shear_y": geometric.shear_y, "translate_x": geometric.translate_x,
    "translate_y": geometric.translate_y, "zoom": geometric.zoom,
    "brightness": colour.brightness, "contrast": colour.contrast, "saturation": colour.saturation,
    "hue": colour.hue, "gamma": colour.gamma, "stain": colour.stain, "greyscale": colour.greyscale,
    "solarize": colour.solarize, "posterize": colour.posterize, "autocontrast": colour.autocontrast,
    "equalize": colour.equalize, "sharpness": colour.sharpness,
    "gaussian_blur": degrade.gaussian_blur, "defocus": degrade.defocus, "motion_blur": degrade.motion_blur,
    "noise": degrade.noise, "pixelate": degrade.pixelate, "jpeg": degrade.jpeg,
    "illumination": degrade.illumination, "occlusion": degrade.occlusion, "deposits": degrade.deposits,
    "bubbles": degrade.bubbles, "cutout": degrade.cutout,
}
MIX_OPS = {"mixup": mixing.mixup, "cutmix": mixing.cutmix}
RANDAUGMENT_OPS = ("identity", "autocontrast", "equalize", "rotate", "solarize", "saturation", "posterize",
                   "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y")
DEGRADATIONS = ("gaussian_blur", "defocus", "motion_blur", "noise", "pixelate", "jpeg", "illumination",
                "occlusion", "deposits", "bubbles", "stain", "brightness", "contrast")

_GEOMETRIC = "dihedral(1, 1)"
NAMED = {
    "none": "",
    "dihedral": _GEOMETRIC,
    "light": f"{_GEOMETRIC} affine(0.5, 0.3) brightness(0.3, 0.3) contrast(0.3, 0.3)",
    "medium": (f"{_GEOMETRIC} affine(0.8, 0.5) stain(0.5, 0.5) brightness(0.5, 0.5) contrast(0.5, 0.5) "
               "saturation(0.5, 0.5) hue(0.3, 0.3) gamma(0.3, 0.5) gaussian_blur(0.2, 0.5) noise(0.2, 0.3) "
               "cutout(0.2, 0.3)"),
    "heavy": (f"{_GEOMETRIC} affine(0.9, 0.8) stain(0.7, 0.8) brightness(0.6, 0.8) contrast(0.6, 0.8) "
              "saturation(0.5, 0.8) hue(0.4, 0.5) gamma(0.4, 0.8) greyscale(0.05, 1) gaussian_blur(0.15, 0.8) "
              "defocus(0.15, 0.8) motion_blur(0.1, 0.8) noise(0.25, 0.6) pixelate(0.1, 0.6) jpeg(0.25, 0.8) "
              "illumination(0.3, 0.8) occlusion(0.2, 0.6) cutout(0.25, 0.5) mixup(0.25, 0.2) cutmix(0.25, 1.0)"),
    # The report's pipeline: geometric (flips, rotation, zoom, shift), colour jitter, MixUp/CutMix.
    "report": (f"{_GEOMETRIC} affine(0.9, 0.6) brightness(0.5, 0.5) contrast(0.5, 0.5) saturation(0.5, 0.5) "
               "hue(0.3, 0.3) mixup(0.3, 0.2) cutmix(0.3, 1.0)"),
}
_RANDAUGMENT = re.compile(r"^randaugment\(\s*(\d+)\s*,\s*(\d+(?:\.\d*)?)\s*\)$")
_ENTRY = re.compile(r"([a-z_0-9]+)\(\s*([-+.\deE]+)\s*,\s*([-+.\deE]+)\s*\)")


@dataclasses.dataclass(frozen=True)
class Policy:
  """A parsed policy: (op, probability, magnitude) entries in order, and RandAugment's (N, M)."""

  entries: tuple = ()
  randaugment_layers: int = 0
  randaugment_magnitude: float = 0.0

  @property
  def mixes(self) -> bool:
    return any(name in MIX_OPS for name, _, _ in self.entries)


def without_mixing(policy: str) -> str:
  """The same policy with its mixing ops (mixup, cutmix) left out: what one image alone can look like."""
  parsed = parse(policy)
  if not parsed.mixes:
    return policy
  parts = [f"{name}({p}, {m})" for name, p, m in parsed.entries if name not in MIX_OPS]
  if parsed.randaugment_layers:
    parts.append(f"randaugment({parsed.randaugment_layers}, {parsed.randaugment_magnitude})")
  return " ".join(parts) or "none"


def describe() -> str:
  return ("none, dihedral, light, medium, heavy, report, randaugment(N, M), or a list of op(p, m) with op in "
          + ", ".join(sorted(IMAGE_OPS) + sorted(MIX_OPS)))


@functools.lru_cache(maxsize=64)
def parse(text: str) -> Policy:
  """The Policy a string names; ValueError naming the problem otherwise."""
  text = text.strip()
  match = _RANDAUGMENT.match(text.replace(" ", ""))
  if match:
    layers, m = int(match.group(1)), float(match.group(2))
    if not 0 <= m <= 10:
      raise ValueError(f"augment policy {text!r}: RandAugment magnitude must lie in [0, 10]")
    return Policy(parse(NAMED["dihedral"]).entries, layers, m / 10)
  text = NAMED.get(text, text)
  entries = []
  rest = _ENTRY.sub("", text).replace(",", " ").strip()
  if rest:
    raise ValueError(f"augment policy {text!r} is not understood near {rest.split()[0]!r}; expected {describe()}")
  for name, p, m in _ENTRY.findall(text):
    p, m = float(p), float(m)
    if name not in IMAGE_OPS and name not in MIX_OPS:
      raise ValueError(f"augment policy: unknown op {name!r}; ops are {', '.join(sorted(IMAGE_OPS) + sorted(MIX_OPS))}")
    if not 0 <= p <= 1:
      raise ValueError(f"augment policy: {name} probability {p} must lie in [0, 1]")
    if name in MIX_OPS and m <= 0:
      raise ValueError(f"augment policy: {name} alpha {m} must be positive")
    if name in IMAGE_OPS and not 0 <= m <= 1:
      raise ValueError(f"augment policy: {name} magnitude {m} must lie in [0, 1]")
    entries.append((name, p, m))
  return Policy(tuple(entries))


def _randaugment_layer(keys: jax.Array, images: jax.Array, magnitude: float, fill_mode: str) -> jax.Array:
  """One RandAugment layer: each example gets one op of RANDAUGMENT_OPS, drawn uniformly.

  One masked pass per op rather than a vmapped `lax.switch`, which computes every branch for every
  example and selects: N=2, M=9 took 199 ms per 64 images of 96x96 on a 2-core CPU that way
  (benchmarks/augment_cost.py), the sum of the ops' own costs this way.
  """
  choice_keys, op_keys = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
  choice = jax.vmap(lambda k: jax.random.randint(k, (), 0, len(RANDAUGMENT_OPS)))(choice_keys)
  for index, name in enumerate(RANDAUGMENT_OPS):
    if name != "identity":
      op = jax.vmap(functools.partial(IMAGE_OPS[name], magnitude=magnitude, fill_mode=fill_mode))
      images = _where_any(choice == index, lambda x, op=op: op(op_keys, x), images)
  return images


def _where_any(apply: jax.Array, op, images: jax.Array) -> jax.Array:
  """op(images) where `apply` (per example) holds, else images; skipped when no example applies.

  On CPU the `cond` also fences each op into its own XLA computation: without it, CPU fusion
  inlines an op's work into every later read of its output (a gather, MixUp's partner) and
  recomputes it (heavy: 510 ms per 64 images unfenced, 57 ms fenced). On GPUs the fences would
  only add kernel launches and synchronisation, so the ops there fuse freely.
  """
  def run(x):
    return jnp.where(apply[:, None, None, None], op(x), x)
  if jax.default_backend() != "cpu":
    return run(images)
  return jax.lax.cond(apply.any(), run, lambda x: x, images)


def to_unit_range(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] to float32 [0, 1]; float input is taken to be in [0, 1] already."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def augment_batch(key: jax.Array, images: jax.Array, targets: jax.Array, policy: str | Policy,
                  fill_mode: str = "reflect") -> tuple[jax.Array, jax.Array]:
  """(images float32 [0, 1], soft targets) after `policy`, from uint8 or [0, 1] images (N, H, W, C)
  and one-hot (or soft) targets (N, K). Example i uses key fold_in(key, i)."""
  if isinstance(policy, str):
    try:
      policy = parse(policy)
    except ValueError as e:
      raise ValueError(f"augment policy: {e}") from None
  images = to_unit_range(images)
  if not policy.entries and not policy.randaugment_layers:
    return images, targets
  n = images.shape[0]
  example_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))
  for i, (name, p, m) in enumerate(policy.entries):
    if name in IMAGE_OPS and p > 0:
      keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, i)))(example_keys)
      apply = jax.vmap(lambda k: jax.random.bernoulli(k, p))(keys[:, 0])
      op = jax.vmap(functools.partial(IMAGE_OPS[name], magnitude=m, fill_mode=fill_mode))
      images = _where_any(apply, lambda x, k=keys[:, 1], op=op: op(k, x), images)
  for layer in range(policy.randaugment_layers):
    keys = jax.vmap(lambda k: jax.random.fold_in(k, 1000 + layer))(example_keys)
    images = _randaugment_layer(keys, images, policy.randaugment_magnitude, fill_mode)
  mix_key = jax.random.fold_in(key, n)
  for i, (name, p, alpha) in enumerate(policy.entries):
    if name in MIX_OPS and p > 0:
      images, targets = MIX_OPS[name](jax.random.fold_in(mix_key, i), images, targets, p, alpha)
  return images, targets


_OFFLINE_CHUNK = 256


@functools.lru_cache(maxsize=32)
def _compiled(policy: str):
  return jax.jit(lambda key, images: augment_batch(key, images, jnp.zeros((images.shape[0], 1)), policy)[0])


def augment_uint8(images: np.ndarray, policy: str, seed: int = 0) -> np.ndarray:
  """`policy` applied to uint8 images off the training loop (oversampling, corrupted eval sets):
  fixed-size chunks (one compilation), chunk at offset s keyed by fold_in(PRNGKey(seed), s), and
  the result rounded back to uint8 as a file on disk would be."""
  key = jax.random.PRNGKey(seed)
  chunks = []
  for start in range(0, len(images), _OFFLINE_CHUNK):
    chunk = images[start:start + _OFFLINE_CHUNK]
    padded = np.concatenate([chunk, np.zeros((_OFFLINE_CHUNK - len(chunk),) + chunk.shape[1:], np.uint8)])
    out = np.asarray(_compiled(policy)(jax.random.fold_in(key, start), padded))[:len(chunk)]
    chunks.append(np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8))
  return np.concatenate(chunks) if chunks else images[:0]
