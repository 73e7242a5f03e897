"""ConvNeXt-Base on ../shared/data/pbc96 at 96x96, for a GPU or TPU.

The report's best model was an ImageNet-pretrained ConvNeXt-Base; this config trains the same
architecture from scratch until ported weights can be loaded (init_from).

Result: not measured yet; run
`python main.py --config configs/convnext_base.py` and record the figure here with the machine.
"""

from configs.accelerator import convnext_config


def get_config():
  return convnext_config("base")
