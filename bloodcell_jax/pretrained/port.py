"""Converting a ConvNeXt checkpoint into our parameter tree, with every key and shape accounted for.

`convert` maps each source tensor through the key table of its naming scheme, changes its layout,
and checks it against the shapes our model has for the architecture read off the checkpoint. Any
unused source key, unfilled parameter or wrong shape makes it raise one error that lists them all;
nothing is written in that case.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from bloodcell_jax.errors import UserInputError
from bloodcell_jax.models.convnext import VARIANTS, ConvNeXt
from bloodcell_jax.pretrained import convnext_keys


class PortError(UserInputError):
  """The checkpoint does not fit the model; the message lists every mismatch."""


@dataclasses.dataclass
class Converted:
  params: dict  # nested, numpy float32, our paths
  scheme: str
  variant: str  # a VARIANTS name or "custom"
  depths: tuple[int, ...]
  dims: tuple[int, ...]
  num_classes: int
  key_map: dict[str, str]  # source key -> our path


def expected_shapes(depths, dims, num_classes: int) -> dict[str, tuple[int, ...]]:
  model = ConvNeXt(num_classes=num_classes, depths=tuple(depths), dims=tuple(dims))
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))["params"]
  return {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes).items()}


def variant_name(depths, dims) -> str:
  return next((name for name, (d, c) in VARIANTS.items() if tuple(d) == tuple(depths) and tuple(c) == tuple(dims)),
              "custom")


def convert(tensors: dict[str, np.ndarray], source: str) -> Converted:
  """Our parameters from a ConvNeXt state dict in timm, facebook or Hugging Face naming."""
  scheme = convnext_keys.detect_scheme(tensors)
  if scheme is None:
    known = ", ".join(f"{s} ({k})" for s, k in convnext_keys.SIGNATURES.items())
    raise PortError(f"{source}: not a ConvNeXt checkpoint in a known naming scheme; looked for {known}")
  depths, dims, num_classes = convnext_keys.architecture(tensors, scheme)
  if len(depths) != 4 or not num_classes:
    raise PortError(f"{source}: found {len(depths)} stages and {num_classes} head outputs; a ConvNeXt has 4 "
                    "stages and a linear head")
  expected = expected_shapes(depths, dims, num_classes)
  flat, key_map, problems = {}, {}, []
  for key in sorted(tensors):
    path = convnext_keys.target_of(scheme, key)
    if path is None or path not in expected:
      problems.append(f"unexpected {key} {tuple(tensors[key].shape)}")
      continue
    if path in flat:
      problems.append(f"{key} maps to {path}, already filled by {next(k for k, p in key_map.items() if p == path)}")
      continue
    value = convnext_keys.to_flax_layout(path, np.asarray(tensors[key], np.float32))
    if value.shape != expected[path]:
      problems.append(f"wrong shape {key}: {tuple(value.shape)} after layout change, {path} needs {expected[path]}")
      key_map[key] = path
      continue
    flat[path] = value
    key_map[key] = path
  seen = set(key_map.values())
  problems += [f"missing {path} {shape}" for path, shape in expected.items() if path not in seen]
  if problems:
    raise PortError(f"{source}: {len(problems)} mismatches with ConvNeXt depths {depths} dims {dims}: "
                    + "; ".join(problems))
  params = traverse_util.unflatten_dict({tuple(p.split("/")): v for p, v in flat.items()})
  return Converted(params, scheme, variant_name(depths, dims), depths, dims, num_classes, key_map)
