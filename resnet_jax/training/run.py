"""Run preparation: the config and workdir checked, the data described and the model built, before anything
compiles; and reading the training batches of a run from the host pipeline."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import checkpoint, class_names, conv, data, models, storage
from resnet_jax.mesh import AXIS
from resnet_jax.training.errors import ConfigError
from resnet_jax.training.init import load_init_from
from resnet_jax.training.on_device import PRESETS as ON_DEVICE_PRESETS
from resnet_jax.training.periodic import profile_steps
from resnet_jax.training.recipe import frozen_parts, model_options

if TYPE_CHECKING:
    import ml_collections

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Run:
    """Everything a run derives from its config and workdir, checked before anything compiles."""

    config: ml_collections.ConfigDict
    workdir: str
    model: models.ResNet
    train_source: data.Source
    eval_source: data.Source
    meta: dict
    mean: np.ndarray
    std: np.ndarray
    steps_per_epoch: int
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] | None = None  # on_device_data: "train"/"eval" splits, decoded
    init: dict | None = None  # init_from, for a new run: load_init_from's variables (flat keys), mean and std


POSITIVE = ("batch_size", "eval_batch_size", "num_train_steps", "eval_every_steps", "checkpoint_every_steps",
            "log_every_steps", "keep_checkpoints", "steps_per_loop")
REQUIRED = ("model", "dataset", "batch_size", "num_train_steps", "eval_every_steps", "checkpoint_every_steps",
            "log_every_steps", "seed", "dtype")


def check_config(config: ml_collections.ConfigDict) -> None:
    """ConfigError naming the first field that cannot run (before any data is read)."""
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        raise ConfigError(f"config lacks field(s) {missing}")
    for key in POSITIVE:
        value = config.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    if config.model not in models.MODELS:
        raise ConfigError(f"unknown model {config.model!r}; valid names: {', '.join(models.list_models())}")
    if config.batch_size % jax.device_count():
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by the {jax.device_count()} devices")
    if config.eval_batch_size % jax.device_count():
        raise ConfigError(f"eval_batch_size {config.eval_batch_size} is not divisible by the "
                          f"{jax.device_count()} devices")
    if config.train_preset not in data.TRAIN_PRESETS:
        raise ConfigError(f"train_preset must be one of {data.TRAIN_PRESETS}, got {config.train_preset!r}")
    if config.on_device_data and config.train_preset not in ON_DEVICE_PRESETS:
        raise ConfigError(f"on_device_data augments with the {' and '.join(ON_DEVICE_PRESETS)} presets, not "
                          f"{config.train_preset!r}; set train_preset to one of them")
    if config.eval_preset not in ("cifar", "center"):
        raise ConfigError(f"eval_preset during training must be 'cifar' or 'center', got {config.eval_preset!r}")
    try:
        jnp.dtype(config.dtype)
    except TypeError as e:
        raise ConfigError(f"dtype {config.dtype!r} is not a dtype") from e
    if config.get("conv_impl", "auto") not in conv.IMPLS:
        raise ConfigError(f"conv_impl must be one of {conv.IMPLS}, got {config.conv_impl!r}")
    try:  # the options and architecture overrides (no parameters are made)
        models.create_model(config.model, **model_options(config))
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from e
    profile_steps(config)
    if data.is_synthetic(config.dataset) and not config.on_device_data:
        raise ConfigError("synthetic data is generated in memory for on_device_data=True runs; set it")


def prepare(config: ml_collections.ConfigDict, workdir: str, mngr=None) -> Run:
    """Validate the config and workdir and read the data description. Raises ConfigError / DataError /
    CheckpointError with a message naming the problem; compiles nothing."""
    check_config(config)
    if profile_steps(config) and storage.is_remote(workdir):
        raise ConfigError(f"profile_steps: traces are written to local workdirs only (the profiler writes them "
                          f"with its own file layer, which this project does not test with buckets), not to "
                          f"{workdir}: profile with a local --workdir")
    verify = config.get("verify_images", False)
    train_source, eval_source = (data.get_source(config.dataset, split, config.data_dir, verify=verify,
                                                 image_size=config.image_size)
                                 for split in (config.train_split, config.eval_split))
    if train_source.num_examples < config.batch_size:
        raise ConfigError(f"{config.dataset}:{config.train_split} has {train_source.num_examples} examples, "
                          f"fewer than batch_size {config.batch_size}")
    arrays = None
    if config.on_device_data:  # small images: the train split decoded once, the evaluation's views made once, here
        arrays = {"train": data.load_arrays(train_source)}
        images = arrays["train"][0]
        if config.train_preset == "cifar" and images.shape[1:3] != (config.image_size, config.image_size):
            raise ConfigError(f"on_device_data: {config.dataset}:{config.train_split} holds {images.shape[2]}x"
                              f"{images.shape[1]} images, but image_size is {config.image_size} (the cifar preset "
                              f"crops at the stored size)")
        arrays["eval"] = data.load_views(eval_source, config.eval_preset, config.image_size)
    options = model_options(config)
    # conv_impl changes speed, not parameters or results: it is not part of the checkpoint's model options
    model = models.create_model(config.model, num_classes=len(train_source.class_names),
                                conv_impl=config.get("conv_impl", "auto"), **options)
    model = model.clone(frozen=frozen_parts(config, model))  # like conv_impl: not part of the architecture
    meta = None
    latest = mngr.latest_step() if mngr is not None else None
    init = load_init_from(config, model) if config.get("init_from") and latest is None else None
    if latest is not None:
        meta = checkpoint.read_meta(mngr, latest)
        for key in ("model", "model_options", "num_classes"):
            want = {"model": config.model, "model_options": options, "num_classes": model.num_classes}[key]
            if meta.get(key) != want:
                raise ConfigError(f"{workdir} holds a run with {key}={meta.get(key)!r}, but the config asks for "
                                  f"{want!r}; use another --workdir")
        saved_batch = meta.get("data_position", {}).get("batch_size")
        if saved_batch not in (None, config.batch_size):
            log.warning("resuming step %d of a run trained with batch_size %d at batch_size %d: the data order and "
                        "epoch-based schedule boundaries change from here on", latest, saved_batch,
                        config.batch_size)
        mean, std = np.asarray(meta["preprocessing"]["mean"]), np.asarray(meta["preprocessing"]["std"])
    elif init is not None:  # a fine-tuned network sees its inputs normalised as in its pre-training
        mean, std = init["mean"], init["std"]
    elif config.normalization == "pixel_mean":  # Sec. 4.2: subtract the per-pixel mean of the training images
        log.info("computing the per-pixel mean of %s:%s", config.dataset, config.train_split)
        mean = (arrays["train"][0].mean(axis=0, dtype=np.float64).astype(np.float32) if arrays
                else data.pixel_mean(train_source))
        std = np.ones(3, np.float32)
    elif config.normalization == "mean_std":
        mean, std = np.asarray(config.mean, np.float32), np.asarray(config.std, np.float32)
    else:
        raise ConfigError(f"normalization must be 'pixel_mean' or 'mean_std', got {config.normalization!r}")
    if meta is None:
        root = config.dataset[len("folder:"):] if config.dataset.startswith("folder:") else None
        meta = dict(model=config.model, model_options=options, num_classes=model.num_classes,
                    class_names=class_names.readable(train_source.class_names, root),
                    class_ids=list(train_source.class_names),
                    preprocessing=dict(train_preset=config.train_preset, eval_preset=config.eval_preset,
                                       image_size=config.image_size, mean=np.asarray(mean).tolist(),
                                       std=np.asarray(std).tolist()),
                    dataset=dict(dataset=config.dataset, data_dir=config.data_dir, train_split=config.train_split,
                                 eval_split=config.eval_split))
    meta["config"] = config.to_dict()
    if config.sync_batch_stats:
        model = model.clone(bn_axis_name=AXIS)
    if init is not None:
        meta["init_from"] = config.init_from
    return Run(config, workdir, model, train_source, eval_source, meta, np.asarray(mean, np.float32),
               np.asarray(std, np.float32), train_source.num_examples // config.batch_size, arrays, init)


def train_iterator(run: Run, start_step: int) -> Iterator[dict[str, np.ndarray]]:
    """This process's slices of the training batches from ``start_step`` on, from the host pipeline."""
    config = run.config
    for batch in data.train_batches(run.train_source, config.batch_size, config.train_preset, config.image_size,
                                    seed=config.seed, start_step=start_step):
        batch.pop("mask")
        yield batch
