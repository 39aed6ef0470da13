"""Where each tensor of a PyTorch-family ResNet lives, and which network a state dict holds.

Layouts:
  ``cifar``         the widely used CIFAR option-A ResNets: ``conv1``, ``bn1``, ``layer{1,2,3}.{i}.conv{1,2}``,
                    ``bn{1,2}``, ``linear``;
  ``torchvision``   ``conv1``, ``bn1``, ``layer{1..4}.{i}.conv{1,2,3}``, ``bn{1,2,3}``, ``downsample.{0,1}``, ``fc``
                    (torchvision's and timm's ResNets: v1.5 stride placement, option-B projections);
  ``transformers``  Hugging Face transformers' ``ResNetForImageClassification`` / ``ResNetModel``:
                    ``resnet.embedder.embedder.{convolution,normalization}``,
                    ``resnet.encoder.stages.{s}.layers.{i}.layer.{k}.…`` and ``….shortcut.…``, ``classifier.1``.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np

from resnet_jax import models

LAYOUTS = ("cifar", "torchvision", "transformers")
BN_LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


class ConversionError(ValueError):
    """Weights that cannot be read, or that do not match the requested model."""


def layout_of(model_name: str) -> str:
    """The PyTorch layout a registry name is usually published in."""
    return "cifar" if model_name.startswith("cifar_") else "torchvision"


def layout_options(layout: str) -> dict:
    """The model options a layout's source implementation uses."""
    return {"shortcut": "A"} if layout == "cifar" else {"shortcut": "B", "version": "v1.5"}


def _torchvision_key(modules: list[str], layout: str) -> str:
    names: list[str] = []
    for m in modules:
        if stage := re.fullmatch(r"stage(\d+)", m):
            names.append(f"layer{stage[1]}")
        elif block := re.fullmatch(r"block(\d+)", m):
            names.append(block[1])
        elif m == "shortcut":
            names.append("downsample")
        elif m == "fc":
            names.append("linear" if layout == "cifar" else "fc")
        elif names and names[-1] == "downsample":
            names.append({"conv": "0", "bn": "1"}[m])
        else:
            names.append(m)
    return ".".join(names)


def _transformers_key(modules: list[str]) -> str:
    if modules[0] in ("conv1", "bn1"):
        return "resnet.embedder.embedder." + ("convolution" if modules[0] == "conv1" else "normalization")
    if modules[0] == "fc":
        return "classifier.1"
    stage, block, *rest = modules
    prefix = f"resnet.encoder.stages.{int(stage[5:]) - 1}.layers.{int(block[5:])}"
    if rest[0] == "shortcut":
        return f"{prefix}.shortcut." + ("convolution" if rest[1] == "conv" else "normalization")
    kind, k = re.fullmatch(r"(conv|bn)(\d+)", rest[0]).groups()
    return f"{prefix}.layer.{int(k) - 1}." + ("convolution" if kind == "conv" else "normalization")


def torch_key(path: tuple[str, ...], layout: str) -> str:
    """Our variable path (collection, module..., leaf) -> the state-dict key of ``layout``."""
    _, *modules, leaf = path
    module = _transformers_key(modules) if layout == "transformers" else _torchvision_key(modules, layout)
    return f"{module}.{'weight' if leaf == 'kernel' else BN_LEAVES[leaf]}"


def to_torch_layout(x: np.ndarray, leaf: str) -> np.ndarray:
    """Flax HWIO conv / (in, out) dense kernels -> PyTorch OIHW / (out, in)."""
    if leaf == "kernel":
        return x.transpose(3, 2, 0, 1) if x.ndim == 4 else x.T
    return x


def from_torch_layout(x: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel":
        return x.transpose(2, 3, 1, 0) if x.ndim == 4 else x.T
    return x


def paths(tree: Any) -> list[tuple[tuple[str, ...], Any]]:
    return [(tuple(k.key for k in p), x) for p, x in jax.tree_util.tree_leaves_with_path(tree)]


def unflatten(items: dict[tuple[str, ...], np.ndarray]) -> dict:
    out: dict = {}
    for path, value in items.items():
        node = out
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return out


def clean_state_dict(state: dict) -> dict[str, np.ndarray]:
    """Unwrap ``state_dict``, drop a ``module.`` prefix and BN's ``num_batches_tracked`` counters, and give a
    transformers ``ResNetModel``'s keys the ``resnet.`` prefix of ``ResNetForImageClassification``."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    out = {}
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key.startswith(("embedder.", "encoder.")):
            key = "resnet." + key
        if not key.endswith("num_batches_tracked"):
            out[key] = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
    return out


def variables_from_torch(state: dict, model: models.ResNet, layout: str, image_size: int) -> dict:
    """Map a state dict onto ``model``'s (unrolled) variables, or raise listing every offending key. A state dict
    without a classifier (a backbone) gets a zero one."""
    abstract = models.abstract_variables(model.clone(scan=False), image_size)
    state = clean_state_dict(state)
    expected = {torch_key(p, layout): (p, to_torch_layout(np.zeros(x.shape, np.int8), p[-1]).shape)
                for p, x in paths(abstract)}
    if not any(path[1] == "fc" and k in state for k, (path, _) in expected.items()):
        state.update({k: np.zeros(shape, np.float32) for k, (path, shape) in expected.items() if path[1] == "fc"})
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(f"{k} {tuple(state[k].shape)} (expected {shape})" for k, (_, shape) in expected.items()
                       if k in state and tuple(state[k].shape) != shape)
    if missing or unexpected or misshaped:
        parts = [f"{label}: {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
                 if keys]
        raise ConversionError("the state dict does not match the model: " + "; ".join(parts))
    return unflatten({path: from_torch_layout(state[k], path[-1]).astype(np.float32)
                      for k, (path, _) in expected.items()})


def torch_state_from_variables(variables: dict, layout: str) -> dict[str, np.ndarray]:
    """Our (unrolled) variables -> a state dict of numpy arrays in ``layout``."""
    return {torch_key(p, layout): np.ascontiguousarray(to_torch_layout(np.asarray(x), p[-1]))
            for p, x in paths(variables)}


# ------------------------------------------------------------------------------------ which network it holds

_BLOCK = {"cifar": r"layer(\d+)\.(\d+)\.", "torchvision": r"layer(\d+)\.(\d+)\.",
          "transformers": r"resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\."}


def detect_layout(state: dict[str, np.ndarray]) -> str:
    """The layout of a cleaned state dict, from its keys."""
    if "resnet.embedder.embedder.convolution.weight" in state:
        return "transformers"
    if "conv1.weight" in state and "layer1.0.conv1.weight" in state:
        return "cifar" if "layer4.0.conv1.weight" not in state and "fc.weight" not in state else "torchvision"
    sample = ", ".join(sorted(state)[:5])
    raise ConversionError(f"not a ResNet state dict of a known layout ({', '.join(LAYOUTS)}): its keys begin "
                          f"{sample}")


def _first_conv(state: dict, layout: str, stage: int, k: int) -> str:
    if layout == "transformers":
        return f"resnet.encoder.stages.{stage}.layers.0.layer.{k}.convolution.weight"
    return f"layer{stage + 1}.0.conv{k + 1}.weight"


def describe(state: dict[str, np.ndarray], layout: str | None = None, hf_config: dict | None = None) -> dict:
    """The network a cleaned state dict holds: ``layout``, ``model`` (a registry name), ``options`` (for
    ``create_model``, with architecture overrides where the depths or widths are not a registry network's),
    ``num_classes`` (0: no classifier) and ``version``. ``hf_config``: a transformers config.json, which says where
    bottlenecks downsample."""
    layout = layout or detect_layout(state)
    blocks: dict[int, set[int]] = {}
    for key in state:
        if m := re.match(_BLOCK[layout], key):  # stages counted from 0
            blocks.setdefault(int(m[1]) - (layout != "transformers"), set()).add(int(m[2]))
    stages = sorted(blocks)
    if not stages:
        raise ConversionError(f"the {layout} state dict holds no residual blocks")
    first = stages[0]
    stage_sizes = tuple(len(blocks[s]) for s in stages)
    bottleneck = _first_conv(state, layout, first, 2) in state
    widths = tuple(int(state[_first_conv(state, layout, s, 0)].shape[0]) for s in stages)
    stem_key = "resnet.embedder.embedder.convolution.weight" if layout == "transformers" else "conv1.weight"
    stem_width = int(state[stem_key].shape[0])
    fc_key = {"cifar": "linear.weight", "torchvision": "fc.weight", "transformers": "classifier.1.weight"}[layout]
    num_classes = int(state[fc_key].shape[0]) if fc_key in state else 0
    options = layout_options(layout)
    if hf_config:
        if hf_config.get("downsample_in_first_stage"):
            raise ConversionError("config.json: downsample_in_first_stage=true (a stride-2 first stage) is not a "
                                  "network of the paper's family")
        if hf_config.get("hidden_act", "relu") != "relu":
            raise ConversionError(f"config.json: hidden_act={hf_config['hidden_act']!r}; the paper's networks use relu")
        options["version"] = "v1" if hf_config.get("downsample_in_bottleneck") else "v1.5"
    if layout == "cifar":
        if stem_width != widths[0]:
            raise ConversionError(f"a CIFAR network's stem has the first stage's width ({widths[0]}), not {stem_width}")
        base = {"stem": "cifar", "bottleneck": False}
    else:
        base = {"stem": "imagenet", "bottleneck": bottleneck}
    fields = dict(stage_sizes=stage_sizes, widths=widths, stem_width=stem_width if layout != "cifar" else 64)
    candidates = [name for name, f in models.MODELS.items()
                  if f.get("residual", True) and f["stem"] == base["stem"]
                  and f.get("bottleneck", False) == base["bottleneck"]]
    exact = [n for n in candidates if all(models.MODELS[n].get(k, 64) == v for k, v in fields.items())]
    name = exact[0] if exact else min(candidates, key=lambda n: sum(models.MODELS[n]["stage_sizes"]))
    overrides = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()
                 if models.MODELS[name].get(k, 64) != v}
    return dict(layout=layout, model=name, options=dict(options, **overrides), num_classes=num_classes)
