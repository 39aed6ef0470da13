"""Training configs (ml_collections), selected as ``--config=<name>:<model>`` (packaged: cifar10, cifar100,
imagenet, tiny_imagenet) or ``--config=<file>.py:<model>``."""

from __future__ import annotations

import os
from collections.abc import Sequence

PACKAGED = ("cifar10", "cifar100", "imagenet", "tiny_imagenet")


def resolve(spec: str) -> str:
    """``cifar10:cifar_resnet20`` -> ``<this package>/cifar10.py:cifar_resnet20``; a file path (``*.py``) passes
    through. A packaged name is always the packaged config: a folder or file called ``cifar10`` (a data set, say)
    beside the command never shadows it."""
    name, sep, rest = spec.partition(":")
    if name not in PACKAGED:
        return spec
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py") + sep + rest


def resolve_flag(argv: Sequence[str]) -> list[str]:
    """A command line with its ``--config`` value resolved (``--config=X`` or ``--config X``)."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + resolve(arg[len("--config="):])
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = resolve(out[i + 1])
    return out
