"""Writing a network out so that other libraries load it: a folder in Hugging Face transformers' layout
(``ResNetForImageClassification``) or timm's, with the configs those libraries read and a model card. No PyTorch
is needed to write either.

Only what a layout can express is written; anything else is refused in one line before a file is touched:
- transformers and timm hold residual ImageNet networks (7x7 stem, max-pool) whose shortcuts project exactly
  where the dimensions change (option B, Sec. 3.3): not plain nets, not option A (zero-padding) or C (projections
  everywhere), not the CIFAR nets (3x3 stem, no max-pool);
- transformers says where a bottleneck downsamples (``downsample_in_bottleneck``: the paper's v1 in the first 1x1,
  v1.5 in the 3x3); timm's and torchvision's bottlenecks are v1.5 only, and timm's architectures are the paper's
  depths at its widths.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from resnet_jax import models, storage
from resnet_jax.weights.layouts import ConversionError, torch_state_from_variables

EXPORT_LAYOUTS = ("transformers", "timm")


def _per_channel(values: Any, what: str) -> list[float]:
    values = np.asarray(values, np.float64)
    if values.shape != (3,):
        raise ConversionError(f"the checkpoint's input {what} has shape {values.shape} (a per-pixel {what}); the "
                              f"transformers and timm image processors take one value per RGB channel")
    return (values / 255).tolist()  # ours are on the 0-255 scale, theirs on [0, 1]


def unsupported(model: models.ResNet, layout: str) -> str | None:
    """Why ``layout`` cannot express ``model`` (None: it can). ``layout``: transformers, timm or torchvision."""
    if not model.residual:
        return "plain networks have no shortcuts; these libraries' ResNets are residual"
    if model.stem != "imagenet":
        return "CIFAR networks (3x3 stem, no max-pool, Sec. 4.2) are not these libraries' ResNets"
    if model.shortcut != "B":
        what = "zero-padding (A)" if model.shortcut == "A" else "projections on every shortcut (C)"
        return f"option-{model.shortcut} shortcuts ({what}); these libraries project only where dimensions change (B)"
    if model.bn_epsilon != 1e-5:
        return f"batch-norm epsilon {model.bn_epsilon}; these libraries use 1e-5"
    if layout in ("timm", "torchvision") and model.bottleneck and model.version == "v1":
        return (f"the paper's v1 bottleneck downsamples in its first 1x1 convolution; {layout}'s downsamples in "
                f"the 3x3 (v1.5), so the weights would load and compute another function: use the transformers "
                f"layout, which states downsample_in_bottleneck")
    if layout == "timm":
        name = timm_architecture(model)
        if name is None:
            return (f"timm has no ResNet with {list(model.stage_sizes)} blocks of widths {list(model.widths)} and "
                    f"stem width {model.stem_width}")
    return None


def timm_architecture(model: models.ResNet) -> str | None:
    """timm's name for the registry network ``model`` is (resnet18 ... resnet152), if it is one."""
    for name, fields in models.MODELS.items():
        if (name.startswith("resnet") and tuple(fields["stage_sizes"]) == tuple(model.stage_sizes)
                and tuple(fields["widths"]) == tuple(model.widths) and model.stem_width == 64
                and fields["bottleneck"] == model.bottleneck):
            return name
    return None


def _state(model: models.ResNet, variables: dict, layout: str) -> dict[str, np.ndarray]:
    """The variables as a state dict of ``layout`` (transformers, or torchvision's names for timm), with BN's
    ``num_batches_tracked`` buffers that PyTorch modules carry."""
    if model.scan:
        variables = models.convert_layout(variables, scan=False)
    state = torch_state_from_variables(variables, "transformers" if layout == "transformers" else "torchvision")
    state = {k: v.astype(np.float32) for k, v in state.items()}
    for key in [k for k in state if k.endswith("running_var")]:
        state[key.removesuffix("running_var") + "num_batches_tracked"] = np.zeros((), np.int64)
    return state


def _configs(model: models.ResNet, info: dict, layout: str) -> dict[str, dict]:
    """config.json (and, for transformers, preprocessor_config.json) for ``layout``."""
    pre = info["preprocessing"]
    mean, std = _per_channel(pre["mean"], "mean"), _per_channel(pre["std"], "std")
    size = int(pre["image_size"])
    resize = int(pre.get("resize_size") or round(size * 256 / 224))
    crop_pct = size / resize  # both libraries resize the shorter side to floor(size / crop_pct)
    if int(size / crop_pct) != resize:  # float rounding fell below: a hair less keeps the floor (and round) at resize
        crop_pct = size / (resize + 0.25)
    names = [str(n) for n in info.get("class_names") or range(model.num_classes)]
    if layout == "transformers":
        widths = [w * (4 if model.bottleneck else 1) for w in model.widths]
        config = {"architectures": ["ResNetForImageClassification"], "model_type": "resnet", "num_channels": 3,
                  "embedding_size": model.stem_width, "hidden_sizes": widths, "depths": list(model.stage_sizes),
                  "layer_type": "bottleneck" if model.bottleneck else "basic", "hidden_act": "relu",
                  "downsample_in_first_stage": False,
                  "downsample_in_bottleneck": model.bottleneck and model.version == "v1",
                  "id2label": {str(i): n for i, n in enumerate(names)},
                  "label2id": {n: i for i, n in enumerate(names)}, "torch_dtype": "float32"}
        # ConvNextImageProcessor (as microsoft/resnet-50): shorter side to size / crop_pct, then the central crop
        processor = {"image_processor_type": "ConvNextImageProcessor", "do_resize": True,
                     "size": {"shortest_edge": size}, "crop_pct": crop_pct, "resample": 2, "do_rescale": True,
                     "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": mean, "image_std": std}
        return {"config.json": config, "preprocessor_config.json": processor}
    arch = timm_architecture(model)
    config = {"architecture": arch, "num_classes": model.num_classes,
              "num_features": model.widths[-1] * (4 if model.bottleneck else 1), "global_pool": "avg",
              "label_names": names,
              "pretrained_cfg": {"tag": "resnet_jax", "custom_load": False, "input_size": [3, size, size],
                                 "fixed_input_size": False, "interpolation": "bilinear", "crop_pct": crop_pct,
                                 "crop_mode": "center", "mean": mean, "std": std, "num_classes": model.num_classes,
                                 "pool_size": [max(1, size // 32)] * 2, "first_conv": "conv1", "classifier": "fc"}}
    return {"config.json": config}


def model_card(model: models.ResNet, info: dict, layout: str) -> str:
    """README.md for the folder: the network, its training recipe and data, and the run's own evaluation."""
    config, dataset, pre = info.get("config") or {}, info.get("dataset") or {}, info["preprocessing"]
    lines = [f"# {models.describe(info['model'], info.get('model_options') or {})}", "",
             f"A {'residual' if model.residual else 'plain'} network of He et al., *Deep Residual Learning for Image "
             f"Recognition* (CVPR 2016), trained with resnet_jax (JAX/Flax) and written in "
             f"the {layout} layout.", "",
             "## Architecture", "",
             f"- blocks per stage {list(model.stage_sizes)}, widths {list(model.widths)}, "
             f"{'bottleneck' if model.bottleneck else 'basic'} blocks"
             + (f" ({model.version}: downsampling in the {'first 1x1' if model.version == 'v1' else '3x3'})"
                if model.bottleneck else ""),
             f"- option-{model.shortcut} shortcuts (Sec. 3.3), {model.num_classes} classes",
             f"- input {pre['image_size']} px, mean {_per_channel(pre['mean'], 'mean')} and std "
             f"{_per_channel(pre['std'], 'std')} on [0, 1] RGB", ""]
    if config:
        lines += ["## Training", "",
                  f"- data: {dataset.get('dataset', config.get('dataset'))} ({dataset.get('train_split', '')})",
                  f"- {config.get('num_train_steps')} iterations of batch {config.get('batch_size')}, SGD lr "
                  f"{config.get('learning_rate')} (momentum {config.get('momentum')}, weight decay "
                  f"{config.get('weight_decay')}), seed {config.get('seed')}", ""]
    if info.get("evaluation"):
        lines += ["## Evaluation", "", "| view | top-1 error | top-5 error |", "|---|---|---|"]
        lines += [f"| {e.get('view', k)} | {e['top1_error']:.2f} % | {e['top5_error']:.2f} % |"
                  for k, e in info["evaluation"].items()]
        lines.append("")
    lines += [f"Checkpoint step {info.get('step')}.", ""]
    return "\n".join(lines)


def save_pretrained(model: models.ResNet, variables: dict, info: dict, folder: str, layout: str) -> list[str]:
    """Write ``folder`` (created if needed) with ``model.safetensors``, the layout's configs and ``README.md``; the
    files that were written. A network the layout cannot express is refused before anything is written."""
    if layout not in EXPORT_LAYOUTS:
        raise ConversionError(f"layout must be one of {', '.join(EXPORT_LAYOUTS)}, got {layout!r}")
    why = unsupported(model, layout)
    if why:
        raise ConversionError(f"cannot write {info['model']} in the {layout} layout: {why}")
    from safetensors.numpy import save

    files = {"model.safetensors": save(_state(model, variables, layout), metadata={"format": "pt"})}
    files.update({name: json.dumps(c, indent=2).encode() for name, c in _configs(model, info, layout).items()})
    files["README.md"] = model_card(model, info, layout).encode()
    folder = storage.resolve(folder, "output folder")
    for name, content in files.items():  # each file whole or not at all, locally or in a bucket
        storage.write_bytes(storage.join(folder, name), content)
    return sorted(files)
