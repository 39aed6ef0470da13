"""Evaluation: top-1/top-5 error over views (center, 10-crop, multi-scale), sharded over all devices.

Scores are softmax probabilities averaged over an example's views (Sec. 3.4: "standard 10-crop testing";
multi-scale: fully-convolutional scores averaged over scales), as in the paper.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import data


def predict_probs(model: Any, variables: Any, images: jax.Array, mean: Any, std: Any) -> jax.Array:
    """uint8 images (N, H, W, 3), or views (N, V, H, W, 3) -> class probabilities (N, classes), averaged
    over the views."""
    views = images.reshape((-1, *images.shape[-3:]))
    logits = model.apply(variables, data.normalize(views, mean, std), train=False)
    probs = jax.nn.softmax(logits.astype(jnp.float32))
    return probs.reshape((*images.shape[:-3], -1)).mean(axis=tuple(range(1, images.ndim - 3)))


def topk_counts(probs: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Masked sums: examples, top-1 and top-5 correct, and the cross-entropy of the averaged scores."""
    top5 = jax.lax.top_k(probs, min(5, probs.shape[-1]))[1]
    hit = top5 == labels[:, None]
    nll = -jnp.log(jnp.take_along_axis(probs, jnp.maximum(labels, 0)[:, None], axis=-1)[:, 0] + 1e-12)
    m = mask.astype(jnp.float32)
    return {"count": m.sum(), "top1": (hit[:, 0] * m).sum(), "top5": (hit.any(axis=1) * m).sum(),
            "loss": (nll * m).sum()}


def make_eval_step(model: Any, mean: Any, std: Any):
    """A jitted ``(variables, batch) -> counts``; the batch may be sharded over any mesh."""

    @jax.jit
    def step(variables, batch):
        probs = predict_probs(model, variables, batch["image"], mean, std)
        return topk_counts(probs, batch["label"], batch["mask"])

    return step


def summarize(counts: dict[str, float]) -> dict[str, float]:
    """Counts -> percentages (as the paper reports them) and the mean loss."""
    n = counts["count"]
    top1, top5 = 100.0 * counts["top1"] / n, 100.0 * counts["top5"] / n
    return {"top1_error": 100.0 - top1, "top5_error": 100.0 - top5, "top1_accuracy": top1, "top5_accuracy": top5,
            "loss": counts["loss"] / n, "num_examples": round(n)}


def evaluate(step_fn, variables: Any, batches: Iterable[dict[str, np.ndarray]], mesh: Any,
             progress: Any = None) -> dict[str, float]:
    """Run ``step_fn`` over host batches (sharded onto ``mesh``), summing counts on device."""
    total = None
    for batch in batches:
        counts = step_fn(variables, data.to_global(batch, mesh))
        total = counts if total is None else jax.tree.map(jnp.add, total, counts)
        if progress is not None:
            progress.update(int(batch["mask"].sum()))
    if total is None:
        raise ValueError("evaluation got no batches")
    return summarize({k: float(v) for k, v in jax.device_get(total).items()})
