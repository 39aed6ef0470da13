"""Scoring and counting: class probabilities of a network (softmax averaged over an example's views, Sec. 3.4),
top-1/top-5 counts and the jitted evaluation step over batches sharded on any mesh."""

from __future__ import annotations

from collections.abc import Callable, Iterable
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


def features(model: Any, variables: Any, images: jax.Array, mean: Any, std: Any) -> dict[str, jax.Array]:
    """uint8 images (N, H, W, 3) -> the model's features: stem, stage1..N, pre_logits, logits."""
    _, out = model.apply(variables, data.normalize(images, mean, std), train=False, features=True)
    return out


def extract_features(model: Any, variables: Any, batches: Iterable[dict[str, np.ndarray]], mean: Any, std: Any,
                     progress: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Pre-logits embeddings and labels of every real example of host batches (padding dropped), in order."""
    fn = jax.jit(lambda v, x: features(model, v, x, mean, std)["pre_logits"])
    embeddings, labels = [], []
    for batch in batches:
        keep = np.asarray(batch["mask"], bool)
        embeddings.append(np.asarray(fn(variables, batch["image"]))[keep])
        labels.append(np.asarray(batch["label"])[keep])
        if progress is not None:
            progress.update(int(keep.sum()))
    return np.concatenate(embeddings), np.concatenate(labels)


def topk_counts(probs: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Masked sums: examples, top-1 and top-5 correct, and the cross-entropy of the averaged scores."""
    top5 = jax.lax.top_k(probs, min(5, probs.shape[-1]))[1]
    hit = top5 == labels[:, None]
    nll = -jnp.log(jnp.take_along_axis(probs, jnp.maximum(labels, 0)[:, None], axis=-1)[:, 0] + 1e-12)
    m = mask.astype(jnp.float32)
    return {"count": m.sum(), "top1": (hit[:, 0] * m).sum(), "top5": (hit.any(axis=1) * m).sum(),
            "loss": (nll * m).sum()}


Scores = Callable[[Any, jax.Array], jax.Array]  # (variables, uint8 images or views) -> class probabilities


def model_scores(model: Any, mean: Any, std: Any) -> Scores:
    """``predict_probs`` of one network with its normalisation, as a function of its variables and images."""
    return lambda variables, images: predict_probs(model, variables, images, mean, std)


def make_eval_step(scores: Scores):
    """A jitted ``(variables, batch) -> counts``; the batch may be sharded over any mesh."""

    @jax.jit
    def step(variables, batch):
        return topk_counts(scores(variables, batch["image"]), batch["label"], batch["mask"])

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
