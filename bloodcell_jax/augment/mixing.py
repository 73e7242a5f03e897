"""MixUp and CutMix on a device's batch, with soft targets for the class-weighted loss.

Per-example: each example draws its own coin (probability p), mixing ratio lambda ~ Beta(a, a)
and (CutMix) box, and mixes with a partner from a random permutation of the batch. Targets mix
by the same lambda (CutMix: the pasted box's true area fraction), so the loss's example weight
sum_c w_c y_c becomes the lambda-weighted mean of the two classes' weights.
"""

import jax
import jax.numpy as jnp


def _draw(key, batch, p, alpha):
  k_apply, k_lam, k_perm = jax.random.split(key, 3)
  apply = jax.random.bernoulli(k_apply, p, (batch,))
  lam = jax.random.beta(k_lam, alpha, alpha, (batch,))
  partner = jax.random.permutation(k_perm, batch)
  return apply, lam, partner


def mixup(key, images, targets, p=1.0, alpha=0.2):
  """x <- lam x + (1 - lam) x[partner]; y likewise."""
  apply, lam, partner = _draw(key, images.shape[0], p, alpha)
  lam = jnp.where(apply, lam, 1.0)
  images = lam[:, None, None, None] * images + (1 - lam[:, None, None, None]) * images[partner]
  targets = lam[:, None] * targets + (1 - lam[:, None]) * targets[partner]
  return images, targets


def cutmix(key, images, targets, p=1.0, alpha=1.0):
  """A box covering about 1 - lam of the image is pasted from the partner; y mixes by the box's
  true (clipped) area."""
  n, h, w = images.shape[:3]
  apply, lam, partner = _draw(key, n, p, alpha)
  centre = jax.random.uniform(jax.random.fold_in(key, 1), (n, 2)) * jnp.array([h, w])
  half = jnp.sqrt(1.0 - lam)[:, None] * jnp.array([h, w]) / 2
  low = jnp.clip(jnp.round(centre - half), 0, jnp.array([h, w]))
  high = jnp.clip(jnp.round(centre + half), 0, jnp.array([h, w]))
  yy, xx = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
  box = ((yy >= low[:, 0, None, None]) & (yy < high[:, 0, None, None]) & (xx >= low[:, 1, None, None])
         & (xx < high[:, 1, None, None]) & apply[:, None, None])
  images = jnp.where(box[..., None], images[partner], images)
  pasted = box.mean(axis=(1, 2))
  targets = (1 - pasted)[:, None] * targets + pasted[:, None] * targets[partner]
  return images, targets
