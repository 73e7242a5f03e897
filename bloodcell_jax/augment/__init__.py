"""On-device augmentation inside the jitted train step: geometric, colour, degradation and mixing
ops written in JAX (dm-pix where it is fast), combined into policies parsed from the config.

Every image op is `op(key, image, magnitude, fill_mode) -> image` on one float (H, W, C) image in
[0, 1], jit- and vmap-compatible, shape and range preserving; `augment_batch` applies a policy to a
batch with one key per example.
"""

from bloodcell_jax.augment.policies import (DEGRADATIONS, IMAGE_OPS, MIX_OPS, NAMED, Policy, augment_batch,
                                            augment_uint8, describe, parse, to_unit_range, without_mixing)

__all__ = ["DEGRADATIONS", "IMAGE_OPS", "MIX_OPS", "NAMED", "Policy", "augment_batch", "augment_uint8",
           "describe", "parse", "to_unit_range", "without_mixing"]
