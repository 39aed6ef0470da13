"""Converting pretrained weights into self-describing Orbax checkpoints, and checkpoints back into PyTorch
state dicts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from resnet_jax import checkpoint, models, quiet, storage
from resnet_jax.class_names import imagenet_class_names, imagenet_names
from resnet_jax.weights import files as files_lib
from resnet_jax.weights.exporter import unsupported
from resnet_jax.weights.layouts import (
    ConversionError,
    clean_state_dict,
    describe,
    layout_of,
    torch_state_from_variables,
    variables_from_torch,
)

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TORCH_MEAN, TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # on [0, 1] inputs


def _class_names(layout: str, num_classes: int, config: dict | None) -> tuple[list[str], list[str] | None]:
    """Names (and dataset ids, for ILSVRC's wnids) of a classifier's outputs, from ``config`` (transformers'
    ``id2label``, timm's ``label_names``) where it names them all."""
    if layout == "cifar" and num_classes == 10:
        return CIFAR10_CLASSES, None
    if layout != "cifar" and num_classes == 1000:  # the ILSVRC-2012 classes, in their usual (sorted wnid) order
        return imagenet_class_names(), sorted(imagenet_names())
    labels = (config or {}).get("id2label") or {}
    if len(labels) == num_classes:
        return [str(labels.get(str(i), labels.get(i, i))) for i in range(num_classes)], None
    listed = (config or {}).get("label_names") or []
    if len(listed) == num_classes:
        return [str(n) for n in listed], None
    return [str(i) for i in range(num_classes)], None


def import_weights(source: str, workdir: str, model_name: str | None = None,
                   class_names: Sequence[str] | None = None, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None, scan: bool = False) -> dict:
    """Convert ``source`` (a .safetensors or PyTorch file, a saved model folder, or ``hf:<repo>[@rev]``) into a
    checkpoint (step 0) in ``workdir``; returns its description. The architecture, class count and layout come
    from the weights (and config.json); ``model_name``, when given, must agree. Running statistics come along."""
    found = files_lib.locate(source)
    state = clean_state_dict(files_lib.read_state_dict(found.weights))
    hf_config = found.config if (found.config or {}).get("model_type") == "resnet" else None
    arch = describe(state, hf_config=hf_config)
    layout = arch["layout"]
    if model_name is not None:
        if model_name not in models.MODELS:
            raise ConversionError(f"unknown model {model_name!r}; valid names: {', '.join(models.list_models())}")
        held = models.describe(arch["model"], arch["options"])
        if held != model_name:
            raise ConversionError(f"{source} holds a {held} ({layout} layout), not a {model_name}; leave out "
                                  f"--model to convert what it holds")
    num_classes = arch["num_classes"] or len((hf_config or {}).get("id2label") or {}) or 1000
    names, ids = _class_names(layout, num_classes, found.config)
    if class_names is not None:
        if len(class_names) != num_classes:
            raise ConversionError(f"{len(class_names)} class names given for a {num_classes}-class classifier")
        names, ids = list(class_names), None
    options = dict(arch["options"], scan=scan)
    model = models.create_model(arch["model"], num_classes=num_classes, **options)
    stated = files_lib.preprocessing(found, layout)
    image_size = stated.get("image_size") or (32 if layout == "cifar" else 224)
    variables = variables_from_torch(state, model, layout, 32 if layout == "cifar" else 64)
    if scan:
        variables = models.convert_layout(variables, scan=True)
    mean = mean or stated.get("mean") or TORCH_MEAN
    std = std or stated.get("std") or TORCH_STD
    pre = dict(train_preset="cifar" if layout == "cifar" else "inception",
               eval_preset="cifar" if layout == "cifar" else "center", image_size=image_size,
               mean=[255 * m for m in mean], std=[255 * s for s in std])
    if "resize_size" in stated:
        pre["resize_size"] = stated["resize_size"]
    meta = dict(model=arch["model"], model_options=options, num_classes=num_classes, class_names=list(names),
                class_ids=ids or list(names), preprocessing=pre, dataset={}, step=0,
                source=dict(framework="torch", layout=layout, classifier=bool(arch["num_classes"]),
                            file=source if source.startswith("hf:") else storage.resolve(source)))
    if storage.listdir(checkpoint.checkpoint_dir(workdir)):
        raise ConversionError(f"{checkpoint.checkpoint_dir(workdir)} already holds checkpoints; use a new --workdir")
    with quiet.library_warnings():  # Orbax's warning that a step without metrics cannot rank as the best
        mngr = checkpoint.manager(workdir, async_save=False)
        checkpoint.save(mngr, 0, variables, meta)
        mngr.close()
    return meta


def export_torch(workdir: str, output: str, step: int | str = "latest",
                 layout: str | None = None) -> dict[str, np.ndarray]:
    """Write a checkpoint's variables as a PyTorch state dict (by default, in the layout it was imported from, or
    the one its model name implies)."""
    try:
        import torch
    except ImportError:
        raise ConversionError("writing a PyTorch file needs torch: pip install torch") from None
    model, variables, info = checkpoint.load_checkpoint(workdir, step)
    if model.scan:
        variables = models.convert_layout(variables, scan=False)
    layout = layout or info.get("source", {}).get("layout") or layout_of(info["model"])
    why = unsupported(model, layout) if layout == "torchvision" else None
    if why:  # it would load with strict=True and compute another function, or not load at all
        raise ConversionError(f"cannot write {info['model']} in the torchvision layout: {why}")
    state = torch_state_from_variables(variables, layout)
    import io

    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(v.copy()) for k, v in state.items()}, buffer)
    storage.write_bytes(storage.resolve(output, "--output"), buffer.getvalue())  # whole, locally or in a bucket
    return state
