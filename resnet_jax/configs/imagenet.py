"""ImageNet, paper Sec. 3.4: batch 256, SGD momentum 0.9, lr 0.1 divided by 10 when the error plateaus
(here at fixed epochs 30, 60 and 90), up to 60x10^4 iterations, weight decay 1e-4, scale augmentation
(shorter side in [256, 480], 224 crops, flips, PCA colour noise), per-channel mean subtraction.

Modern options: ``--config.train_preset=inception``, ``--config.version=v1.5``, ``--config.schedule=cosine``,
``--config.label_smoothing=0.1``, ``--config.lr_scaling=linear --config.warmup=linear
--config.warmup_steps=25000`` for large batches (Goyal et al. 2017).

    python train.py --config=resnet_jax/configs/imagenet.py:resnet50 --workdir=runs/r50 \
        --config.data_dir=/data/tfds
"""

import ml_collections

from resnet_jax import data
from resnet_jax.configs import default


def get_config(model: str = "resnet50") -> ml_collections.ConfigDict:
    c = default.get_config()
    c.model = model
    c.dataset = "imagenet2012"
    c.train_split = "train"
    c.eval_split = "validation"
    c.train_preset = "imagenet"
    c.eval_preset = "center"
    c.image_size = 224
    c.normalization = "mean_std"
    c.mean = data.IMAGENET_MEAN
    c.std = (1.0, 1.0, 1.0)  # the paper subtracts the mean only
    c.batch_size = 256
    c.num_train_steps = 600_000
    c.lr_boundaries = ()
    c.lr_boundaries_epochs = (30, 60, 90)
    c.log_every_steps = 500
    c.eval_every_steps = 10_000
    c.checkpoint_every_steps = 5_000
    c.eval_batch_size = 250
    return c
