"""Evaluate a saved run: ``python evaluate.py --workdir=runs/r20 [--crops=center|10|multiscale|all]``.

A thin wrapper, for a checkout, over ``python -m resnet_jax.evaluate`` (installed: ``resnet-jax-evaluate``); its
flags are in resnet_jax/evaluate.py.
"""

from resnet_jax.evaluate import classify, main, parse, run, write_features  # noqa: F401

if __name__ == "__main__":
    run()
