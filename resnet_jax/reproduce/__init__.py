"""Reproduce the paper's experiments with the normal training code, one module per study:

    python -m resnet_jax.reproduce degradation --dataset=folder:/path/to/cifar10 --steps=1500 \
        --workdir=runs/degradation [--models=cifar_plain20,cifar_plain56,cifar_resnet20,cifar_resnet56]
    python -m resnet_jax.reproduce imagenet --dataset=folder:/path/to/tiny-imagenet-200 --classes=100 \
        --steps=1000 --batch_size=64 --workdir=runs/imagenet [--models=plain18,plain34,resnet18,resnet34] [--seeds=2]
    python -m resnet_jax.reproduce shortcuts --dataset=folder:/path/to/tiny-imagenet-200 --classes=100 \
        --steps=1000 --batch_size=64 --workdir=runs/shortcuts [--imagenet_workdir=runs/imagenet]
    python -m resnet_jax.reproduce responses --dataset=folder:/path/to/cifar10 --steps=1500 \
        --workdir=runs/degradation

``degradation`` (Figure 6), ``imagenet`` (Figure 4, Table 2), ``shortcuts`` (Table 3) and ``responses``
(Figure 7) each train their models in ``<workdir>/<model>``, checkpointed and resumable: rerunning skips finished
models (and their evaluation) and resumes an interrupted one. ``runner`` holds what they share.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from resnet_jax.reproduce import degradation, imagenet, responses, shortcuts
from resnet_jax.reproduce.degradation import degradation_config
from resnet_jax.reproduce.imagenet import claims_text, class_subset, imagenet_config
from resnet_jax.reproduce.runner import mean_std, percent

STUDIES = {
    "degradation": (degradation, "plain vs residual nets of 20 and 56 layers on CIFAR-10 (Figure 6)"),
    "imagenet": (imagenet, "plain vs residual nets of 18 and 34 layers on Tiny ImageNet (Figure 4, Table 2)"),
    "shortcuts": (shortcuts, "ResNet-34 with shortcut options A, B and C, and plain-34, on Tiny ImageNet (Table 3)"),
    "responses": (responses, "the standard deviation of each 3x3 layer's response on CIFAR-10 (Figure 7)"),
}

__all__ = [
    "STUDIES",
    "claims_text",
    "class_subset",
    "degradation_config",
    "imagenet_config",
    "main",
    "mean_std",
    "percent",
]


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="study", required=True)
    for name, (module, help_text) in STUDIES.items():
        module.add_arguments(sub.add_parser(name, help=help_text, description=module.__doc__))
    args = p.parse_args(argv)
    from resnet_jax import checkpoint, data, storage, training

    try:
        args.workdir = storage.for_checkpoints(args.workdir)
        STUDIES[args.study][0].run(args)
    except training.Preempted as e:  # the model in training saved its step: rerun the same command to go on
        print(e, flush=True)
        sys.exit(e.exit_code)
    except (training.ConfigError, data.DataError, checkpoint.CheckpointError,
            storage.StorageError) as e:  # one line, no traceback
        sys.exit(f"error: {e}")
