"""Fine-tuning: a new run's variables from another run's (or a converted) checkpoint (``init_from``)."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import jax
import numpy as np

from resnet_jax import checkpoint, models, storage
from resnet_jax.training.errors import ConfigError

if TYPE_CHECKING:
    import ml_collections

log = logging.getLogger(__name__)


def load_init_from(config: ml_collections.ConfigDict, model: models.ResNet) -> dict:
    """The ``init_from`` checkpoint's ``variables``, checked against ``model`` (flat, ``params/stage1/...`` keys),
    and the input normalisation (``mean``, ``std``) its network was trained with. A classifier of another class
    count is left out, to keep its fresh initialisation; anything else that does not fit raises ConfigError."""
    from flax import traverse_util

    from resnet_jax import weights

    spec = config.init_from
    path, step = spec, "latest"
    if re.search(r":(\d+|best|latest)$", spec) and not spec.startswith("hf:"):
        path, step = spec.rsplit(":", 1)
    try:
        path = weights.pretrained_workdir(path)  # a weights file, a model folder, hf:<repo>: its cached conversion
        source, variables, info = checkpoint.load_checkpoint(path, step)
    except (checkpoint.CheckpointError, weights.ConversionError, storage.StorageError) as e:
        raise ConfigError(f"init_from={spec!r}: {e}") from e
    if info["model"] != config.model:
        raise ConfigError(f"init_from={spec!r} holds a {info['model']}, but the config trains a {config.model}")
    # a network outside the table: the config must ask for the same one
    source_arch = {k: v for k, v in info.get("model_options", {}).items() if k in models.ARCHITECTURE}
    wanted_arch = {k: list(getattr(model, k)) if k != "stem_width" else model.stem_width for k in source_arch}
    if source_arch != wanted_arch:
        raise ConfigError(f"init_from={spec!r} holds a {info['model']} with {source_arch}; set the same in the "
                          f"config (e.g. --config.stage_sizes, --config.widths)")
    if source.scan != model.scan:
        variables = models.convert_layout(variables, scan=model.scan)
    loaded = traverse_util.flatten_dict(variables, sep="/")
    wanted = traverse_util.flatten_dict(models.abstract_variables(model, config.image_size), sep="/")
    wrong = [k for k, v in wanted.items()
             if k.split("/")[1] != "fc" and (k not in loaded or loaded[k].shape != v.shape)]
    if wrong:
        raise ConfigError(f"init_from={spec!r} does not fit {config.model} with these options: {wrong[:3]}")
    head = [k for k in wanted if k.split("/")[1] == "fc"]
    if not all(k in loaded and loaded[k].shape == wanted[k].shape for k in head):
        loaded = {k: v for k, v in loaded.items() if k not in head}
        log.info("init_from %s: the classifier fc is re-initialised for %d classes (the checkpoint has %d)", spec,
                 model.num_classes, info["num_classes"])
    log.info("initialising from %s step %d", path, info["step"])
    loaded = {k: v for k, v in loaded.items() if k in wanted}
    mean = np.asarray(info["preprocessing"]["mean"], np.float32)
    if mean.ndim == 3 and mean.shape[:2] != (config.image_size, config.image_size):
        mean = mean.mean(axis=(0, 1))  # a per-pixel mean of another image size: its channel means
    return dict(variables=loaded, mean=mean, std=np.asarray(info["preprocessing"]["std"], np.float32))


def merge_variables(variables: dict, loaded: dict) -> dict:
    """``variables`` with the tensors of ``loaded`` (flat keys) in their place, same dtypes and shardings."""
    from flax import traverse_util

    flat = traverse_util.flatten_dict(variables, sep="/")
    for key, value in loaded.items():
        flat[key] = jax.device_put(np.asarray(value, flat[key].dtype), flat[key].sharding)
    return traverse_util.unflatten_dict(flat, sep="/")
