"""CIFAR-10, paper Sec. 4.2: batch 128, SGD momentum 0.9, lr 0.1 divided by 10 at 32k and 48k iterations,
64k iterations, weight decay 1e-4, per-pixel mean subtraction, 4-pixel padding + 32x32 crops + flips, and a
45k/5k train/val split. For cifar_resnet110, lr 0.01 warms up the first 400 iterations.

    python train.py --config=resnet_jax/configs/cifar10.py:cifar_resnet56 --workdir=runs/r56
"""

import ml_collections

from resnet_jax.configs import default


def get_config(model: str = "cifar_resnet20", dataset: str = "cifar10") -> ml_collections.ConfigDict:
    c = default.get_config()
    c.model = model
    c.dataset = dataset
    c.train_split = "train[:45000]"
    c.eval_split = "train[45000:]"
    if model.endswith("110") or model.endswith("1202"):
        c.warmup_steps = 400
    return c
