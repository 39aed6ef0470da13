"""resnet_jax.pooling: the stem's max-pooling as the maximum of strided views on CPUs, against flax's."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import conv, models, pooling


def padded(x):
    return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)  # as the ImageNet stem pads


@pytest.mark.parametrize("shape,window,stride", [((2, 9, 9, 3), 3, 2), ((4, 16, 16, 8), 3, 2),
                                                 ((3, 15, 17, 5), 3, 2), ((2, 8, 8, 4), 2, 2), ((2, 7, 7, 2), 3, 1)])
def test_values_match_flax_bitwise_and_gradients_go_to_the_same_element(shape, window, stride):
    rng = np.random.default_rng(0)
    x = jnp.asarray(np.maximum(rng.normal(size=shape), 0).round(1), jnp.float32)  # ReLU's zeros: many ties

    def flax_pool(x):
        return nn.max_pool(padded(x), (window, window), (stride, stride))

    def ours(x):
        return pooling.tap_max_pool(padded(x), window, stride)

    y, back = jax.vjp(flax_pool, x)
    ours_y, ours_back = jax.vjp(ours, x)
    g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    assert ours_y.shape == y.shape and bool((ours_y == y).all())
    # the same element of each window takes the gradient; only the order of the sums may differ
    np.testing.assert_allclose(ours_back(g)[0], back(g)[0], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ours_back(g)[0] != 0, back(g)[0] != 0)


def test_a_bf16_gradient_is_the_fp32_gradient_rounded_once():
    """bf16: the up to four overlapping windows' gradients of an element (3x3 at stride 2) are summed in fp32 and
    rounded once, not rounded after each addition."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4, 16, 16, 8)), jnp.bfloat16)
    y, back = jax.vjp(lambda x: pooling.tap_max_pool(padded(x), 3, 2), x)
    g = jnp.asarray(rng.normal(size=y.shape) * np.exp(rng.normal(size=y.shape)), jnp.bfloat16)  # mixed magnitudes
    _, back32 = jax.vjp(lambda x: pooling.tap_max_pool(padded(x), 3, 2), x.astype(jnp.float32))
    (got,), (want,) = back(g), back32(g.astype(jnp.float32))
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)), np.asarray(want.astype(jnp.bfloat16)
                                                                                  .astype(jnp.float32)))


def test_the_stem_pools_by_views_on_cpus_and_with_flax_in_portable_programs():
    model = models.create_model("resnet18", num_classes=10)
    variables = models.abstract_variables(model, 32)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)

    def primitives():
        return str(jax.make_jaxpr(model.apply)(variables, x))

    assert "reduce_window_max" not in primitives() and "custom_vjp_call" in primitives()
    with conv.portable():  # exports: what every runtime has
        assert "reduce_window_max" in primitives()
