"""How the networks' convolutions are computed: XLA's convolution, im2col and one matrix product, or oneDNN's.

XLA:CPU's convolution is slow in two places that ResNets hit: maps smaller than the kernel's reach (a 3x3
convolution on a 2x2 or 4x4 map runs at ~2 % of the machine's matmul speed) and gradients, whose kernel
gradient in particular it computes as a convolution with a huge window. The same convolution written as
im2col (the shifted, strided slices of the padded input stacked on the channel axis) followed by one matmul
runs at the speed of the matmul. Which is faster depends on the shape and on the pass, so each convolution
picks an implementation for its forward pass, its input gradient and its kernel gradient separately
(a ``custom_vjp``). The parameters are the same in every case: checkpoints do not depend on the choice.

PyTorch's CPU convolutions are oneDNN's, faster again in every pass but on the smallest maps; where oneDNN and a
C++ compiler are installed, its convolutions run inside the XLA program as an FFI custom call
(:mod:`resnet_jax.native.onednn`).

``impl``: ``"xla"`` (every pass XLA's), ``"im2col"`` (every pass a matmul), ``"onednn"`` (every pass oneDNN's;
CPUs; fp32, and bf16 on CPUs with bf16 arithmetic) or ``"auto"``: on CPUs the rules of :func:`cpu_plan`, measured
with ``benchmarks/conv_passes.py``, with oneDNN where it is available; elsewhere XLA's (cuDNN and the TPU compiler
are right there).

On CPUs, XLA's gradients are written out as forward convolutions in NHWC/HWIO form (:func:`xla_input_grad`,
:func:`xla_kernel_grad`), bitwise equal to JAX's own. JAX's transposed forms need XLA:CPU to rewrite them into
that form, which it does not do inside a loop (``lax.scan``/``fori_loop``): there they fall back to a generic
loop nest 10-60x slower, which would make ``steps_per_loop`` useless on CPUs.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from resnet_jax.native import onednn

log = logging.getLogger(__name__)

IMPLS = ("xla", "im2col", "onednn", "auto")
Padding = tuple[tuple[int, int], tuple[int, int]]


class Plan(NamedTuple):
    """The implementation of each pass of one convolution."""

    forward: str
    input_grad: str
    kernel_grad: str


def xla(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    """XLA's convolution, NHWC input and HWIO kernel."""
    return lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def shifted_views(x: jax.Array, kh: int, kw: int, stride: int, padding: Padding) -> list[jax.Array]:
    """For each kernel tap (i, j), in row-major order, the strided view of the padded input that it multiplies:
    (N, H_out, W_out, C_in) each."""
    if any(p for pair in padding for p in pair):
        x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    n, h, w, cin = x.shape
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    return [lax.slice(x, (0, i, j, 0), (n, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, cin),
                      (1, stride, stride, 1)) for i in range(kh) for j in range(kw)]


def im2col(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    """The same convolution as one matmul over the stacked shifted views of the padded input."""
    kh, kw, cin, cout = kernel.shape
    views = shifted_views(x, kh, kw, stride, padding)
    patches = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)  # channel order: (i, j, c)
    return lax.dot_general(patches, kernel.reshape(kh * kw * cin, cout), (((3,), (0,)), ((), ())))


def xla_input_grad(g: jax.Array, kernel: jax.Array, stride: int, padding: Padding, x_shape: Sequence[int]) -> jax.Array:
    """The input gradient of :func:`xla` as a forward convolution: the output gradient dilated by the stride,
    against the flipped kernel with input and output channels swapped."""
    kh, kw = kernel.shape[:2]
    (top, _), (left, _) = padding
    lo_h, lo_w = kh - 1 - top, kw - 1 - left
    hi_h = x_shape[1] + kh - 1 - lo_h - ((g.shape[1] - 1) * stride + 1)
    hi_w = x_shape[2] + kw - 1 - lo_w - ((g.shape[2] - 1) * stride + 1)
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    return lax.conv_general_dilated(g, flipped, (1, 1), ((lo_h, hi_h), (lo_w, hi_w)), lhs_dilation=(stride, stride),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def xla_kernel_grad(x: jax.Array, g: jax.Array, stride: int, padding: Padding,
                    kernel_shape: Sequence[int]) -> jax.Array:
    """The kernel gradient of :func:`xla` as a forward convolution: input channels as the batch, the batch as
    the features, and the output gradient (dilated by the stride) as the kernel."""
    kh, kw = kernel_shape[:2]
    (top, _), (left, _) = padding
    hi_h = kh + (g.shape[1] - 1) * stride - x.shape[1] - top
    hi_w = kw + (g.shape[2] - 1) * stride - x.shape[2] - left
    out = lax.conv_general_dilated(x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), (1, 1),
                                   ((top, hi_h), (left, hi_w)), rhs_dilation=(stride, stride),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out.transpose(1, 2, 0, 3)


def shifted_kernel_grad(x: jax.Array, g: jax.Array, stride: int, padding: Padding,
                        kernel_shape: Sequence[int]) -> jax.Array:
    """The kernel gradient as one matrix product per kernel tap: the tap's shifted (strided) view of the padded
    input, flattened to (N*H*W, C_in), contracted over N*H*W with the output gradient (N*H*W, C_out). No
    activation is transposed (XLA's form needs the input as (C_in, H, W, N)) or stacked (im2col's)."""
    kh, kw, cin, cout = kernel_shape
    rows = g.shape[0] * g.shape[1] * g.shape[2]
    g2 = g.reshape(rows, cout)
    taps = [view.reshape(rows, cin) for view in shifted_views(x, kh, kw, stride, padding)]
    return jnp.stack([lax.dot_general(t, g2, (((0,), (0,)), ((), ()))) for t in taps]).reshape(kernel_shape)


def im2col_input_grad(g: jax.Array, kernel: jax.Array, stride: int, padding: Padding,
                      x_shape: Sequence[int]) -> jax.Array:
    """The input gradient of :func:`im2col` (JAX's transpose of its matmul and slices)."""
    x = jax.typeof(g).update(shape=tuple(x_shape))  # typed like g: per-device inside shard_map too
    return jax.linear_transpose(lambda x: im2col(x, kernel, stride, padding), x)(g)[0]


def im2col_kernel_grad(x: jax.Array, g: jax.Array, stride: int, padding: Padding,
                       kernel_shape: Sequence[int]) -> jax.Array:
    """The kernel gradient of :func:`im2col`: the stacked views contracted with the output gradient."""
    k = jax.typeof(g).update(shape=tuple(kernel_shape))
    return jax.linear_transpose(lambda k: im2col(x, k, stride, padding), k)(g)[0]


IMPLEMENTATIONS = {"xla": xla, "im2col": im2col, "onednn": onednn.forward}
INPUT_GRADS = {"xla": xla_input_grad, "im2col": im2col_input_grad, "onednn": onednn.input_grad}
KERNEL_GRADS = {"xla": xla_kernel_grad, "im2col": im2col_kernel_grad, "shifted": shifted_kernel_grad,
                "onednn": onednn.kernel_grad}


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def planned_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding, plan: Plan) -> jax.Array:
    """A convolution whose forward pass and two gradients each use the implementation ``plan`` names."""
    return IMPLEMENTATIONS[plan.forward](x, kernel, stride, padding)


def _forward(x, kernel, stride, padding, plan):
    return planned_conv(x, kernel, stride, padding, plan), (x, kernel)


def _backward(stride, padding, plan, residuals, g):
    x, kernel = residuals
    return (INPUT_GRADS[plan.input_grad](g, kernel, stride, padding, x.shape),
            KERNEL_GRADS[plan.kernel_grad](x, g, stride, padding, kernel.shape))


planned_conv.defvjp(_forward, _backward)


def cpu_plan(shape: Sequence[int], kernel_shape: Sequence[int], stride: int, with_onednn: bool = False,
             avx512: bool | None = None) -> Plan:
    """The faster implementation of each pass on XLA:CPU, by rules measured with ``benchmarks/conv_passes.py``
    over every convolution of resnet18 (64 and 224 px), resnet50 (224 px) and cifar_resnet20 (docs/performance.md
    has the tables). ``shape`` is the NHWC input (per device), ``kernel_shape`` HWIO; ``avx512``: whether the CPU
    has AVX-512 (None: this CPU's).

    - A map smaller than the kernel (e.g. 3x3 on 2x2): im2col in every pass; XLA's convolution runs at ~2 % of
      matmul speed there, and oneDNN's at a third of im2col's. The same holds when a strided convolution's
      *output* map is that small.
    - ``with_onednn``: oneDNN's convolution in every other case and pass, 2-8x faster than XLA's per pass and
      within 5 % of the fastest choice per shape on the three networks' totals, on AVX-512. Without AVX-512
      (measured on a Zen 3, AVX2) oneDNN's kernels lose where the output has few pixels (batch x height x width,
      the matrix product's rows): up to 1,024 rows (resnet50's last stage at batch 16) im2col's matmuls are
      faster in the forward pass and the input gradient, and up to 4,096 rows with 128 or more input channels
      (resnet50's last two stages) so is the kernel gradient as one matmul per tap.

    Without oneDNN:

    - 1x1 convolutions are matmuls: im2col in every pass (XLA's kernel gradient is 3-7x slower).
    - 512 or more input channels: im2col in every pass (one long contraction).
    - Strided 3x3: im2col for the input gradient, for the forward pass on maps up to 14x14, and for the kernel
      gradient from 128 channels on. The 7x7 stem: im2col for its kernel gradient.
    - Everything else (3x3 at stride 1): XLA's forward pass and input gradient; the kernel gradient as one
      matmul per kernel tap (:func:`shifted_kernel_grad`). XLA's own form of that gradient transposes the input
      and the output gradient to (C, H, W, N), a third of cifar_resnet20's step; in the whole step (train.py's,
      same process, alternating) the taps train cifar_resnet20 (batch 128) 9 % and resnet18 at 64 px
      (batch 64) 7 % faster (docs/performance.md).
    """
    n, h, w, cin = shape
    kh = kernel_shape[0]
    ho = -(-h // stride)
    if with_onednn:
        if h < kh or (kh > 1 and ho < kh):
            return Plan("im2col", "im2col", "im2col")
        if cpu_avx512() if avx512 is None else avx512:
            return Plan("onednn", "onednn", "onednn")
        rows = n * ho * -(-w // stride)
        data = "im2col" if rows <= 1024 else "onednn"
        return Plan(data, data, "shifted" if rows <= 4096 and cin >= 128 else "onednn")
    if kh == 1 or h < kh or cin >= 512:
        return Plan("im2col", "im2col", "im2col")
    strided = stride > 1
    return Plan("im2col" if strided and h <= 14 else "xla",
                "im2col" if strided else "xla",
                "im2col" if (strided and cin >= 128) or kh >= 5 else "shifted")


_PORTABLE = contextvars.ContextVar("portable", default=False)


@contextlib.contextmanager
def portable():
    """Programs traced inside call no native code (oneDNN's custom call; ``onednn`` and ``auto`` use the rules
    without it), so that, serialized (``jax.export``, SavedModel, ONNX), they run where this package is not
    installed, and their convolutions can be counted."""
    token = _PORTABLE.set(True)
    try:
        yield
    finally:
        _PORTABLE.reset(token)


def is_portable() -> bool:
    """Whether the program being traced is to be portable (inside :func:`portable`)."""
    return _PORTABLE.get()


def cpu_forms() -> bool:
    """Whether the program being traced takes the forms written for XLA:CPU (``pooling``'s max-pooling,
    ``batch_norm``'s gradient): on CPUs, and not to be portable."""
    return jax.default_backend() == "cpu" and not is_portable()


def _traced_per_device() -> bool:
    """Whether the program being traced runs as it is on each device: with one device, or inside ``shard_map``
    over every mesh axis (train.py's step). Elsewhere XLA's SPMD partitioner would have to split the
    convolution, which it cannot do for a custom call: it would gather the whole batch onto every device."""
    if jax.device_count() == 1:
        return True
    mesh = jax.sharding.get_abstract_mesh()
    return not mesh.empty and bool(getattr(mesh, "are_all_axes_manual", False))


@functools.cache
def _onednn_for_auto() -> bool:
    """Whether ``auto`` may use oneDNN here; if not, says why once per process."""
    reason = onednn.unavailable()
    if reason:
        log.warning("conv_impl=auto without oneDNN's convolutions (%s): CPU training runs at about half the speed",
                    reason)
    return reason is None


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's features as /proc/cpuinfo lists them (none where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return frozenset()


def cpu_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16 or AMX)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def cpu_avx512() -> bool:
    """Whether this CPU has AVX-512, on which :func:`cpu_plan`'s rules for oneDNN were measured first."""
    return "avx512f" in cpu_flags()


@functools.cache
def onednn_bf16_unavailable() -> str | None:
    """Why ``dtype=bfloat16`` cannot run oneDNN's convolutions here (None: it can): they need bf16 arithmetic in
    the CPU (AVX512-BF16 or AMX; elsewhere oneDNN would emulate it, slower than fp32) and a oneDNN with all three
    passes in bf16 for it."""
    if not cpu_bf16():
        return "this CPU has no bf16 arithmetic (AVX512-BF16, AMX), so float32 is the faster choice here"
    return onednn.bf16_unavailable()


@functools.cache
def _onednn_bf16_for_auto() -> bool:
    """Whether ``auto`` may use oneDNN's bf16 convolutions here; if not, says why once per process."""
    reason = onednn_bf16_unavailable()
    if reason:
        log.warning("dtype=bfloat16 on the CPU: convolutions run as XLA's, not oneDNN's: %s", reason)
    return reason is None


def plan_for(impl: str, shape: Sequence[int], kernel_shape: Sequence[int], stride: int,
             dtype: Any = jnp.float32) -> Plan | None:
    """The plan of one convolution (None: plain XLA with JAX's gradients, as off CPUs). ``auto`` uses oneDNN's
    passes for fp32, and for bf16 where the CPU has bf16 arithmetic (:func:`onednn_bf16_unavailable`), in
    programs that run per device (:func:`_traced_per_device`); elsewhere the rules without it."""
    if impl not in IMPLS:
        raise ValueError(f"conv_impl must be one of {IMPLS}, got {impl!r}")
    cpu = jax.default_backend() == "cpu"
    if not cpu:
        return None if impl in ("auto", "xla") else Plan(impl, impl, impl)
    dtype = jnp.dtype(dtype)
    if impl == "auto" or (impl == "onednn" and is_portable()):
        typed = dtype == jnp.float32 or (dtype == jnp.bfloat16 and _onednn_bf16_for_auto())
        native = typed and not is_portable() and _traced_per_device() and _onednn_for_auto()
        return cpu_plan(shape, kernel_shape, stride, with_onednn=native)
    if impl == "onednn":
        reason = onednn.unavailable()
        if reason:
            raise ValueError(f"conv_impl='onednn': {reason}")
        if dtype == jnp.bfloat16 and (reason := onednn_bf16_unavailable()):
            raise ValueError(f"conv_impl='onednn' with bfloat16: {reason}")
        if dtype not in (jnp.float32, jnp.bfloat16):
            raise ValueError(f"conv_impl='onednn' computes in float32 or bfloat16, got {dtype.name}")
    return Plan(impl, impl, impl)  # "xla" on CPUs: gradients that stay fast inside loops


def traced_convolutions(fn: Any, *args: Any) -> list[tuple[tuple[int, ...], tuple[int, ...], int, Padding]]:
    """(input shape, kernel shape, stride, padding) of every convolution in the traced program of ``fn(*args)``
    (shapes only, nothing runs), nested programs included, in order."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                found.append((eqn.invars[0].aval.shape, eqn.invars[1].aval.shape, eqn.params["window_strides"][0],
                              tuple(tuple(p) for p in eqn.params["padding"])))
            for value in eqn.params.values():
                sub = getattr(value, "jaxpr", value)
                if hasattr(sub, "eqns"):
                    walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def conv_general_dilated(impl: str):
    """A drop-in for ``lax.conv_general_dilated`` as ``flax.linen.Conv`` calls it (NHWC, HWIO, square strides,
    no dilation, one group), computing with ``impl``."""

    def conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any, lhs_dilation=None,
             rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1, precision=None) -> jax.Array:
        strides = tuple(window_strides)
        plain = (strides[0] != strides[1] or isinstance(padding, str) or feature_group_count != 1
                 or any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))))
        plan = None if plain else plan_for(impl, lhs.shape, rhs.shape, strides[0], jnp.result_type(lhs, rhs))
        if plan is None:
            return lax.conv_general_dilated(lhs, rhs, strides, padding, lhs_dilation, rhs_dilation,
                                            dimension_numbers, feature_group_count, precision=precision)
        pad = tuple(tuple(int(p) for p in pair) for pair in padding)
        return planned_conv(lhs, rhs, strides[0], pad, plan)

    return conv
