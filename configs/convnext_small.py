"""ConvNeXt-Small on ../shared/data/pbc96 at 96x96, for a GPU or TPU.

ConvNeXt-Small (timm's variant) for accelerators.

Result: not measured yet; run
`python main.py --config configs/convnext_small.py` and record the figure here with the machine.
"""

from configs.accelerator import convnext_config


def get_config():
  return convnext_config("small")
