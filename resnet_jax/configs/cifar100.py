"""CIFAR-100 with the paper's CIFAR-10 recipe (Sec. 4.2)."""

import ml_collections

from resnet_jax.configs import cifar10


def get_config(model: str = "cifar_resnet20") -> ml_collections.ConfigDict:
    c = cifar10.get_config(model, "cifar100")
    return c
