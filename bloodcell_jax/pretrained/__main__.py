"""python -m bloodcell_jax.pretrained SOURCE [--name NAME] [--out DIR] [--overwrite] [--variant NAME]

SOURCE: a timm model name (fetched from the Hugging Face Hub, e.g. convnext_base.fb_in22k_ft_in1k,
efficientnet_b0.ra_in1k, tf_efficientnetv2_s.in21k_ft_in1k, mobilenetv3_small_100.lamb_in1k), a
.safetensors / .pth / .bin file (timm or facebookresearch/ConvNeXt keys), or a Hugging Face
ConvNextForImageClassification directory. Writes checkpoints/pretrained/<name>/.
"""

import json
import os
import sys

from absl import flags

from bloodcell_jax.config.defaults import IMAGENET_MEAN, IMAGENET_STD
from bloodcell_jax.errors import UserInputError
from bloodcell_jax.pretrained import convert, save
from bloodcell_jax.pretrained.readers import fetch_timm, read_file, sha256_of
from bloodcell_jax.pretrained.store import DEFAULT_ROOT
from bloodcell_jax import cli


def normalisation(source_config: dict) -> tuple[list, list]:
  """Input mean/std from the source's config (timm's pretrained_cfg or HF's), else ImageNet's."""
  cfg = source_config.get("pretrained_cfg", source_config)
  mean = cfg.get("mean", cfg.get("image_mean", IMAGENET_MEAN))
  std = cfg.get("std", cfg.get("image_std", IMAGENET_STD))
  return [float(m) for m in mean], [float(s) for s in std]


def port(source: str, name: str | None = None, out: str = DEFAULT_ROOT, overwrite: bool = False,
         variant: str | None = None) -> str:
  if os.path.exists(source):
    path = source
  elif os.sep in source or source.endswith((".safetensors", ".pth", ".pt", ".bin")):
    raise UserInputError(f"{source}: no such file or folder")
  else:
    path = fetch_timm(source)
  tensors, read_path, source_config = read_file(path)
  preprocessor = os.path.join(os.path.dirname(read_path), "preprocessor_config.json")  # Hugging Face's
  if os.path.exists(preprocessor):
    with open(preprocessor) as f:
      source_config = {**source_config, **json.load(f)}
  converted = convert(tensors, source if not os.path.exists(source) else read_path, variant)
  mean, std = normalisation(source_config)
  name = name or (source if not os.path.exists(source) else
                  os.path.splitext(os.path.basename(os.path.normpath(source)))[0])
  meta = {"name": name, "source": source, "file": os.path.abspath(read_path), "sha256": sha256_of(read_path),
          "family": converted.family, "scheme": converted.scheme, "variant": converted.variant,
          "depths": list(converted.depths),
          "dims": list(converted.dims), "num_classes": converted.num_classes, "mean": mean, "std": std,
          "key_report": {"source_keys": len(tensors), "mapped": len(converted.key_map), "unexpected": [],
                         "missing": [], "map": converted.key_map}}
  directory = save(os.path.join(out, name), converted.params, meta, overwrite, converted.model_state)
  print(f"ported {len(converted.key_map)} tensors ({converted.scheme} names, {converted.family} {converted.variant}, "
        f"{converted.num_classes}-class head) from {read_path} to {directory}")
  return directory


FLAGS = flags.FlagValues()  # this tool's own, not absl's global FLAGS (main.py's); see bloodcell_jax/cli.py
flags.DEFINE_string("name", None, "Directory name under --out (default: the timm name or file name).",
                    flag_values=FLAGS)
flags.DEFINE_string("out", DEFAULT_ROOT, "Folder the ported weights are written under.", flag_values=FLAGS)
flags.DEFINE_bool("overwrite", False, "Replace weights already ported under that name.", flag_values=FLAGS)
flags.DEFINE_string("variant", None, "EfficientNet family: timm's model name where the file's name does not tell it "
                    "(efficientnet_b0 and tf_efficientnet_b0 have the same shapes).", flag_values=FLAGS)


def main(argv=None) -> int:
  return cli.run("python -m bloodcell_jax.pretrained", __doc__, FLAGS, argv,
                 lambda source: port(source, FLAGS.name, FLAGS.out, FLAGS.overwrite, FLAGS.variant),
                 positionals=("SOURCE",))


if __name__ == "__main__":
  sys.exit(main())
