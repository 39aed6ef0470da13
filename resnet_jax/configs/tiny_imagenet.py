"""Tiny ImageNet (200 ILSVRC classes, 64x64 photographs): the paper's ImageNet recipe (Sec. 3.4) scaled from
224 to 64 pixels. Every length of the recipe is multiplied by 64/224:

- training: scale augmentation with the shorter side drawn from [73, 137] (the paper's [256, 480]), a random
  64x64 crop (224), horizontal flips and the AlexNet PCA colour noise;
- evaluation: the shorter side resized to 73 (256) and the central 64x64 crop (224), as the paper's
  single-crop validation figures;
- the network is the paper's unchanged (7x7/2 stem, max-pool, four stages), so stage 4 runs on 2x2 maps;
- batch 256, SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at epochs 20 and 30 of 40 (the paper's
  30/60/90 of 120 compressed by 3: Tiny ImageNet has 200-500 images per class against ImageNet's ~1,300, and
  its validation error stops improving far sooner); mean subtraction without scaling, as the paper.

The folder needs splits ``train`` and ``val`` (``<root>/<split>/<wnid>/<image>``). Tiny ImageNet has no labelled
test split, so ``val`` both picks the best checkpoint and gives the reported numbers, as is usual for it.
The 40 epochs are 6,250 steps on a 40,000-image copy (200 per class); for the full 100,000-image training set
pass ``--config.num_train_steps=15625``.

    python train.py --config=resnet_jax/configs/tiny_imagenet.py:resnet18 --workdir=runs/tin_r18 \
        --config.dataset=folder:/data/tiny-imagenet-200
"""

import ml_collections

from resnet_jax import data
from resnet_jax.configs import default

EPOCHS = 40


def get_config(model: str = "resnet18") -> ml_collections.ConfigDict:
    c = default.get_config()
    c.model = model
    c.dataset = "folder:tiny-imagenet-200"
    c.train_split = "train"
    c.eval_split = "val"
    c.train_preset = "imagenet"
    c.eval_preset = "center"
    c.image_size = 64
    c.normalization = "mean_std"
    c.mean = data.IMAGENET_MEAN
    c.std = (1.0, 1.0, 1.0)  # the paper subtracts the mean only
    c.batch_size = 256
    c.num_train_steps = EPOCHS * 40_000 // 256
    c.lr_boundaries = ()
    c.lr_boundaries_epochs = (20, 30)
    c.log_every_steps = 50
    c.eval_every_steps = 625
    c.checkpoint_every_steps = 625
    c.eval_batch_size = 500
    return c
