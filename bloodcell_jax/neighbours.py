"""Nearest neighbours by cosine similarity of unit feature vectors, in chunks so memory stays that of
one chunk against all keys. The data-cleaning tool (pixel detail features of training images) and
the open-set rejector (a model's features of a new image against its training set) ask the same
question: how close is this image to the images we know?"""

import jax
import jax.numpy as jnp
import numpy as np

CHUNK = 1024


def top_k_similar(queries: jax.Array, keys: jax.Array, k: int, first_index=0, exclude_self=False):
  """Top-k dot products (best first) and their key indices for each query; jittable. With
  `exclude_self`, query i is key `first_index + i` and is not its own neighbour."""
  sims = queries @ keys.T
  rows = first_index + jnp.arange(queries.shape[0])
  sims = jnp.where(exclude_self & (jnp.arange(keys.shape[0])[None, :] == rows[:, None]), -2.0, sims)
  values, indices = [], []
  for _ in range(k):  # k argmax passes: far cheaper than a sort on CPU for small k
    j = jnp.argmax(sims, axis=1)
    values.append(jnp.take_along_axis(sims, j[:, None], 1)[:, 0])
    indices.append(j)
    sims = sims.at[jnp.arange(sims.shape[0]), j].set(-3.0)
  return jnp.stack(values, 1), jnp.stack(indices, 1)


_top_k_chunk = jax.jit(top_k_similar, static_argnames="k")


def nearest(queries: np.ndarray, keys: np.ndarray, k: int, exclude_self: bool = False
            ) -> tuple[np.ndarray, np.ndarray]:
  """(similarities, indices), each (N, k), best first. With `exclude_self`, queries are the keys
  themselves and a row is not its own neighbour."""
  n = len(queries)
  queries = np.asarray(queries, np.float32)
  padded = np.concatenate([queries, np.zeros((-n % CHUNK, queries.shape[1]), np.float32)])
  keys = jnp.asarray(keys, jnp.float32)
  out = [_top_k_chunk(padded[s:s + CHUNK], keys, k, first_index=s, exclude_self=exclude_self)
         for s in range(0, len(padded), CHUNK)]
  values, indices = (np.concatenate([np.asarray(o[i]) for o in out])[:n] for i in (0, 1))
  return values, indices


def unit_rows(features: np.ndarray) -> np.ndarray:
  """Each row scaled to unit length (cosine similarity is then a dot product)."""
  features = np.asarray(features, np.float32)
  return features / (np.linalg.norm(features, axis=1, keepdims=True) + 1e-6)
