"""Batch normalization (Sec. 3.4: "right after each convolution and before activation"), with the ReLU and the
shortcut's addition that follow it in a block.

``BatchNorm`` keeps ``flax.linen.BatchNorm``'s variables (``params``: ``scale``, ``bias``; ``batch_stats``:
``mean``, ``var``), statistics (float32, the biased variance as E[x²] - E[x]², averaged over ``axis_name`` when
given) and running averages, so checkpoints and imported weights are the same. Its call takes what follows it in a
block, ``relu(bn(x) + residual)``, because on CPUs that whole expression is one hand-differentiated function,
``normalize``: XLA:CPU's own gradient of flax's batch norm keeps the centred input and the pre-activation for the
backward pass and re-reads them in separate loops; ``normalize`` reads the input twice forward (the statistics, then
the output) and twice backward (two sums, then the input's gradient), taking the ReLU's mask from the output the
next layer keeps anyway (docs/performance.md). Elsewhere (GPUs, TPUs) and in exports (``conv.portable``) the same
expression is plain JAX, differentiated by JAX, as flax's.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from resnet_jax import conv

Array = jax.Array


def statistics(x: Array, axis_name: str | None = None) -> tuple[Array, Array]:
    """The per-channel mean and biased variance of an NHWC batch in float32, as flax computes them."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    axes = tuple(range(x.ndim - 1))
    mean, mean2 = jnp.mean(x, axes), jnp.mean(x * x, axes)
    if axis_name is not None:
        mean, mean2 = lax.pmean(jnp.stack([mean, mean2]), axis_name)
    return mean, jnp.maximum(0.0, mean2 - mean * mean)


def _affine(x: Array, mean: Array, var: Array, scale: Array, bias: Array, epsilon: float) -> Array:
    """flax's normalisation, in float32: (x - mean) * (rsqrt(var + eps) * scale) + bias."""
    return (x.astype(mean.dtype) - mean) * (lax.rsqrt(var + epsilon) * scale) + bias


def _finish(y: Array, residual: Array | None, relu: bool, dtype: Any) -> Array:
    y = jnp.asarray(y, dtype)
    if residual is not None:
        y = y + residual
    return nn.relu(y) if relu else y


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def normalize(x: Array, scale: Array, bias: Array, residual: Array | None, epsilon: float,
              axis_name: str | None, relu: bool) -> tuple[Array, Array, Array]:
    """``(relu(bn(x) + residual), mean, var)`` with batch statistics, as ``BatchNorm`` in training computes it, and
    a gradient written out: two passes over the input forward and two backward (module docstring). The statistics
    are for the running averages and carry no gradient."""
    return _normalize_forward(x, scale, bias, residual, epsilon, axis_name, relu)[0]


def _normalize_forward(x, scale, bias, residual, epsilon, axis_name, relu):
    mean, var = statistics(x, axis_name)
    y = _finish(_affine(x, mean, var, scale, bias, epsilon), residual, relu, x.dtype)
    added = None if residual is None else jnp.zeros((), residual.dtype)  # whether (and as what) to return its gradient
    return (y, mean, var), (x, y if relu else None, mean, lax.rsqrt(var + epsilon), scale, added)


def _normalize_backward(epsilon, axis_name, relu, saved, cotangents):
    x, y, mean, rstd, scale, added = saved
    g = cotangents[0]
    if relu:  # y > 0 exactly where the ReLU's input was
        g = jnp.where(y > 0, g, jnp.zeros_like(g))
    gf = g.astype(mean.dtype)
    xhat = (x.astype(mean.dtype) - mean) * rstd
    axes = tuple(range(x.ndim - 1))
    dbias, dscale = jnp.sum(gf, axes), jnp.sum(gf * xhat, axes)  # this device's: its copy of the parameters
    count = math.prod(x.shape[:-1])
    total_bias, total_scale = dbias, dscale
    if axis_name is not None:  # the statistics are global, so the input's gradient takes every device's sums
        total_bias, total_scale = lax.psum(jnp.stack([dbias, dscale]), axis_name)
        count = count * lax.psum(1, axis_name)
    dx = (scale * rstd) * (gf - (total_bias + xhat * total_scale) / count)
    dresidual = None if added is None else g.astype(added.dtype)
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype), dresidual


normalize.defvjp(_normalize_forward, _normalize_backward)


class BatchNorm(nn.Module):
    """``flax.linen.BatchNorm`` over the channels of NHWC inputs, with ``relu(bn(x) + residual)`` in one call."""

    use_running_average: bool = False
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    axis_name: str | None = None
    scale_init: Any = nn.initializers.ones
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Array, residual: Array | None = None, relu: bool = False) -> Array:
        features = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
        scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
        bias = self.param("bias", self.bias_init, (features,), self.param_dtype)
        dtype = self.dtype or jnp.result_type(x, scale, bias)
        if self.use_running_average:
            return _finish(_affine(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon), residual, relu,
                           dtype)
        axis_name = None if self.is_initializing() else self.axis_name
        if conv.cpu_forms():
            y, mean, var = normalize(jnp.asarray(x, dtype), scale, bias, residual, self.epsilon, axis_name, relu)
        else:
            mean, var = statistics(x, axis_name)
            y = _finish(_affine(x, mean, var, scale, bias, self.epsilon), residual, relu, dtype)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y
