"""Porting a ConvNeXt or EfficientNet-family checkpoint into our variables, with every key and shape
accounted for, and storing them for fine-tuning.

`convert` maps each source tensor through the key table of its naming scheme, changes its layout,
and checks it against the shapes our model has for the architecture read off the checkpoint. Any
unused source key, unfilled parameter or wrong shape makes it raise one error that lists them all;
nothing is written in that case.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from bloodcell_jax.errors import UserInputError
from bloodcell_jax.models import efficientnet
from bloodcell_jax.models.convnext import VARIANTS, ConvNeXt
from bloodcell_jax.pretrained import convnext_keys, efficientnet_keys, readers
from bloodcell_jax.pretrained.store import DEFAULT_ROOT, save


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
  family: str = "convnext"  # the model.name these weights fit
  model_state: dict = dataclasses.field(default_factory=dict)  # BatchNorm statistics ({"batch_stats": ...})


def expected_shapes(depths, dims, num_classes: int) -> dict[str, tuple[int, ...]]:
  model = ConvNeXt(num_classes=num_classes, depths=tuple(depths), dims=tuple(dims))
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))["params"]
  return {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes).items()}


def variant_name(depths, dims) -> str:
  return next((name for name, (d, c) in VARIANTS.items() if tuple(d) == tuple(depths) and tuple(c) == tuple(dims)),
              "custom")


def convert(tensors: dict[str, np.ndarray], source: str, variant: str | None = None) -> Converted:
  """Our variables from a ConvNeXt state dict (timm, facebook or Hugging Face naming) or a timm
  EfficientNet / EfficientNetV2 / MobileNetV3 one (`variant`: its timm name, where the shapes alone
  do not tell it, e.g. efficientnet_b0 from tf_efficientnet_b0)."""
  if efficientnet_keys.is_efficientnet_family(tensors):
    return convert_efficientnet(tensors, source, variant)
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


def _efficientnet_candidates(tensors: dict, hint: str) -> list[str]:
  """Variants whose blocks, stem and squeeze-excite fit the tensors; narrowed by a timm name in `hint`."""
  lukemelas = efficientnet_keys.is_lukemelas(tensors)
  if lukemelas:
    count = efficientnet_keys.lukemelas_block_count(tensors)
    stem = tensors[efficientnet_keys.LUKEMELAS_SIGNATURE].shape[0]
  else:
    blocks = {tuple(int(i) for i in k.split(".")[1:3]) for k in tensors if k.startswith("blocks.")}
    stem = tensors[efficientnet_keys.SIGNATURE].shape[0]
  has_se = any("_se_reduce." in k or ".se." in k for k in tensors)
  fitting = []
  for name, arch in efficientnet.VARIANTS.items():
    stem_chs, stages, _ = efficientnet.resolve_blocks(arch)
    layout_fits = (sum(map(len, stages)) == count if lukemelas
                   else blocks == {(i, j) for i, stage in enumerate(stages) for j in range(len(stage))})
    if stem_chs == stem and layout_fits and has_se == any(b.se_chs for stage in stages for b in stage):
      fitting.append(name)
  hint = hint.replace("-", "_")  # file names such as efficientnet-lite0-57934424.pth
  exact = [n for n in fitting if n == hint.split(".")[0]]
  named = [n for n in fitting if n in hint]
  named = [n for n in named if not any(n != other and n in other for other in named)]  # tf_x over x
  return exact or named or fitting


def convert_efficientnet(tensors: dict[str, np.ndarray], source: str, variant: str | None = None) -> Converted:
  name = os.path.basename(os.path.normpath(source))
  candidates = [variant] if variant else _efficientnet_candidates(tensors, name)
  if variant and variant not in efficientnet.VARIANTS:
    raise PortError(f"{source}: unknown variant {variant!r}; choose one of {', '.join(efficientnet.VARIANTS)}")
  if not candidates:
    raise PortError(f"{source}: its blocks fit none of {', '.join(efficientnet.VARIANTS)}")
  if len(candidates) > 1:
    raise PortError(f"{source}: fits {' and '.join(candidates)} (they differ in padding and BatchNorm epsilon "
                    "only); name one with --variant")
  (variant,) = candidates
  scheme, origin = "timm", {key: key for key in tensors}  # origin: timm's key -> the file's
  if efficientnet_keys.is_lukemelas(tensors):
    _, stages, _ = efficientnet.resolve_blocks(efficientnet.VARIANTS[variant])
    renamed = efficientnet_keys.timm_names_of_lukemelas(tensors, [len(s) for s in stages])
    scheme, origin = "lukemelas", {new: old for old, new in renamed.items()}
    tensors = {renamed[key]: value for key, value in tensors.items()}
  if "classifier.weight" not in tensors:
    raise PortError(f"{source}: no classifier.weight; a classifier checkpoint is needed")
  num_classes = tensors["classifier.weight"].shape[0]
  model = efficientnet.EfficientNet(num_classes, efficientnet.VARIANTS[variant])
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
  expected = {(c, "/".join(k)): tuple(v.shape) for c in shapes
              for k, v in traverse_util.flatten_dict(shapes[c]).items()}
  flat, key_map, problems = {}, {}, []
  for key in sorted(tensors):
    if efficientnet_keys.skipped(key):
      continue
    target = efficientnet_keys.target_of(key)
    if target is None or target[:2] not in expected:
      problems.append(f"unexpected {origin[key]} {tuple(tensors[key].shape)}")
      continue
    collection, path, _ = target
    value = efficientnet_keys.to_flax_layout(path, np.asarray(tensors[key], np.float32))
    key_map[origin[key]] = f"{collection}/{path}"
    if value.shape != expected[(collection, path)]:
      problems.append(f"wrong shape {origin[key]}: {tuple(value.shape)} after layout change, {path} needs "
                      f"{expected[(collection, path)]}")
      continue
    flat[(collection, path)] = value
  problems += [f"missing {c}/{p} {shape}" for (c, p), shape in expected.items() if (c, p) not in flat
               and f"{c}/{p}" not in key_map.values()]
  if problems:
    shown = "; ".join(problems[:12]) + (f"; and {len(problems) - 12} more" if len(problems) > 12 else "")
    raise PortError(f"{source}: {len(problems)} mismatches with {variant}: {shown}")
  variables = {c: traverse_util.unflatten_dict({tuple(p.split("/")): v for (cc, p), v in flat.items() if cc == c})
               for c in shapes}
  params = variables.pop("params")
  return Converted(params, scheme, variant, (), (), num_classes, key_map, family="efficientnet",
                   model_state=variables)


def normalisation(source_config: dict) -> tuple[list, list]:
  """Input mean/std from the source's config (timm's pretrained_cfg or HF's), else ImageNet's."""
  cfg = source_config.get("pretrained_cfg", source_config)
  mean = cfg.get("mean", cfg.get("image_mean", readers.IMAGENET_MEAN))
  std = cfg.get("std", cfg.get("image_std", readers.IMAGENET_STD))
  return [float(m) for m in mean], [float(s) for s in std]


def port(source: str, name: str | None = None, out: str = DEFAULT_ROOT, overwrite: bool = False,
         variant: str | None = None) -> str:
  """Reads `source` (a file, a folder, packaged weights' name or a timm name), converts it, and stores
  it as checkpoints/pretrained/<name>/; returns that directory."""
  packaged = readers.PACKAGED.get(source)
  if os.path.exists(source):
    path = source
  elif packaged:
    path = readers.packaged_file(source)
  elif os.sep in source or source.endswith((".safetensors", ".pth", ".pt", ".bin")):
    raise UserInputError(f"{source}: no such file or folder")
  else:
    path = readers.fetch_timm(source)
  tensors, read_path, source_config = readers.read_file(path)
  if packaged:
    variant, source_config = variant or packaged.variant, {"mean": packaged.mean, "std": packaged.std}
  preprocessor = os.path.join(os.path.dirname(read_path), "preprocessor_config.json")  # Hugging Face's
  if os.path.exists(preprocessor):
    with open(preprocessor) as f:
      source_config = {**source_config, **json.load(f)}
  converted = convert(tensors, source if not os.path.exists(source) else read_path, variant)
  mean, std = normalisation(source_config)
  name = name or (source if not os.path.exists(source) else
                  os.path.splitext(os.path.basename(os.path.normpath(source)))[0])
  meta = {"name": name, "source": source, "file": os.path.abspath(read_path), "sha256": readers.sha256_of(read_path),
          "family": converted.family, "scheme": converted.scheme, "variant": converted.variant,
          "depths": list(converted.depths),
          "dims": list(converted.dims), "num_classes": converted.num_classes, "mean": mean, "std": std,
          "key_report": {"source_keys": len(tensors), "mapped": len(converted.key_map), "unexpected": [],
                         "missing": [], "map": converted.key_map}}
  directory = save(os.path.join(out, name), converted.params, meta, overwrite, converted.model_state)
  print(f"ported {len(converted.key_map)} tensors ({converted.scheme} names, {converted.family} {converted.variant}, "
        f"{converted.num_classes}-class head) from {read_path} to {directory}")
  return directory
