"""Pretrained networks in one line: a source is converted once into a cached checkpoint, then read from there.

    clf = resnet_jax.Classifier.from_pretrained("hf:microsoft/resnet-50")   # or a file, a folder, a workdir

The cache is ``$RESNET_JAX_CACHE`` (default ``~/.cache/resnet_jax``); each entry is an ordinary checkpoint
workdir named after the source and a digest of the weights file's path, size and modification time, so a changed
file is converted again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile

from resnet_jax import checkpoint, storage
from resnet_jax.cache import cache_dir
from resnet_jax.weights import files as files_lib
from resnet_jax.weights.importer import import_weights

log = logging.getLogger(__name__)


def _entry(found: files_lib.Files) -> str:
    stat = os.stat(found.weights)
    key = f"{os.path.realpath(found.weights)}|{stat.st_size}|{stat.st_mtime_ns}|{found.config}|{found.preprocessor}"
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", found.spec.removeprefix("hf:").rstrip("/"))[-60:].strip("_.")
    return f"{label or 'weights'}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def pretrained_workdir(source: str) -> str:
    """A checkpoint workdir for ``source``: itself for a training (or converted) workdir, else the cached
    conversion of ``hf:<repo>[@rev]``, a weights file or a saved model folder (converted on first use)."""
    checkpoints_here = storage.scheme(source) in (None, *storage.CHECKPOINT_SCHEMES)
    if checkpoints_here and storage.isdir(checkpoint.checkpoint_dir(source)):
        return source
    found = files_lib.locate(source)
    target = os.path.join(cache_dir(), _entry(found))
    if os.path.isdir(checkpoint.checkpoint_dir(target)):
        return target
    os.makedirs(cache_dir(), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".converting-", dir=cache_dir())
    try:
        meta = import_weights(source, staging)
        try:
            os.replace(staging, target)  # whole or not at all; a concurrent conversion may have won the race
        except OSError:
            if not os.path.isdir(checkpoint.checkpoint_dir(target)):
                raise
        log.info("converted %s (%s, %s layout) into %s", source, meta["model"], meta["source"]["layout"], target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
