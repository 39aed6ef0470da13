"""resnet_jax.batch_norm: relu(bn(x) + residual) with a written-out gradient on CPUs, against flax's BatchNorm."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from resnet_jax import batch_norm, conv, models


def flax_reference(relu, dtype, **kw):
    """flax.linen.BatchNorm, then the addition and the ReLU, as models.py computed them before."""
    kw.setdefault("use_running_average", False)

    class Reference(nn.Module):
        @nn.compact
        def __call__(self, x, residual):
            y = nn.BatchNorm(momentum=0.9, epsilon=1e-5, dtype=dtype, **kw)(x)
            if residual is not None:
                y = y + residual
            return nn.relu(y) if relu else y

    return Reference()


def ours(relu, dtype, **kw):
    class Ours(nn.Module):
        @nn.compact
        def __call__(self, x, residual):
            return batch_norm.BatchNorm(momentum=0.9, epsilon=1e-5, dtype=dtype, **kw)(x, residual, relu=relu)

    return Ours()


def gradients(module, variables, x, residual, g):
    """Output, updated statistics and the gradients of <output, g> by input, parameters and residual."""

    def loss(x, params, residual):
        y, updates = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, residual,
                                  mutable=["batch_stats"])
        return jnp.sum(y.astype(jnp.float32) * g), (y, updates["batch_stats"])

    (_, (y, stats)), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(x, variables["params"],
                                                                                         residual)
    return y, stats, grads


def data(shape, dtype, with_residual):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(1.5, 2.0, size=shape), dtype)  # a mean away from zero, as after a convolution
    residual = jnp.asarray(rng.normal(size=shape), dtype) if with_residual else None
    g = jnp.asarray(rng.normal(size=shape), jnp.float32)
    return x, residual, g


@pytest.mark.parametrize("relu,with_residual", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_matches_flax_values_statistics_and_gradients(relu, with_residual, dtype):
    x, residual, g = data((4, 6, 5, 8), dtype, with_residual)
    reference = flax_reference(relu, dtype)
    variables = reference.init(jax.random.key(0), x, residual)
    variables = {"params": {"BatchNorm_0": {"scale": jnp.linspace(0.5, 2.0, 8), "bias": jnp.linspace(-1, 1, 8)}},
                 "batch_stats": variables["batch_stats"]}
    want_y, want_stats, want_grads = gradients(reference, variables, x, residual, g)
    # the same variables, by name and shape: checkpoints and imported weights load as before
    assert (jax.tree.map(jnp.shape, ours(relu, dtype).init(jax.random.key(0), x, residual))
            == jax.tree.map(jnp.shape, variables))
    assert conv.cpu_forms()  # on CPUs, outside exports: the written-out gradient
    y, stats, grads = gradients(ours(relu, dtype), variables, x, residual, g)
    assert y.dtype == want_y.dtype
    # the forward computation is flax's, operation for operation: the same bits
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(want_y, np.float32))
    jax.tree.map(np.testing.assert_array_equal, stats, want_stats)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
        assert got.dtype == want.dtype
        got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())
    if relu and with_residual:  # the ReLU's mask: no gradient reaches the residual where the output is zero
        zero = np.asarray(y, np.float32) == 0
        assert zero.any() and not np.asarray(grads[2], np.float32)[zero].any()


def test_running_averages_and_frozen_parts_normalise_as_flax():
    x, residual, _ = data((2, 3, 3, 4), jnp.float32, True)
    stats = {"mean": jnp.linspace(-1, 1, 4), "var": jnp.linspace(0.5, 3, 4)}
    params = {"scale": jnp.linspace(0.5, 2.0, 4), "bias": jnp.linspace(-1, 1, 4)}
    variables = {"params": {"BatchNorm_0": params}, "batch_stats": {"BatchNorm_0": stats}}
    want = flax_reference(True, jnp.float32, use_running_average=True).apply(variables, x, residual)
    got = ours(True, jnp.float32, use_running_average=True).apply(variables, x, residual)
    np.testing.assert_array_equal(got, want)


def test_statistics_over_devices_as_one_batch():
    """With ``axis_name`` inside ``shard_map`` (train.py's step, parameters cast to device-varying), every device
    normalises with the whole batch's statistics, and the input's gradient is that of one normalisation of the
    whole batch; each device's parameter gradient is its own share."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("d",))
    x, residual, g = data((8, 3, 3, 6), jnp.float32, True)
    params = {"scale": jnp.linspace(0.5, 2.0, 6), "bias": jnp.linspace(-1, 1, 6)}
    stats = {"mean": jnp.zeros(6), "var": jnp.ones(6)}

    def per_device(module, x, residual, g):
        def loss(x, params, residual):
            y, updates = module.apply({"params": {"BatchNorm_0": params}, "batch_stats": {"BatchNorm_0": stats}},
                                      x, residual, mutable=["batch_stats"])
            return jnp.sum(y * g), (y, updates["batch_stats"]["BatchNorm_0"])

        local = jax.lax.pcast(params, "d", to="varying")
        (_, (y, new)), (dx, dparams, dres) = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(x, local, residual)
        return y, new, dx, jax.lax.psum(dparams, "d"), dres

    def sharded(module):
        return jax.jit(jax.shard_map(functools.partial(per_device, module), mesh=mesh, in_specs=P("d"),
                                     out_specs=(P("d"), P(), P("d"), P(), P("d"))))(x, residual, g)

    got = sharded(ours(True, jnp.float32, axis_name="d"))
    want = sharded(flax_reference(True, jnp.float32, axis_name="d"))
    whole = gradients(ours(True, jnp.float32), {"params": {"BatchNorm_0": params},
                                                 "batch_stats": {"BatchNorm_0": stats}}, x, residual, g)
    np.testing.assert_array_equal(got[0], want[0])
    jax.tree.map(np.testing.assert_array_equal, got[1], want[1])
    for a, b, c in zip(jax.tree.leaves(got[2:]), jax.tree.leaves(want[2:]), jax.tree.leaves(whole[2]), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())
        np.testing.assert_allclose(a, c, rtol=0, atol=1e-5 * np.abs(c).max())


def test_models_use_it_in_training_on_cpus_and_plain_jax_in_portable_programs():
    model = models.create_model("cifar_resnet20", num_classes=10)
    variables = models.abstract_variables(model, 32)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)

    def primitives():
        return str(jax.make_jaxpr(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x))

    assert primitives().count("name=normalize") == 19  # every batch norm of ResNet-20
    with conv.portable():
        assert "name=normalize" not in primitives()
    # the responses of Figure 7 are BN's outputs before the addition and the ReLU, also on CPUs
    concrete = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    _, collected = model.apply(concrete, images, train=True, mutable=["batch_stats", models.RESPONSES])
    responses = jax.tree.leaves(collected[models.RESPONSES])
    assert len(responses) == 19 and any(float(r.min()) < 0 for r in responses)
