"""Every field a run can set, with its default: the one place defaults live. Config files start from
`get_config()` (via configs/default.py) and override; old run directories are read by laying their
`config.json` over it (bloodcell_jax/config/rules.py).

Any field can be overridden on the command line, e.g. `--config.optim.learning_rate=3e-4`.
"""

import ml_collections

from bloodcell_jax.pretrained.readers import IMAGENET_MEAN, IMAGENET_STD


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # parameter initialisation, shuffling and dropout keys
  config.distributed = False  # True: jax.distributed.initialize() (also implied by JAX_COORDINATOR_ADDRESS)
  config.restart = False  # True: move the workdir's checkpoints aside and start over

  config.data = ml_collections.ConfigDict()
  config.data.source = "sample"  # "sample" (bundled), an npz file, or a folder of class folders
  config.data.image_size = 96  # sources of another size are resized (bicubic)
  config.data.val_fraction = 0.2  # used when the source has no validation split of its own
  config.data.split_seed = 0
  # On-device, train only: none, dihedral, light, medium, heavy, report, randaugment(N, M), or a
  # list "op(p, m) op(p, m) ..." (see bloodcell_jax/augment/policies.py; --mode=preview shows them).
  config.data.augment = "medium"
  config.data.fill_mode = "reflect"  # where geometric ops read outside the image: reflect, nearest, constant
  config.data.clean = False  # True: drop blended outliers, duplicates, blank images first (tools/clean.py)
  config.data.clean_cache = ""  # where the removal list is cached ("": ~/.cache/bloodcell_jax/clean)
  config.data.mean = IMAGENET_MEAN  # input normalisation (travels with pretrained weights)
  config.data.std = IMAGENET_STD

  config.model = ml_collections.ConfigDict()
  config.model.name = "convnext"  # "convnext", "efficientnet" (also MobileNetV3) or "cnn"
  config.model.variant = "atto"  # ConvNeXt: atto ... xlarge; efficientnet: timm's name, e.g. efficientnet_b0
  config.model.depths = ()  # non-empty: overrides the variant's blocks per stage
  config.model.dims = ()  # non-empty: overrides the variant's channels per stage
  config.model.width_multiplier = 1.0  # efficientnet family: scales the variant's channels (timm's rounding)
  config.model.depth_multiplier = 1.0  # efficientnet family: scales the variant's blocks per stage
  config.model.drop_path_rate = 0.1
  config.model.head_dropout = 0.0
  config.model.dtype = "float32"  # compute dtype: float32 or bfloat16 (parameters stay float32)
  # Ported ImageNet weights (python -m bloodcell_jax.pretrained ...): a name under checkpoints/pretrained/
  # or a directory. They set depths/dims and data.mean/std; the 8-class head starts fresh unless keep_head.
  config.model.init_from = ""
  config.model.keep_head = False
  config.model.depthwise_impl = "auto"  # "auto" (shift-add on CPU/GPU, XLA grouped conv on TPU), "xla", "shift"
  config.model.matmul_impl = "auto"  # "auto" (transposed_grad on CPU, xla elsewhere), "xla", "transposed_grad"

  config.loss = ml_collections.ConfigDict()
  config.loss.class_weights = "balanced"  # "none", "balanced" (N / (C * n_c)) or a list of 8 numbers
  config.loss.label_smoothing = 0.0
  config.loss.l2 = 0.0  # lambda of the explicit lambda/2 * sum(kernel^2) term

  config.optim = ml_collections.ConfigDict()
  config.optim.name = "lion"  # "lion", "adamw" or "sgd"
  config.optim.learning_rate = 1e-4  # peak; Lion wants about 3-10x less than AdamW
  config.optim.b1 = 0.9
  config.optim.b2 = 0.99
  config.optim.momentum = 0.9  # sgd only
  config.optim.weight_decay = 0.05  # decoupled; kernels only (not norms, biases, layer scales)
  config.optim.schedule = "cosine"  # "cosine" or "constant", after a linear warmup
  config.optim.warmup_epochs = 1.0
  config.optim.min_lr_ratio = 0.01  # cosine ends at learning_rate * min_lr_ratio
  config.optim.grad_clip_norm = 1.0  # 0 disables clipping
  config.optim.trainable = "all"  # "all", "head", or "last_stages" (head + last unfreeze_stages stages)
  config.optim.unfreeze_stages = 0
  config.optim.layer_decay = 1.0  # layer-wise LR decay for fine-tuning: block k of L gets lr * decay^(L + 1 - k)

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 64  # global: split evenly over the local devices
  config.train.num_epochs = 30
  config.train.monitor_metric = "balanced_accuracy"  # validation metric for best checkpoint / early stop
  config.train.early_stopping_patience = 0  # epochs without improvement; 0 disables
  config.train.prefetch = 2  # batches copied to the devices ahead of the step
  config.train.skip_nonfinite_steps = False  # True: a step with a NaN/inf loss or gradient changes nothing

  # Moving average of the weights (bloodcell_jax/ema.py), saved in every checkpoint and evaluated on the
  # validation split each epoch beside the raw weights.
  config.ema = ml_collections.ConfigDict()
  config.ema.decay = 0.0  # e.g. 0.999; 0 keeps no average
  config.ema.warmup_power = 0.75  # decay 1 - (1 + step)^-power until it reaches `decay`; 0: no warm-up
  config.ema.weights = "ema"  # with an average: the weights that pick best/ and serve eval, predict, export

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.keep = 2  # most recent checkpoints kept (the best is kept apart)
  config.checkpoint.every_steps = 0  # also save every N steps (0: at epoch ends only)

  config.eval = ml_collections.ConfigDict()
  config.eval.tta = "dihedral"  # test-time views (none, hflip, flips, rot90, dihedral) for eval, predict, export
  # At the end of training, for the best checkpoint: fit the temperature and the rejector (below), then
  # write report/validation/. False: neither (predict then needs --mode=calibrate or --reject=off).
  config.eval.report = True

  # Fitted for the best checkpoint after training (bloodcell_jax/trust.py; `--mode=calibrate` for
  # another): temperature scaling of the probabilities, and the rejector behind predict's "not a cell".
  config.reject = ml_collections.ConfigDict()
  config.reject.method = "mahalanobis"  # mahalanobis, knn, energy or max_probability (open_set.py)
  config.reject.false_rejection = 0.01  # share of the validation split's real cells rejected as not cells
  config.reject.min_confidence = 0.0  # calibrated top probability below which predict answers "low confidence"
  return config
