"""Train a ResNet of the paper: ``python train.py --config=cifar10:cifar_resnet20 --workdir=runs/r20``.

A thin wrapper, for a checkout, over ``python -m resnet_jax.train`` (installed: ``resnet-jax-train``); its flags
are in resnet_jax/train.py.
"""

from resnet_jax.train import run

if __name__ == "__main__":
    run()
