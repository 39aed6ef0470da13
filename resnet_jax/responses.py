"""Layer responses (Sec. 4.2, "Analysis of Layer Responses", Figure 7): the output of every 3x3 convolution after
its batch normalisation, before the ReLU or the shortcut addition.

The networks sow these outputs into the ``responses`` collection (``models.RESPONSES``); a normal ``apply`` does
not keep them and costs nothing extra. ``layer_responses`` returns them for a batch, in the layers' order;
``response_std`` streams a whole split and gives each layer's standard deviation.

How the standard deviation is taken: per channel, over every image and position of the split, then averaged
over the layer's channels (``std``). A channel is one unit of the layer and batch normalisation scales each
channel on its own, so this measures how far each unit's response moves, without counting the channels' different
offsets (BN's beta) as spread. The standard deviation over all positions and channels pooled (``std_pooled``) is
kept beside it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from resnet_jax import data, models


def _order(name: str) -> tuple[int, ...]:
    """Input-to-output order of a response's name: the stem, then stageI/blockJ/convK."""
    return tuple(int(n) for n in re.findall(r"\d+", name)) if name.startswith("stage") else (0,)


def layer_responses(model: models.ResNet, variables: Any, images: jax.Array) -> dict[str, jax.Array]:
    """Every 3x3 layer's response to a (normalised) batch, in evaluation mode, input to output:
    ``{"conv1": ..., "stage1/block0/conv1": ..., ...}``, each named by its convolution (the stem's ``conv1`` only
    where it is a 3x3 layer, as in the CIFAR nets). Scanned stages (``scan=True``) are unstacked into their
    blocks."""
    _, state = model.apply(variables, images, train=False, mutable=[models.RESPONSES])
    out = {}
    for path, (value,) in traverse_util.flatten_dict(state[models.RESPONSES]).items():
        path = (*path[:-1], path[-1].removesuffix("_response"))
        if "blocks" in path:  # nn.scan's stacked blocks 1..N-1
            i = path.index("blocks")
            for j in range(value.shape[0]):
                out["/".join((*path[:i], f"block{j + 1}", *path[i + 1:]))] = value[j]
        else:
            out["/".join(path)] = value
    return dict(sorted(out.items(), key=lambda kv: _order(kv[0])))


def _batch_moments(model: models.ResNet, mean: Any, std: Any):
    """A jitted ``(variables, images, mask) -> {layer: (count, per-channel mean, per-channel M2)}`` over the
    batch's real examples."""

    @jax.jit
    def moments(variables, images, mask):
        out = {}
        for name, y in layer_responses(model, variables, data.normalize(images, mean, std)).items():
            y = y.astype(jnp.float32)
            w = mask.astype(jnp.float32)[:, None, None, None]
            n = jnp.sum(mask) * y.shape[1] * y.shape[2]
            mu = jnp.sum(y * w, axis=(0, 1, 2)) / jnp.maximum(n, 1)
            out[name] = (n, mu, jnp.sum(w * jnp.square(y - mu), axis=(0, 1, 2)))
        return out

    return moments


def response_std(model: models.ResNet, variables: Any, batches: Iterable[dict[str, np.ndarray]], mean: Any,
                 std: Any, progress: Any = None) -> dict[str, dict[str, float]]:
    """Each 3x3 layer's response statistics over every example of ``batches`` (``data.eval_batches``: padded
    examples masked out): ``{layer: {"std": mean over channels of the per-channel standard deviation,
    "std_pooled": over all positions and channels, "channels": C}}``, input to output. Moments are merged batch
    by batch in float64 (Chan et al.'s pairwise update), so no second pass over the split is needed."""
    moments = _batch_moments(model, mean, std)
    total: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        for name, (n_b, mu_b, m2_b) in jax.device_get(moments(variables, batch["image"], batch["mask"])).items():
            n_b, mu_b, m2_b = float(n_b), mu_b.astype(np.float64), m2_b.astype(np.float64)
            if name not in total:
                total[name] = [n_b, mu_b, m2_b]
                continue
            n_a, mu_a, m2_a = total[name]
            n = n_a + n_b
            if n_b:
                delta = mu_b - mu_a
                total[name] = [n, mu_a + delta * n_b / n, m2_a + m2_b + delta ** 2 * n_a * n_b / n]
        if progress is not None:
            progress.update(int(np.sum(batch["mask"])))
    out = {}
    for name, (n, mu, m2) in total.items():
        pooled_m2 = np.sum(m2) + n * np.sum((mu - mu.mean()) ** 2)
        out[name] = {"std": float(np.mean(np.sqrt(m2 / n))), "std_pooled": float(np.sqrt(pooled_m2 / (n * mu.size))),
                     "channels": int(mu.size)}
    return out
