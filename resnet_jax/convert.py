"""Import pretrained PyTorch ResNets into self-describing Orbax checkpoints, and export them back.

    python -m resnet_jax.convert --from=torch --model=cifar_resnet20 --input=resnet20.th --workdir=out/
    python -m resnet_jax.convert --to=torch --workdir=out/ --output=resnet20.pt

Layouts (chosen by the model name):
  ``cifar``        the widely used CIFAR option-A ResNets: ``conv1``, ``bn1``, ``layer{1,2,3}.{i}.conv{1,2}``,
                   ``bn{1,2}``, ``linear`` (cifar_resnet20 ... 1202);
  ``torchvision``  ``conv1``, ``bn1``, ``layer{1..4}.{i}.conv{1,2,3}``, ``bn{1,2,3}``, ``downsample.{0,1}``, ``fc``
                   (resnet18 ... 152, with torchvision's v1.5 stride placement and option-B projections).
A ``state_dict`` wrapper and a ``module.`` (DataParallel) prefix are accepted. Files are read with
``torch.load(weights_only=True)``: no pickled code runs.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from resnet_jax import checkpoint, data, models
from resnet_jax.class_names import imagenet_class_names, imagenet_names

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TORCH_MEAN, TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # on [0, 1] inputs
BN_LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


class ConversionError(ValueError):
    """A state dict that does not match the requested model."""


def layout_of(model_name: str) -> str:
    return "cifar" if model_name.startswith("cifar_") else "torchvision"


def layout_options(layout: str) -> dict:
    """The model options a layout's source implementation uses."""
    return {"shortcut": "A"} if layout == "cifar" else {"shortcut": "B", "version": "v1.5"}


def torch_key(path: tuple[str, ...], layout: str) -> str:
    """Our variable path (collection, module..., leaf) -> the PyTorch state-dict key."""
    _, *modules, leaf = path
    names = []
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
    return ".".join([*names, "weight" if leaf == "kernel" else BN_LEAVES[leaf]])


def to_torch_layout(x: np.ndarray, leaf: str) -> np.ndarray:
    """Flax HWIO conv / (in, out) dense kernels -> PyTorch OIHW / (out, in)."""
    if leaf == "kernel":
        return x.transpose(3, 2, 0, 1) if x.ndim == 4 else x.T
    return x


def from_torch_layout(x: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel":
        return x.transpose(2, 3, 1, 0) if x.ndim == 4 else x.T
    return x


def _paths(tree: Any) -> list[tuple[tuple[str, ...], Any]]:
    return [(tuple(k.key for k in p), x) for p, x in jax.tree_util.tree_leaves_with_path(tree)]


def _unflatten(items: dict[tuple[str, ...], np.ndarray]) -> dict:
    out: dict = {}
    for path, value in items.items():
        node = out
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return out


def clean_state_dict(state: dict) -> dict[str, np.ndarray]:
    """Unwrap ``state_dict``, drop a ``module.`` prefix and BN's ``num_batches_tracked`` counters."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    out = {}
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if not key.endswith("num_batches_tracked"):
            out[key] = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
    return out


def variables_from_torch(state: dict, model: models.ResNet, layout: str, image_size: int) -> dict:
    """Map a PyTorch state dict onto ``model``'s (unrolled) variables, or raise listing every offending key."""
    abstract = models.abstract_variables(model.clone(scan=False), image_size)
    state = clean_state_dict(state)
    expected = {torch_key(p, layout): (p, to_torch_layout(np.zeros(x.shape, np.int8), p[-1]).shape)
                for p, x in _paths(abstract)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(f"{k} {tuple(state[k].shape)} (expected {shape})" for k, (_, shape) in expected.items()
                       if k in state and tuple(state[k].shape) != shape)
    if missing or unexpected or misshaped:
        parts = [f"{label}: {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
                 if keys]
        raise ConversionError("the state dict does not match the model: " + "; ".join(parts))
    return _unflatten({path: from_torch_layout(state[k], path[-1]).astype(np.float32)
                       for k, (path, _) in expected.items()})


def torch_state_from_variables(variables: dict, layout: str) -> dict[str, np.ndarray]:
    """Our (unrolled) variables -> a PyTorch state dict of numpy arrays."""
    return {torch_key(p, layout): np.ascontiguousarray(to_torch_layout(np.asarray(x), p[-1]))
            for p, x in _paths(variables)}


def _torch():
    try:
        import torch
    except ImportError:
        sys.exit("error: PyTorch is needed to read or write .pt/.th files: pip install torch")
    return torch


def hub_file(spec: str) -> str:
    """``hf:<repo>[@revision]`` -> the local path of its ``model.safetensors`` (downloaded, or from the Hugging
    Face cache; offline with ``HF_HUB_OFFLINE=1``)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ConversionError("reading from the Hugging Face hub needs huggingface_hub: pip install huggingface_hub "
                              "safetensors") from None
    repo, _, revision = spec[len("hf:"):].partition("@")
    try:
        return hf_hub_download(repo, "model.safetensors", revision=revision or None)
    except Exception as e:
        raise ConversionError(f"cannot get model.safetensors of {repo} from the Hugging Face hub or its cache: "
                              f"{type(e).__name__}: {checkpoint.first_line(e)}") from e


def read_state_dict(path: str) -> dict[str, Any]:
    """A state dict from ``path`` by its content: safetensors (read with the safetensors library's numpy API; no
    PyTorch needed) or PyTorch's own format (with ``torch.load(weights_only=True)``, which runs no pickled code)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise ConversionError(f"cannot read {path}: {e.strerror}") from e
    if len(head) > 8 and head[8:9] == b"{":  # safetensors: an 8-byte header length, then the JSON header
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise ConversionError("reading .safetensors needs the safetensors package: pip install safetensors") \
                from None
        try:
            return load_file(path)
        except Exception as e:
            raise ConversionError(f"cannot read {path} as safetensors: {checkpoint.first_line(e)}") from e
    try:
        import torch
    except ImportError:
        raise ConversionError(f"{path} is a PyTorch file (not safetensors): reading it needs torch (pip install "
                              f"torch), or convert it to .safetensors where torch is installed") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        detail = next((lines[i + 1] for i, line in enumerate(lines[:-1]) if line.endswith("WeightsUnpickler error:")),
                      lines[0])  # torch's own reason, without its advice to turn the safety off
        raise ConversionError(f"cannot read {path} as a PyTorch state dict (loaded with weights_only=True, "
                              f"which runs no pickled code): {detail}") from e
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ConversionError(f"{path} holds a {type(state).__name__}, not a PyTorch state dict")
    return state


def import_torch(model_name: str, input_path: str, workdir: str, class_names: Sequence[str] | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, scan: bool = False) -> dict:
    """Convert ``input_path`` (a .safetensors or PyTorch file, or ``hf:<repo>`` on the Hugging Face hub) into a
    checkpoint (step 0) in ``workdir``; returns its description. Running statistics always come along."""
    if model_name not in models.MODELS:
        raise ConversionError(f"unknown model {model_name!r}; valid names: {', '.join(models.list_models())}")
    layout = layout_of(model_name)
    source = hub_file(input_path) if input_path.startswith("hf:") else input_path
    state = read_state_dict(source)
    fc = clean_state_dict(state).get("linear.weight" if layout == "cifar" else "fc.weight")
    num_classes = fc.shape[0] if fc is not None else (10 if layout == "cifar" else 1000)
    class_ids = None
    if class_names is None:
        if layout == "cifar" and num_classes == 10:
            class_names = CIFAR10_CLASSES
        elif layout == "torchvision" and num_classes == 1000:  # torchvision's ImageNet weights: the ILSVRC classes
            class_ids = sorted(imagenet_names())
            class_names = imagenet_class_names()
        else:
            class_names = [str(i) for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ConversionError(f"{len(class_names)} class names given for a {num_classes}-class classifier")
    options = dict(layout_options(layout), scan=scan)
    model = models.create_model(model_name, num_classes=num_classes, **options)
    image_size = 32 if layout == "cifar" else 224
    variables = variables_from_torch(state, model, layout, image_size)
    if scan:
        variables = models.convert_layout(variables, scan=True)
    meta = dict(model=model_name, model_options=options, num_classes=num_classes, class_names=list(class_names),
                class_ids=class_ids or list(class_names),
                preprocessing=dict(train_preset="cifar" if layout == "cifar" else "inception",
                                   eval_preset="cifar" if layout == "cifar" else "center", image_size=image_size,
                                   mean=[255 * m for m in (mean or TORCH_MEAN)],
                                   std=[255 * s for s in (std or TORCH_STD)]),
                dataset={}, step=0, source=dict(framework="torch", layout=layout, file=input_path if
                                                input_path.startswith("hf:") else os.path.abspath(input_path)))
    if os.path.isdir(checkpoint.checkpoint_dir(workdir)) and os.listdir(checkpoint.checkpoint_dir(workdir)):
        raise ConversionError(f"{checkpoint.checkpoint_dir(workdir)} already holds checkpoints; use a new --workdir")
    mngr = checkpoint.manager(workdir, async_save=False)
    checkpoint.save(mngr, 0, variables, meta)
    mngr.close()
    return meta


def export_torch(workdir: str, output: str, step: int | str = "latest") -> dict[str, np.ndarray]:
    """Write a checkpoint's variables as a PyTorch state dict (the layout its model name implies)."""
    torch = _torch()
    model, variables, info = checkpoint.load_checkpoint(workdir, step)
    if model.scan:
        variables = models.convert_layout(variables, scan=False)
    state = torch_state_from_variables(variables, layout_of(info["model"]))
    torch.save({k: torch.from_numpy(v.copy()) for k, v in state.items()}, output)
    return state


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--from", dest="source", choices=["torch"], help="import from this framework")
    p.add_argument("--to", dest="target", choices=["torch"], help="export a checkpoint to this framework")
    p.add_argument("--model", help="a name from resnet_jax.list_models()")
    p.add_argument("--input", help="the weights to import: .safetensors (no PyTorch needed), .pth/.th, or "
                                   "hf:<repo>[@revision] on the Hugging Face hub (e.g. hf:timm/resnet50.tv_in1k)")
    p.add_argument("--workdir", required=True, help="where the checkpoint is written (import) or read (export)")
    p.add_argument("--output", help="the PyTorch file to write (export)")
    p.add_argument("--step", default="latest")
    p.add_argument("--class_names", help="a text file with one class name per line")
    p.add_argument("--mean", type=float, nargs=3, help="input mean on [0, 1] RGB (default: ImageNet's)")
    p.add_argument("--std", type=float, nargs=3, help="input std on [0, 1] RGB (default: ImageNet's)")
    p.add_argument("--scan", action="store_true", help="store the scanned (stacked-block) layout")
    args = p.parse_args(argv)
    try:
        if args.source == "torch":
            if not (args.model and args.input):
                p.error("--from=torch needs --model and --input")
            names = None
            if args.class_names:
                with open(args.class_names) as f:
                    names = [line.strip() for line in f if line.strip()]
            meta = import_torch(args.model, args.input, args.workdir, names, args.mean, args.std, args.scan)
            print(f"wrote {args.model} ({meta['num_classes']} classes, {meta['source']['layout']} layout) to "
                  f"{checkpoint.checkpoint_dir(args.workdir)}/0")
        elif args.target == "torch":
            if not args.output:
                p.error("--to=torch needs --output")
            state = export_torch(args.workdir, args.output, args.step)
            print(f"wrote {len(state)} tensors to {args.output}")
        else:
            p.error("pass --from=torch (import) or --to=torch (export)")
    except (ConversionError, checkpoint.CheckpointError, data.DataError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
