"""Fields every training config has; the dataset configs start from here. Pass ``--config.<field>=<value>``
to override any of them."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


def fields() -> dict[str, Any]:
    """The default fields as a plain dict (usable without ml_collections, e.g. by the GPU benchmarks)."""
    c = SimpleNamespace()
    # Model: a name from resnet_jax.list_models() and its options.
    c.model = "cifar_resnet20"
    c.shortcut = ""  # "" = the model's default (A for CIFAR, B for ImageNet)
    c.version = "v1"
    c.zero_init_residual = False
    c.scan = False
    c.remat = False
    c.dtype = "float32"  # computation; parameters and optimizer state stay float32
    c.stage_sizes = ()  # () = the model's; blocks per stage, e.g. (1, 1, 1): a network outside the paper's table
    c.widths = ()  # () = the model's; filters per stage, e.g. (4, 8, 16)
    c.stem_width = 0  # 0 = the model's (64); filters of the ImageNet stem
    # "auto" (the fastest per shape and pass on CPUs, oneDNN's where it builds; XLA's elsewhere), "xla", "im2col",
    # "onednn"
    c.conv_impl = "auto"
    # Data: a TFDS name or "folder:/path/to/root" (<root>/<split>/<class>/<image>).
    c.dataset = "cifar10"
    c.data_dir = None  # a placeholder for str in the ConfigDict
    c.verify_images = False  # image folders: decode every file once up front and skip (with a warning) bad ones
    c.train_split = "train"
    c.eval_split = "test"
    c.train_preset = "cifar"
    c.eval_preset = "cifar"
    c.image_size = 32
    c.normalization = "pixel_mean"  # "pixel_mean" (per-pixel mean of the train split) or "mean_std"
    c.mean = (0.0, 0.0, 0.0)  # used by "mean_std", in [0, 255]
    c.std = (1.0, 1.0, 1.0)
    c.on_device_data = False  # keep a small train set on the accelerator and augment there
    # Optimisation.
    c.batch_size = 128  # global, over all devices and hosts
    c.num_train_steps = 64_000
    c.optimizer = "sgd"
    c.learning_rate = 0.1
    c.lr_scaling = "none"  # "linear": learning_rate * batch_size / 256 (Goyal et al. 2017)
    c.momentum = 0.9
    c.nesterov = False
    c.weight_decay = 1e-4
    c.schedule = "piecewise"  # or "cosine"
    c.lr_boundaries = (32_000, 48_000)  # steps where the rate is divided by 10
    c.lr_boundaries_epochs = ()  # the same in epochs (used when non-empty)
    c.warmup_steps = 0
    c.warmup_epochs = 0.0  # the same in epochs (used when > 0)
    c.warmup = "constant"  # "constant": warmup_lr until warmup_steps (Sec. 4.2); "linear": 0 -> learning_rate
    c.warmup_lr = 0.01
    c.label_smoothing = 0.0
    # Fine-tuning: start a new run from another run's (or a converted) checkpoint, "<workdir>[:step|:best]".
    c.init_from = ""
    c.freeze = "none"  # "none", "backbone" (all but fc: a linear probe) or parts, e.g. "stem,stage1"
    c.head_lr_multiplier = 1.0  # the classifier (fc) learns at this multiple of the learning rate
    c.sync_batch_stats = False  # False: BN statistics per device over its local batch, as in the paper
    # Bookkeeping.
    c.seed = 0
    c.log_every_steps = 100
    c.eval_every_steps = 2_000
    c.checkpoint_every_steps = 2_000
    c.keep_checkpoints = 3
    c.eval_batch_size = 500
    c.steps_per_loop = 1  # train steps per jitted call (a loop on the device), cut short at log/eval/checkpoint steps
    c.profile_steps = ""  # "START:STOP": a jax.profiler trace of those steps in <workdir>/profile
    return vars(c)


def get_config():
    """The defaults as an ml_collections ConfigDict."""
    import ml_collections

    values = fields()
    config = ml_collections.ConfigDict(dict(values, data_dir=ml_collections.config_dict.placeholder(str)))
    return config
