"""Prepare a TFDS dataset for train.py and evaluate.py (imagenet2012 from the ILSVRC-2012 tar archives).

This goes through TFDS's Python API: ``tfds build`` needs apache_beam, which the pinned requirements leave out.

    python -m resnet_jax.prepare imagenet2012 --manual_dir=DIR [--data_dir=DIR]
    python -m resnet_jax.prepare cifar10 [--data_dir=DIR]          # downloads (needs internet)

imagenet2012 is built from ``ILSVRC2012_img_train.tar`` and ``ILSVRC2012_img_val.tar`` in ``--manual_dir``
(``ILSVRC2012_img_test.tar`` is optional); the archives are read as they are, nothing is extracted by hand.
Ends by printing the split sizes.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tarfile
from collections.abc import Sequence

IMAGENET_TARS = {"train": "ILSVRC2012_img_train.tar", "validation": "ILSVRC2012_img_val.tar"}
IMAGENET_TEST_TAR = "ILSVRC2012_img_test.tar"
MANUAL = ("imagenet2012",)
# Small datasets that train.py and evaluate.py prepare on first use, and the host TFDS downloads them from.
AUTOMATIC = {"cifar10": "www.cs.toronto.edu", "cifar100": "www.cs.toronto.edu"}


class PrepareError(ValueError):
    """Input that cannot be prepared, with the reason."""


def check_imagenet_archives(manual_dir: str) -> dict[str, str]:
    """The archives present in ``manual_dir``, or a PrepareError naming what is missing or wrong.

    TFDS labels the validation images by zipping the *sorted* member names of the val tar with its bundled list
    of 50,000 labels, so a partial val tar is labelled correctly only if it holds exactly
    ``ILSVRC2012_val_00000001.JPEG`` ... ``ILSVRC2012_val_<N>.JPEG``: anything else is refused here.
    """
    if not os.path.isdir(manual_dir):
        raise PrepareError(f"--manual_dir {manual_dir} is not a directory")
    found = {split: os.path.join(manual_dir, name) for split, name in IMAGENET_TARS.items()
             if os.path.isfile(os.path.join(manual_dir, name))}
    missing = [name for split, name in IMAGENET_TARS.items() if split not in found]
    if missing:
        raise PrepareError(f"{manual_dir} lacks {' and '.join(missing)} (download them from image-net.org after "
                           f"registering; they are read as they are)")
    if os.path.isfile(os.path.join(manual_dir, IMAGENET_TEST_TAR)):
        found["test"] = os.path.join(manual_dir, IMAGENET_TEST_TAR)
    for split, path in found.items():
        try:
            with tarfile.open(path) as tar:
                names = sorted(m.name for m in tar.getmembers() if m.isfile())
        except (tarfile.TarError, OSError) as e:
            raise PrepareError(f"{path} is not a readable tar archive: {e}") from e
        if not names:
            raise PrepareError(f"{path} is empty")
        if split == "validation":
            expected = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, len(names) + 1)]
            if names != expected:
                wrong = next(n for n, e in zip(names, expected) if n != e)
                raise PrepareError(f"{path}: validation images must be ILSVRC2012_val_00000001.JPEG ... "
                                   f"ILSVRC2012_val_{len(names):08d}.JPEG without gaps (TFDS labels them by "
                                   f"position); found {wrong!r}")
        if split == "train" and not all(re.fullmatch(r"n\d{8}\.tar", os.path.basename(n)) for n in names):
            raise PrepareError(f"{path}: the training archive must hold one <wnid>.tar per class")
    return found


def prepare(name: str, data_dir: str | None = None, manual_dir: str | None = None) -> dict[str, int]:
    """Build TFDS dataset ``name`` into ``data_dir``; returns {split: number of examples}."""
    import tensorflow_datasets as tfds

    if name in MANUAL:
        if not manual_dir:
            raise PrepareError(f"{name} is built from archives you download yourself: pass --manual_dir=DIR "
                               f"holding {' and '.join(IMAGENET_TARS.values())}")
        check_imagenet_archives(manual_dir)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:
        raise PrepareError(f"unknown TFDS dataset {name!r}: {e}") from e
    config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=name not in MANUAL)
    try:
        builder.download_and_prepare(download_config=config)
    except Exception as e:
        if name in MANUAL:
            raise PrepareError(f"preparing {name} from {manual_dir} failed: {type(e).__name__}: {e}") from e
        raise PrepareError(f"downloading {name} failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
                           f"This needs internet; offline, prepare it on a connected machine with this command "
                           f"and copy {builder.data_dir} over, or train on an image folder "
                           f"(--config.dataset=folder:/path/to/root)") from e
    return {split: info.num_examples for split, info in builder.info.splits.items()}


def unreachable(name: str, timeout: float = 5.0) -> str | None:
    """Why ``name``'s download host cannot be reached from here (None: it can), found in seconds rather than
    after TFDS's minutes of retries."""
    import socket

    try:
        socket.create_connection((AUTOMATIC[name], 443), timeout=timeout).close()
    except OSError as e:
        return f"{AUTOMATIC[name]} is unreachable: {e}"
    return None


def command(name: str) -> str:
    """The command that prepares ``name``, for error messages."""
    return (f"python -m resnet_jax.prepare {name} --manual_dir=DIR_WITH_ILSVRC2012_TARS --data_dir=DATA_DIR"
            if name in MANUAL else f"python -m resnet_jax.prepare {name} --data_dir=DATA_DIR")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("name", help="a TFDS dataset name: imagenet2012, cifar10, cifar100, ...")
    p.add_argument("--manual_dir", help="imagenet2012: the directory holding the ILSVRC2012 tar archives")
    p.add_argument("--data_dir", help="where TFDS writes the prepared dataset (TFDS's default: ~/tensorflow_datasets)")
    args = p.parse_args(argv)
    try:
        sizes = prepare(args.name, args.data_dir, args.manual_dir)
    except PrepareError as e:
        sys.exit(f"error: {e}")
    for split, n in sorted(sizes.items()):
        print(f"{args.name} {split}: {n:,} examples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
