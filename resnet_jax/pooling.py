"""How the ImageNet stem's 3x3/2 max-pooling is computed (Table 1): on CPUs, as the maximum of its strided views.

XLA:CPU differentiates ``reduce_window``'s maximum through a second pooling that also returns each window's argmax,
index arrays built with ``iota`` and a ``scatter``: the largest cost of resnet18's step at 64 px outside the
convolutions (docs/performance.md). Written as the elementwise maximum of the window's shifted, strided views of
the input (those of ``resnet_jax.conv``'s im2col), the forward pass is one fused loop, and the gradient, routed
as ``reduce_window``'s is to the first maximum of each window in row-major order, is one masked copy of the output
gradient per tap, each padded back into place and summed. Elsewhere (GPUs, TPUs) and in portable programs
(``conv.portable``: exports) it is ``flax.linen.max_pool``.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from resnet_jax import conv

UNPADDED = ((0, 0), (0, 0))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def tap_max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
    """Max-pooling of an NHWC input without padding ('VALID'), as the maximum of its window's strided views."""
    return functools.reduce(jnp.maximum, conv.shifted_views(x, window, window, stride, UNPADDED))


def _forward(x, window, stride):
    y = tap_max_pool(x, window, stride)
    return y, (x, y)


def _backward(window, stride, residuals, g):
    x, y = residuals
    _, h, w, _ = x.shape
    _, ho, wo, _ = y.shape
    total = jnp.promote_types(g.dtype, jnp.float32)  # a bf16 gradient's overlapping windows summed in fp32
    g = g.astype(total)
    taken = jnp.zeros(y.shape, bool)
    dx = jnp.zeros(x.shape, total)
    views = conv.shifted_views(x, window, window, stride, UNPADDED)
    for tap, view in enumerate(views):  # row-major taps: the first maximum of a window takes its gradient
        hit = (view == y) & ~taken
        taken = taken | hit
        i, j = divmod(tap, window)
        spread = ((0, 0, 0), (i, h - i - stride * (ho - 1) - 1, stride - 1),
                  (j, w - j - stride * (wo - 1) - 1, stride - 1), (0, 0, 0))
        dx = dx + lax.pad(jnp.where(hit, g, jnp.zeros_like(g)), jnp.zeros((), total), spread)
    return (dx.astype(x.dtype),)  # rounded once


tap_max_pool.defvjp(_forward, _backward)


def max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
    """``flax.linen.max_pool(x, (window, window), (stride, stride))`` ('VALID'), computed per device kind."""
    if conv.cpu_forms():
        return tap_max_pool(x, window, stride)
    return nn.max_pool(x, window_shape=(window, window), strides=(stride, stride))
