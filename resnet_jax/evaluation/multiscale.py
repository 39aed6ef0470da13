"""Fully-convolutional multi-scale testing (Sec. 3.4): the whole image at several scales and flipped, the softmax
scores averaged over all of them."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import data
from resnet_jax.evaluation.scoring import Scores, summarize, topk_counts


def multiscale_views(encoded: bytes, sizes=data.MULTISCALE_SIZES, multiple: int = 32) -> list[np.ndarray]:
    """The whole image at each scale (shorter side = size; the longer side rounded to a multiple of
    ``multiple`` so that a few compiled shapes serve a whole dataset), each with its horizontal flip:
    a list of (2, H, W, 3) uint8 arrays (Sec. 3.4, fully-convolutional multi-scale testing)."""
    tf = data.backend.tensorflow()
    image = data.backend.decode(tf, tf.constant(encoded), accurate=True)
    h, w = int(image.shape[0]), int(image.shape[1])
    views = []
    for size in sizes:
        scale = size / min(h, w)
        nh = size if h <= w else max(size, int(h * scale / multiple + 0.5) * multiple)
        nw = size if w < h else max(size, int(w * scale / multiple + 0.5) * multiple)
        resized = data.backend.resize(tf, image, [nh, nw]).numpy()
        views.append(np.stack([resized, resized[:, ::-1]]))
    return views


def evaluate_multiscale(scores: Scores, variables: Any, source: data.Source, sizes=data.MULTISCALE_SIZES,
                        limit: int | None = None, progress: Any = None) -> dict:
    """Softmax scores averaged over scales and flips, one image at a time (shapes vary) on this process's
    first device; with several processes each takes every P-th example and the counts are summed over all.
    ``scores`` normalises per channel (a per-pixel mean has no meaning at other sizes)."""
    probs_fn = jax.jit(lambda v, x: scores(v, x[None])[0])
    counts = {"count": 0.0, "top1": 0.0, "top5": 0.0, "loss": 0.0}
    ds = source.epoch(0, 0, shuffle=False)
    if limit:
        ds = ds.take(limit)
    ds = ds.shard(jax.process_count(), jax.process_index())
    for encoded, label in ds.as_numpy_iterator():
        probs = np.mean([np.asarray(probs_fn(variables, v)) for v in multiscale_views(encoded, sizes)], axis=0)
        got = topk_counts(jnp.asarray(probs)[None], jnp.asarray([label]), jnp.ones(1, bool))
        counts = {k: counts[k] + float(got[k]) for k in counts}
        if progress is not None:
            progress.update(1)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        gathered = multihost_utils.process_allgather(np.array([counts[k] for k in counts], np.float64))
        counts = dict(zip(counts, np.asarray(gathered).reshape(-1, len(counts)).sum(axis=0).tolist()))
    return summarize(counts)
