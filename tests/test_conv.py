"""Convolution implementations (resnet_jax.conv): every convolution of the registry's networks, forward and both
gradients, against XLA's; the models and a sharded training run with either implementation."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import conv, data, models, training
from resnet_jax.configs import cifar10


def registry_convolutions() -> list:
    """(input shape, kernel shape, stride, padding) of every distinct convolution of every registered network,
    read from the traced program (batch 2; ImageNet networks at 64 px, where stage 4 runs on 2x2 maps)."""
    found = set()
    for name in models.list_models():
        if name.endswith("1202"):
            continue  # cifar_resnet110's shapes, more of them
        model = models.create_model(name, conv_impl="xla")
        size = 32 if name.startswith("cifar") else 64
        x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
        found.update(conv.traced_convolutions(lambda x, model=model: model.init(jax.random.key(0), x), x))  # one trace
    return sorted(found)


CONVS = registry_convolutions()
ONEDNN = conv.onednn.unavailable() is None  # oneDNN's passes are tested wherever they can be built (CI included)


def test_the_registry_uses_strided_1x1_3x3_and_7x7_convolutions():
    kinds = {(k[0], s) for _, k, s, _ in CONVS}
    assert {(1, 1), (1, 2), (3, 1), (3, 2), (7, 2)} <= kinds
    assert any(shape[1] < k[0] for shape, k, _, _ in CONVS)  # a 3x3 convolution on a 2x2 map


@pytest.mark.parametrize("shape,kernel,stride,padding", CONVS, ids=[f"{s}-{k}-s{t}" for s, k, t, _ in CONVS])
def test_every_registry_convolution_matches_xla_in_every_pass(shape, kernel, stride, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    k = jnp.asarray(rng.normal(size=kernel) / np.sqrt(np.prod(kernel[:3])), jnp.float32)
    plans = {"im2col": conv.Plan("im2col", "im2col", "im2col"), "auto": conv.cpu_plan(shape, kernel, stride),
             "mixed": conv.Plan("xla", "im2col", "im2col"), "taps": conv.Plan("xla", "xla", "shifted")}
    if ONEDNN:
        plans["onednn"] = conv.Plan("onednn", "onednn", "onednn")

    @jax.jit
    def run(x, k, g):
        def passes(f):
            y, vjp = jax.vjp(f, x, k)
            return (y, *vjp(g))

        out = {"xla": passes(lambda x, k: conv.xla(x, k, stride, padding))}
        for name, plan in plans.items():
            out[name] = passes(lambda x, k, plan=plan: conv.planned_conv(x, k, stride, padding, plan))
        return out

    out_shape = jax.eval_shape(lambda x, k: conv.xla(x, k, stride, padding), x, k).shape
    g = jnp.asarray(rng.normal(size=out_shape), jnp.float32)
    results = run(x, k, g)
    for name in plans:
        for what, got, want in zip(("forward", "input grad", "kernel grad"), results[name], results["xla"]):
            scale = float(jnp.abs(want).max())
            assert float(jnp.abs(got - want).max()) <= 1e-5 * max(scale, 1.0), (name, what)


def test_auto_is_xla_off_cpu_and_planned_on_cpu(monkeypatch):
    im2col, dnnl = conv.Plan("im2col", "im2col", "im2col"), conv.Plan("onednn", "onednn", "onednn")
    assert conv.plan_for("auto", (8, 2, 2, 512), (3, 3, 512, 512), 1) == im2col
    everywhere_xla = conv.Plan("xla", "xla", "xla")  # on CPUs with gradients written as forward convolutions
    assert conv.plan_for("xla", (8, 2, 2, 512), (3, 3, 512, 512), 1) == everywhere_xla
    assert conv.cpu_plan((8, 32, 32, 16), (3, 3, 16, 16), 1) == conv.Plan("xla", "xla", "shifted")
    assert conv.cpu_plan((8, 32, 32, 16), (3, 3, 16, 16), 1, with_onednn=True) == dnnl
    assert conv.cpu_plan((8, 4, 4, 256), (3, 3, 256, 512), 2, with_onednn=True) == im2col  # a 2x2 output
    assert conv.cpu_plan((8, 4, 4, 256), (1, 1, 256, 512), 2, with_onednn=True, avx512=True) == dnnl
    # without AVX-512: matmuls where the output has few pixels (rows), one per tap for the kernel gradient
    assert conv.cpu_plan((16, 7, 7, 512), (3, 3, 512, 512), 1, with_onednn=True, avx512=False) == conv.Plan(
        "im2col", "im2col", "shifted")  # resnet50's last stage at batch 16: 784 rows
    assert conv.cpu_plan((16, 14, 14, 256), (3, 3, 256, 256), 1, with_onednn=True, avx512=False) == conv.Plan(
        "onednn", "onednn", "shifted")  # 3,136 rows
    assert conv.cpu_plan((128, 8, 8, 64), (3, 3, 64, 64), 1, with_onednn=True, avx512=False) == dnnl  # 8,192
    assert conv.cpu_plan((128, 8, 8, 128), (1, 1, 128, 256), 2, with_onednn=True, avx512=False) == conv.Plan(
        "onednn", "onednn", "shifted")  # 2,048 rows, 128 channels
    assert conv.cpu_plan((32, 8, 8, 64), (3, 3, 64, 64), 1, with_onednn=True, avx512=False) == dnnl  # 64 channels
    taps = conv.Plan("xla", "xla", "shifted")
    assert conv.plan_for("auto", (8, 32, 32, 16), (3, 3, 16, 16), 1, jnp.bfloat16) == taps

    plans = []  # oneDNN's custom call only where the traced program runs per device (XLA cannot partition it)

    def per_device(x):
        plans.append(conv.plan_for("auto", (8, 32, 32, 16), (3, 3, 16, 16), 1))
        return x

    n = jax.device_count()
    assert n == 4  # tests/conftest.py
    jax.make_jaxpr(per_device)(jnp.zeros(n))  # a jit over several devices: partitioned by XLA
    mesh = jax.make_mesh((n,), ("data",))
    x = jax.device_put(jnp.zeros(n), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    jax.make_jaxpr(jax.shard_map(per_device, mesh=mesh, in_specs=jax.sharding.PartitionSpec("data"),
                                 out_specs=jax.sharding.PartitionSpec("data")))(x)
    assert plans == [taps, dnnl if ONEDNN else taps]
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert conv.plan_for("auto", (8, 2, 2, 512), (3, 3, 512, 512), 1) is None
    assert conv.plan_for("xla", (8, 2, 2, 512), (3, 3, 512, 512), 1) is None
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        conv.plan_for("winograd", (8, 2, 2, 512), (3, 3, 512, 512), 1)
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        models.create_model("resnet18", conv_impl="fast")


def test_bfloat16_uses_onednn_only_on_a_cpu_with_bf16_arithmetic_and_says_once_why_not(caplog, monkeypatch,
                                                                                        request):
    taps = conv.Plan("xla", "xla", "shifted")
    shape, kernel = (8, 32, 32, 16), (3, 3, 16, 16)

    def forget():  # the answers for made-up CPUs, and at the end for this one
        for cached in (conv.onednn_bf16_unavailable, conv._onednn_bf16_for_auto):
            cached.cache_clear()

    request.addfinalizer(forget)

    def plans(flags):
        """Three bf16 plans and an fp32 one of a one-device program on a CPU with ``flags``; the warnings."""
        monkeypatch.setattr(conv, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(conv, "_traced_per_device", lambda: True)
        forget()
        caplog.clear()
        with caplog.at_level("WARNING", logger="resnet_jax.conv"):
            got = [conv.plan_for("auto", shape, kernel, 1, jnp.bfloat16) for _ in range(3)]
            conv.plan_for("auto", shape, kernel, 1)
        return got, [r.getMessage() for r in caplog.records if "bfloat16" in r.getMessage()]

    got, lines = plans({"avx2", "fma"})  # e.g. a Zen 3: oneDNN would emulate bf16, slower than fp32
    assert got == [taps] * 3
    assert len(lines) == 1 and "not oneDNN's: this CPU has no bf16 arithmetic" in lines[0]
    if not ONEDNN:
        return
    got, lines = plans({"avx512f", "avx512_bf16"})  # oneDNN itself says whether it has fast bf16 passes
    bf16_here = conv.cpu_bf16() and conv.onednn.bf16_unavailable() is None
    assert got == [conv.Plan("onednn", "onednn", "onednn") if bf16_here else taps] * 3
    assert (lines == []) if bf16_here else (len(lines) == 1 and "oneDNN has" in lines[0])


@pytest.mark.skipif(not ONEDNN or conv.onednn_bf16_unavailable() is not None,
                    reason=f"no oneDNN bf16 convolutions here: {conv.onednn_bf16_unavailable()}")
@pytest.mark.parametrize("shape,kernel,stride,padding", [
    ((2, 64, 64, 3), (7, 7, 3, 64), 2, ((3, 3), (3, 3))), ((4, 16, 16, 64), (3, 3, 64, 64), 1, ((1, 1), (1, 1))),
    ((4, 16, 16, 64), (3, 3, 64, 128), 2, ((1, 1), (1, 1))), ((4, 16, 16, 64), (1, 1, 64, 128), 2, ((0, 0), (0, 0)))])
def test_onednn_bf16_passes_match_xla_on_the_same_bf16_values(shape, kernel, stride, padding):
    """bf16 operands, the results rounded once to bf16 (the kernel gradient accumulated in fp32): within bf16's
    rounding of XLA's fp32 passes on the same values."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape), jnp.bfloat16)
    k = jnp.asarray(rng.normal(size=kernel) / np.sqrt(np.prod(kernel[:3])), jnp.bfloat16)
    out_shape = conv.onednn.output_shape(shape, kernel, stride, padding)
    g = jnp.asarray(rng.normal(size=out_shape), jnp.bfloat16)
    plan = conv.Plan("onednn", "onednn", "onednn")

    def passes(f, *args):
        y, vjp = jax.vjp(f, *args)
        return (y, *vjp(g.astype(y.dtype)))

    got = jax.jit(lambda x, k: passes(lambda x, k: conv.planned_conv(x, k, stride, padding, plan), x, k))(x, k)
    want = jax.jit(lambda x, k: passes(lambda x, k: conv.xla(x, k, stride, padding), x, k))(
        x.astype(jnp.float32), k.astype(jnp.float32))
    for what, a, b in zip(("forward", "input grad", "kernel grad"), got, want):
        assert a.dtype == jnp.bfloat16, what
        scale = float(jnp.abs(b).max())
        assert float(jnp.abs(a.astype(jnp.float32) - b).max()) <= 1e-2 * scale, what


@pytest.mark.parametrize("stride,size", [(1, 3), (2, 3), (2, 7), (2, 1)])
def test_xla_gradients_stay_in_xla_cpu_fast_form_inside_a_loop(stride, size):
    """XLA:CPU leaves JAX's transposed gradient convolutions alone inside a while loop and runs them 10-60x
    slower; the written-out gradients are forward NHWC/HWIO convolutions there too, and equal JAX's bitwise."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4, 16, 16, 8)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(size, size, 8, 16)), jnp.float32)
    pad = ((size // 2, size // 2),) * 2
    plan = conv.Plan("xla", "xla", "xla")

    def grads(x, kernel):
        return jax.grad(lambda x, k: jnp.sum(jnp.sin(conv.planned_conv(x, k, stride, pad, plan))), (0, 1))(x, kernel)

    reference = jax.grad(lambda x, k: jnp.sum(jnp.sin(conv.xla(x, k, stride, pad))), (0, 1))(x, kernel)
    jax.tree.map(np.testing.assert_array_equal, jax.jit(grads)(x, kernel), reference)
    looped = jax.jit(lambda x, k, n: jax.lax.fori_loop(0, n, lambda i, c: grads(x, k + c[1] * 0), (x, k)))
    text = looped.lower(x, kernel, 2).compile().as_text()
    labels = {line.split("dim_labels=")[1].split(",")[0] for line in text.splitlines() if " convolution(" in line}
    assert labels == {"b01f_01io->b01f"}, labels


@pytest.mark.slow
@pytest.mark.parametrize("name,scan,impls", [("resnet18", False, ("auto", "im2col")),
                                             ("resnet18", True, ("im2col", *ONEDNN * ["onednn"]))])
def test_models_agree_across_implementations(name, scan, impls):
    """Also under nn.scan with remat (a scanned, rematerialised stage), oneDNN's custom call included."""
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32, 32, 3)), jnp.float32)
    nets = {impl: models.create_model(name, conv_impl=impl, num_classes=7, scan=scan, remat=scan)
            for impl in ("xla", *impls)}
    variables = nets["xla"].init(jax.random.key(0), x)
    for impl in impls:  # the same parameters, whatever computes the convolutions
        shapes = jax.eval_shape(nets[impl].init, jax.random.key(0), x)
        assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(lambda a: a.shape, variables)

    def loss_and_grads(model):
        def loss(params):
            # running statistics: batch statistics over 1x1 maps of 2 images would amplify float noise
            logits = model.apply(dict(variables, params=params), x)
            return jnp.sum(jax.nn.log_softmax(logits)[:, 0])

        return jax.jit(jax.value_and_grad(loss))(variables["params"])

    want_loss, want_grads = loss_and_grads(nets["xla"])
    for impl in impls:
        got_loss, got_grads = loss_and_grads(nets[impl])
        np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
        for got, want in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
            assert float(jnp.abs(got - want).max()) <= 1e-4 * float(jnp.abs(want).max()) + 1e-6


@pytest.mark.slow
def test_sharded_training_gives_the_same_losses_with_either_implementation():
    c = cifar10.get_config()
    mesh = training.make_mesh()
    rng = np.random.default_rng(0)
    batches = [data.to_global({"image": rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
                               "label": rng.integers(0, 10, 8).astype(np.int32)}, mesh) for _ in range(3)]
    losses = {}
    impls = ("xla", "im2col", *ONEDNN * ["onednn"])  # shard_map over the 4 CPU devices of tests/conftest.py
    for impl in impls:  # a 3-stage CIFAR-style net with one block per stage: quick to compile
        model = models.ResNet(stage_sizes=(1, 1, 1), widths=(8, 16, 32), stem="cifar", shortcut="A",
                              num_classes=10, conv_impl=impl)
        tx = training.make_optimizer(c, lambda s: 0.1)
        state = training.create_train_state(model, tx, 16, 0, mesh)
        step = training.make_train_step(model, tx, mesh, 128.0, 64.0, 10)
        losses[impl] = []
        for batch in batches:
            state, metrics = step(state, batch)
            losses[impl].append(float(metrics["loss"]))
    for impl in impls:
        np.testing.assert_allclose(losses[impl], losses["xla"], rtol=1e-4)
    assert losses["xla"][0] != losses["xla"][-1]


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", **env})  # one device


PROBE = """
from resnet_jax import conv
print("unavailable:", conv.onednn.unavailable())
print("plan:", conv.plan_for("auto", (8, 32, 32, 16), (3, 3, 16, 16), 1))
print("plan:", conv.plan_for("auto", (8, 16, 16, 32), (3, 3, 32, 32), 1))
try:
    conv.plan_for("onednn", (8, 32, 32, 16), (3, 3, 16, 16), 1)
except ValueError as e:
    print("explicit:", e)
"""


@pytest.mark.parametrize("env,reason", [({"CXX": "/nonexistent/c++"}, "building the oneDNN convolutions failed"),
                                        ({"RESNET_JAX_ONEDNN": "0"}, "turned off by RESNET_JAX_ONEDNN=0")])
def test_auto_without_onednn_says_why_once_and_uses_the_xla_rules(tmp_path, env, reason):
    done = run_python(PROBE, RESNET_JAX_CACHE=str(tmp_path), **env)
    assert done.returncode == 0, done.stderr
    assert f"unavailable: {reason}" in done.stdout
    assert done.stdout.count("plan: Plan(forward='xla', input_grad='xla', kernel_grad='shifted')") == 2
    assert f"explicit: conv_impl='onednn': {reason}" in done.stdout
    warnings = [line for line in done.stderr.splitlines() if "without oneDNN" in line]
    assert len(warnings) == 1 and reason in warnings[0], done.stderr
    assert not list(tmp_path.rglob("*.so")) and not list(tmp_path.rglob(".building-*"))  # nothing half-built


@pytest.mark.skipif(not ONEDNN, reason=f"oneDNN cannot be built here: {conv.onednn.unavailable()}")
def test_onednn_is_compiled_once_into_the_cache_and_used_by_auto(tmp_path):
    first = run_python(PROBE, RESNET_JAX_CACHE=str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert "unavailable: None" in first.stdout
    assert first.stdout.count("plan: Plan(forward='onednn', input_grad='onednn', kernel_grad='onednn')") == 2
    built = list((tmp_path / "native").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so", built  # no staging file left behind
    stamp = built[0].stat().st_mtime_ns
    second = run_python(PROBE, RESNET_JAX_CACHE=str(tmp_path))
    assert "unavailable: None" in second.stdout and built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt
