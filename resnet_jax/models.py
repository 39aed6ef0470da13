"""The residual (and plain) networks of He et al., "Deep Residual Learning for Image Recognition".

All modules take NHWC images and keep batch-norm statistics in the ``batch_stats`` collection:

    logits = model.apply(variables, x, train=False)
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    logits, feats = model.apply(variables, x, features=True)   # stem, stage1..N, pre_logits
    responses = layer_responses(model, variables, x)             # each 3x3 layer after BN (resnet_jax.responses)

Names follow the paper: Table 1 (ImageNet), Sec. 4.2 (CIFAR, 6n+2 layers), Sec. 3.3 (shortcut options).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax import batch_norm, pooling
from resnet_jax import conv as conv_lib

Array = jax.Array
ModuleDef = Any

# Sec. 3.4 / [He et al. 2015, "Delving deep into rectifiers"]: zero-mean Gaussian with std sqrt(2/n).
# n counts the outputs of a unit (k*k*c_out), as in the authors' Torch reproduction.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

SHORTCUTS = ("A", "B", "C")
RESPONSES = "responses"  # the collection each 3x3 layer's output after BN is sown into (apply with mutable=[...])
VERSIONS = ("v1", "v1.5")


def norm_relu(module: nn.Module, norm: nn.Module, y: Array, residual: Array | None = None,
              response: str | None = None) -> Array:
    """``relu(norm(y) + residual)``, one call of ``batch_norm.BatchNorm``. A 3x3 layer names its ``response``: when
    the caller collects responses (``apply`` with ``mutable=[RESPONSES]``), ``norm(y)`` is kept there first, its
    output after BN and before the addition or the ReLU (Sec. 4.2); never in ``init``'s variables."""
    if response is None or not module.is_mutable_collection(RESPONSES):
        return norm(y, residual, relu=True)
    y = norm(y)
    if not module.is_initializing():
        module.sow(RESPONSES, f"{response}_response", y)
    return nn.relu(y if residual is None else y + residual)


def _conv(features: int, kernel: int, strides: int = 1, **kw: Any) -> nn.Conv:
    """A bias-free convolution padded by kernel // 2 on every side, as in the paper's Caffe/Torch models.

    Explicit symmetric padding (not 'SAME') keeps the sampling grid of strided convolutions identical to
    PyTorch's, so imported weights give identical outputs.
    """
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), (strides, strides), padding=((pad, pad), (pad, pad)),
                   use_bias=False, kernel_init=conv_init, **kw)


class Shortcut(nn.Module):
    """The shortcut connection of Sec. 3.3.

    A: identity; where dimensions grow, subsample by the stride and zero-pad the new channels (equally
       before and after). Parameter-free.
    B: a 1x1 projection (with BN) only where dimensions change, identity elsewhere.
    C: a 1x1 projection (with BN) on every shortcut.
    """

    features: int
    strides: int
    option: str
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x: Array) -> Array:
        changes = self.strides != 1 or x.shape[-1] != self.features
        if self.option == "C" or (self.option == "B" and changes):
            x = self.conv(self.features, 1, self.strides, name="conv")(x)
            return self.norm(name="bn")(x)
        if not changes:
            return x
        x = x[:, :: self.strides, :: self.strides]
        extra = self.features - x.shape[-1]
        return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


class ResidualBlock(nn.Module):
    """A residual block, y = relu(F(x) + shortcut(x)) (Eq. 1-2), or its plain twin y = relu(F(x)).

    ``bottleneck=False``: two 3x3 convolutions (Fig. 5 left, ResNet-18/34 and the CIFAR nets).
    ``bottleneck=True``: 1x1 reduce, 3x3, 1x1 expand by 4 (Fig. 5 right, ResNet-50/101/152). The paper
    downsamples in the first 1x1 convolution ("v1"); torchvision does it in the 3x3 ("v1.5").
    """

    filters: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef
    bottleneck: bool = False
    residual: bool = True
    shortcut: str = "B"
    version: str = "v1"
    zero_init_residual: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.bottleneck:
            s1, s3 = (self.strides, 1) if self.version == "v1" else (1, self.strides)
            layers = [(self.filters, 1, s1), (self.filters, 3, s3), (self.filters * 4, 1, 1)]
        else:
            layers = [(self.filters, 3, self.strides), (self.filters, 3, 1)]
        y = x
        for i, (features, kernel, strides) in enumerate(layers, 1):
            y = self.conv(features, kernel, strides, name=f"conv{i}")(y)
            last = i == len(layers)
            scale_init = nn.initializers.zeros if last and self.zero_init_residual else nn.initializers.ones
            shortcut = None
            if last and self.residual:
                shortcut = Shortcut(features, self.strides, self.shortcut, self.conv, self.norm, name="shortcut")(x)
            y = norm_relu(self, self.norm(name=f"bn{i}", scale_init=scale_init), y, shortcut,
                          f"conv{i}" if kernel == 3 else None)
        return y


class Stage(nn.Module):
    """A stack of blocks at one resolution; the first may downsample (Table 1's conv2_x ... conv5_x).

    With ``scan=True`` the identical blocks after the first are one ``nn.scan`` over stacked parameters
    (``blocks``, leading axis = block index), so compile time no longer grows with depth.
    """

    num_blocks: int
    filters: int
    strides: int
    block: Callable[..., nn.Module]
    scan: bool = False
    remat: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        block = nn.remat(self.block) if self.remat else self.block
        x = block(self.filters, self.strides, name="block0")(x)
        if self.scan and self.num_blocks > 1:
            body = nn.scan(lambda mdl, carry, _: (mdl(carry), None),
                           variable_axes={"params": 0, "batch_stats": 0, RESPONSES: 0},
                           split_rngs={"params": True}, length=self.num_blocks - 1)
            x, _ = body(block(self.filters, 1, name="blocks"), x, None)
        else:
            for j in range(1, self.num_blocks):
                x = block(self.filters, 1, name=f"block{j}")(x)
        return x


class ResNet(nn.Module):
    """A residual network (or, with ``residual=False``, the plain baseline of the same depth).

    ``stem="imagenet"``: 7x7/2 convolution with ``stem_width`` (64) filters, BN, ReLU, 3x3/2 max-pool (Table 1).
    ``stem="cifar"``: 3x3 convolution with ``widths[0]`` filters, BN, ReLU (Sec. 4.2).
    Stages follow with ``stage_sizes`` blocks of ``widths`` filters, the first stage at stride 1 and every
    later one at stride 2, then global average pooling and a fully-connected classifier.
    """

    stage_sizes: Sequence[int]
    widths: Sequence[int] = (64, 128, 256, 512)
    stem: str = "imagenet"
    stem_width: int = 64
    bottleneck: bool = False
    residual: bool = True
    shortcut: str = "B"
    version: str = "v1"
    num_classes: int = 1000
    zero_init_residual: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan: bool = False
    remat: bool = False
    bn_axis_name: str | None = None  # a mapped axis (e.g. shard_map's) to synchronise BN statistics over
    conv_impl: str = "auto"  # how convolutions compute (resnet_jax.conv): "auto", "xla", "im2col" or "onednn"
    frozen: tuple[str, ...] = ()  # parts ("stem", "stage1", ...) whose BN layers normalise with running statistics

    @nn.compact
    def __call__(self, x: Array, train: bool = False, features: bool = False) -> Array | tuple[Array, dict]:
        conv = functools.partial(_conv, dtype=self.dtype, param_dtype=self.param_dtype,
                                 conv_general_dilated=conv_lib.conv_general_dilated(self.conv_impl))
        norm = functools.partial(batch_norm.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                                 epsilon=self.bn_epsilon, dtype=self.dtype, param_dtype=self.param_dtype,
                                 axis_name=self.bn_axis_name)

        def norm_of(part: str) -> ModuleDef:  # a frozen part keeps (and uses) its running statistics
            return functools.partial(norm, use_running_average=True) if part in self.frozen else norm

        block = functools.partial(ResidualBlock, conv=conv, bottleneck=self.bottleneck, residual=self.residual,
                                  shortcut=self.shortcut, version=self.version,
                                  zero_init_residual=self.zero_init_residual)
        out = {}
        x = jnp.asarray(x, self.dtype)
        if self.stem == "imagenet":
            x = norm_of("stem")(name="bn1")(conv(self.stem_width, 7, 2, name="conv1")(x), relu=True)
            # padded apart from the pooling (the same result): jax2onnx's max_pool drops a pooling's own padding
            x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
            x = pooling.max_pool(x, 3, 2)
        else:  # a 3x3 layer: its response counts (Figure 7's first layer)
            x = norm_relu(self, norm_of("stem")(name="bn1"), conv(self.widths[0], 3, 1, name="conv1")(x),
                          response="conv1")
        out["stem"] = x
        for i, (size, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
            stage_block = functools.partial(block, norm=norm_of(f"stage{i + 1}"))
            x = Stage(size, width, 1 if i == 0 else 2, stage_block, self.scan, self.remat, name=f"stage{i + 1}")(x)
            out[f"stage{i + 1}"] = x
        x = out["pre_logits"] = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(x)
        x = out["logits"] = jnp.asarray(x, jnp.float32)
        return (x, out) if features else x


# One registry of named variants: name -> ResNet fields (paper Table 1 and Sec. 4.2).
_IMAGENET = dict(stem="imagenet", widths=(64, 128, 256, 512), shortcut="B", num_classes=1000)
_CIFAR = dict(stem="cifar", widths=(16, 32, 64), shortcut="A", num_classes=10)
_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

MODELS: dict[str, dict[str, Any]] = {}
for _depth, _sizes in _BLOCKS.items():
    MODELS[f"resnet{_depth}"] = dict(_IMAGENET, stage_sizes=_sizes, bottleneck=_depth >= 50)
for _depth in (18, 34):
    MODELS[f"plain{_depth}"] = dict(MODELS[f"resnet{_depth}"], residual=False)
for _depth in (20, 32, 44, 56, 110, 1202):  # 6n + 2 layers
    MODELS[f"cifar_resnet{_depth}"] = dict(_CIFAR, stage_sizes=((_depth - 2) // 6,) * 3)
    if _depth != 1202:
        MODELS[f"cifar_plain{_depth}"] = dict(MODELS[f"cifar_resnet{_depth}"], residual=False)

# Options a user may set through create_model.
OPTIONS = ("num_classes", "shortcut", "version", "zero_init_residual", "bn_momentum", "bn_epsilon",
           "dtype", "param_dtype", "scan", "remat", "conv_impl", "frozen")
# Architecture fields a name fixes, which may be overridden for networks outside the paper's table (imported
# checkpoints of other depths or widths, tiny test networks): blocks per stage, filters per stage, stem filters.
ARCHITECTURE = ("stage_sizes", "widths", "stem_width")


def list_models() -> list[str]:
    """The names ``create_model`` accepts."""
    return sorted(MODELS)


def create_model(name: str, **options: Any) -> ResNet:
    """Build a registered network, e.g. ``create_model("resnet50", num_classes=100, dtype="bfloat16")``.

    Options: num_classes, shortcut ("A", "B" or "C"), version ("v1" or "v1.5"), zero_init_residual,
    bn_momentum, bn_epsilon, dtype, param_dtype, scan, remat, conv_impl ("auto", "xla", "im2col" or "onednn":
    the same parameters and results, different speed; see resnet_jax.conv).
    Architecture overrides: stage_sizes (blocks per stage), widths (filters per stage; a bottleneck block outputs
    4x), stem_width (the ImageNet stem's filters), e.g. ``create_model("cifar_resnet20", stage_sizes=(1, 1, 1),
    widths=(4, 8, 16))`` for an 8-layer network of 5,006 parameters.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")
    unknown = sorted(set(options) - set(OPTIONS) - set(ARCHITECTURE))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for {name}; valid options: "
                         f"{', '.join(OPTIONS + ARCHITECTURE)}")
    fields = dict(MODELS[name])
    for key in ("stage_sizes", "widths"):
        if key in options:
            options[key] = tuple(int(v) for v in options[key])
            if not options[key] or min(options[key]) < 1:
                raise ValueError(f"{key} must be positive integers, got {options[key]}")
    sizes, widths = options.get("stage_sizes", fields["stage_sizes"]), options.get("widths", fields["widths"])
    if len(sizes) != len(widths):
        raise ValueError(f"{name}: stage_sizes and widths need one entry per stage, got {sizes} and {widths}")
    if options.get("shortcut", "A") not in SHORTCUTS:
        raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {options['shortcut']!r}")
    if options.get("version", "v1") not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {options['version']!r}")
    if options.get("conv_impl", "auto") not in conv_lib.IMPLS:
        raise ValueError(f"conv_impl must be one of {conv_lib.IMPLS}, got {options['conv_impl']!r}")
    for key in ("dtype", "param_dtype"):
        if key in options:
            options[key] = jnp.dtype(options[key])
    return ResNet(**dict(fields, **options))


def describe(name: str, options: dict) -> str:
    """``resnet50``, or ``resnet18 (stage_sizes=[1, 1], widths=[8, 16])`` for a network outside the table."""
    overrides = [f"{k}={options[k]}" for k in ARCHITECTURE if k in options]
    return name + (f" ({', '.join(overrides)})" if overrides else "")


def part_of(name: str) -> str:
    """The part a top-level variable belongs to: ``conv1``/``bn1`` -> ``stem``; ``stageN`` and ``fc`` themselves."""
    return "stem" if name in ("conv1", "bn1") else name


def parts(model: ResNet) -> list[str]:
    """The parts of a network, input to output: stem, stage1..N, fc."""
    return ["stem", *(f"stage{i + 1}" for i in range(len(model.stage_sizes))), "fc"]


def convert_layout(variables: dict, scan: bool) -> dict:
    """Move variables between the unrolled layout (``stageI/blockJ``) and the scanned one
    (``stageI/block0`` + ``stageI/blocks`` stacked on a leading axis). Other entries pass through."""

    def stage(tree: dict) -> dict:
        tree = dict(tree)
        if scan and "block1" in tree:
            rest = [tree.pop(f"block{j}") for j in range(1, len(tree))]
            tree["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *rest)
        elif not scan and "blocks" in tree:
            stacked = tree.pop("blocks")
            for j in range(jax.tree.leaves(stacked)[0].shape[0]):
                tree[f"block{j + 1}"] = jax.tree.map(lambda x, j=j: x[j], stacked)
        return tree

    return {col: {k: stage(v) if k.startswith("stage") else v for k, v in tree.items()}
            for col, tree in variables.items()}


def count_params(tree: Any) -> int:
    """Number of scalars in a pytree (e.g. ``variables["params"]``: BN scale/bias count, statistics not)."""
    return sum(x.size for x in jax.tree.leaves(tree))


def abstract_variables(model: nn.Module, image_size: int) -> Any:
    """The model's variables as shapes only (``jax.eval_shape``): free, whatever the depth."""
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3))))


def multiply_adds(model: nn.Module, image_size: int = 224) -> float:
    """Multiply-adds per image of the forward pass in its convolutions and fully-connected layer, the count of
    Table 1. Exact, from the traced program (no compilation, the same on every backend; convolutions traced as
    XLA operations, not as oneDNN's custom call)."""
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    with conv_lib.portable():
        return _jaxpr_multiply_adds(jax.make_jaxpr(model.apply)(abstract_variables(model, image_size), x).jaxpr)


def _jaxpr_multiply_adds(jaxpr: Any) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        out = eqn.outvars[0].aval if eqn.outvars else None
        if eqn.primitive.name == "conv_general_dilated":  # every output: kernel window x input channels per group
            rhs, spec = eqn.invars[1].aval.shape, eqn.params["dimension_numbers"].rhs_spec
            total += out.size * math.prod(rhs[i] for i in spec[1:])
        elif eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            total += out.size * math.prod(eqn.invars[0].aval.shape[i] for i in contract)
        subs = [getattr(v, "jaxpr", v) for v in eqn.params.values() for v in (v if isinstance(v, tuple) else (v,))]
        subs = [_jaxpr_multiply_adds(j) for j in subs if hasattr(j, "eqns")]
        if subs:  # nested programs (jit, remat, scan: times its length; cond: its costliest branch)
            total += max(subs) * eqn.params.get("length", 1)
    return total
