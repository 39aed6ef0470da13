"""Training: the paper's recipes (Sec. 3.4, 4.2) with one jit-compiled step sharded over every device.

The global batch is split along a ``data`` mesh axis over all devices of all processes; parameters and
optimizer state are replicated. Inside the step (a ``shard_map``), each device normalises its local batch on
the accelerator and runs the network with batch-norm statistics over its local batch (the paper's multi-GPU
setting), or over the global batch with ``sync_batch_stats``; gradients and running statistics are averaged.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import os
import re
import signal
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax import checkpoint, class_names, conv, data, evaluation, models

if TYPE_CHECKING:
    import ml_collections

log = logging.getLogger(__name__)
AXIS = "data"


class ConfigError(ValueError):
    """A training config that cannot run (found before anything compiles)."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any

    @property
    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


# --------------------------------------------------------------------------------------------- the recipe


def model_options(config: ml_collections.ConfigDict) -> dict:
    """The ``create_model`` options a config asks for (the model's own defaults where it says nothing)."""
    options = dict(version=config.version, zero_init_residual=config.zero_init_residual, scan=config.scan,
                   remat=config.remat, dtype=config.dtype)
    if config.shortcut:
        options["shortcut"] = config.shortcut
    return options


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """Step decay by 10x at ``lr_boundaries`` (Sec. 3.4, 4.2) or cosine, after an optional warm-up."""
    base = config.learning_rate * (config.batch_size / 256 if config.lr_scaling == "linear" else 1.0)
    boundaries = ([int(e * steps_per_epoch) for e in config.lr_boundaries_epochs] if config.lr_boundaries_epochs
                  else list(config.lr_boundaries))
    warmup = config.warmup_steps
    if config.schedule == "piecewise":  # boundaries count from step 0
        main = optax.piecewise_constant_schedule(base, {b: 0.1 for b in boundaries})
    elif config.schedule == "cosine":  # decays over the steps after the warm-up
        cosine = optax.cosine_decay_schedule(base, max(1, config.num_train_steps - warmup))
        main = lambda step: cosine(jnp.maximum(step - warmup, 0))  # noqa: E731
    else:
        raise ConfigError(f"schedule must be 'piecewise' or 'cosine', got {config.schedule!r}")
    if config.warmup == "constant":  # Sec. 4.2: 0.01 until training gets going, then back to 0.1
        warm = optax.constant_schedule(config.warmup_lr)
    elif config.warmup == "linear":
        warm = optax.linear_schedule(0.0, base, max(1, warmup))
    else:
        raise ConfigError(f"warmup must be 'constant' or 'linear', got {config.warmup!r}")
    if not warmup:
        return main
    return lambda step: jnp.where(step < warmup, warm(step), main(step))


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule,
                   frozen: tuple[str, ...] = ()) -> optax.GradientTransformation:
    """SGD with momentum 0.9 and weight decay 1e-4 (Sec. 3.4), decay added to the gradient as in Caffe. Parts in
    ``frozen`` get no update and no decay; the classifier's updates scale by ``head_lr_multiplier``."""
    if config.optimizer != "sgd":
        raise ConfigError(f"optimizer must be 'sgd', got {config.optimizer!r}")
    sgd = optax.chain(optax.add_decayed_weights(config.weight_decay),
                      optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov))
    multiplier = getattr(config, "head_lr_multiplier", 1.0)  # also plain namespaces (benchmarks/)
    if not frozen and multiplier == 1.0:
        return sgd

    def label(params):
        return {name: jax.tree.map(lambda _, name=name: "frozen" if models.part_of(name) in frozen
                                   else "head" if name == "fc" else "body", tree)
                for name, tree in params.items()}

    return optax.multi_transform({"body": sgd, "head": optax.chain(sgd, optax.scale(multiplier)),
                                  "frozen": optax.set_to_zero()}, label)


def frozen_parts(config: ml_collections.ConfigDict, model: models.ResNet) -> tuple[str, ...]:
    """``freeze``: "none", "backbone" (every part but fc) or a comma-separated list of parts."""
    spec = config.get("freeze", "none") or "none"
    names = models.parts(model)
    if spec == "none":
        return ()
    if spec == "backbone":
        return tuple(names[:-1])
    chosen = tuple(p.strip() for p in spec.split(","))
    unknown = [p for p in chosen if p not in names]
    if unknown:
        raise ConfigError(f"freeze: unknown part(s) {unknown}; parts of {config.model}: {', '.join(names)}, or "
                          f"'backbone' or 'none'")
    return chosen


def load_init_from(config: ml_collections.ConfigDict, model: models.ResNet) -> dict:
    """The ``init_from`` checkpoint's ``variables``, checked against ``model`` (flat, ``params/stage1/...`` keys),
    and the input normalisation (``mean``, ``std``) its network was trained with. A classifier of another class
    count is left out, to keep its fresh initialisation; anything else that does not fit raises ConfigError."""
    from flax import traverse_util

    spec = config.init_from
    path, step = spec, "latest"
    if re.search(r":(\d+|best|latest)$", spec):
        path, step = spec.rsplit(":", 1)
    try:
        source, variables, info = checkpoint.load_checkpoint(path, step)
    except checkpoint.CheckpointError as e:
        raise ConfigError(f"init_from={spec!r}: {e}") from e
    if info["model"] != config.model:
        raise ConfigError(f"init_from={spec!r} holds a {info['model']}, but the config trains a {config.model}")
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


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D ``data`` mesh over every device of every process (sharding propagated automatically)."""
    return jax.make_mesh((jax.device_count(),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def create_train_state(model: models.ResNet, tx: optax.GradientTransformation, image_size: int, seed: int,
                       mesh: jax.sharding.Mesh) -> TrainState:
    """Initialise (He init, Sec. 3.4) directly as replicated arrays on the mesh."""

    def init():
        variables = model.init(jax.random.key(seed), jnp.zeros((1, image_size, image_size, 3)), train=False)
        return TrainState(jnp.zeros((), jnp.int32), variables["params"], variables["batch_stats"],
                          tx.init(variables["params"]))

    return jax.jit(init, out_shardings=NamedSharding(mesh, P()))()


def make_train_step(model: models.ResNet, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh, mean: Any,
                    std: Any, num_classes: int, label_smoothing: float = 0.0, schedule: optax.Schedule | None = None,
                    dataset: OnDeviceData | None = None):
    """One jit-compiled, donated step ``(state, batch) -> (state, metrics)`` over a batch sharded on ``mesh``.

    ``model.bn_axis_name`` decides whether BN statistics are per device (None) or global (``"data"``).
    Metrics stay on device: loss, number of training errors, and the learning rate used.
    With ``dataset`` (on-device data), ``batch`` is the whole device-resident train set
    (``dataset.arrays``) and the step draws its own augmented batch from it.
    """
    return jax.jit(_step(model, tx, mesh, mean, std, num_classes, label_smoothing, schedule, dataset),
                   donate_argnums=0)


def make_train_loop(model: models.ResNet, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh, mean: Any,
                    std: Any, num_classes: int, label_smoothing: float = 0.0, schedule: optax.Schedule | None = None,
                    dataset: OnDeviceData | None = None, steps_per_loop: int = 1):
    """Up to ``steps_per_loop`` (K) train steps in one jit-compiled, donated call ``(state, batches, n) -> (state,
    metrics)``, which runs the first ``n`` (1 <= n <= K) steps of ``make_train_step`` in a loop on the device.

    ``batches`` holds K batches stacked on a leading axis (``stack_batches``), or is the train set with ``dataset``;
    every metric comes back as a (K,) array, the first ``n`` entries filled. ``n`` is an argument, not a constant,
    so one compiled program serves loops of every length (cut short at the steps that log, evaluate or save). On
    CPUs the parameters come out bitwise the same as from single steps (tested; see ``conv`` for what that needs).
    """
    step = _step(model, tx, mesh, mean, std, num_classes, label_smoothing, schedule, dataset)

    def loop(state, batches, n):
        def batch(i):  # the train set itself with on-device data (the step draws), else the i-th stacked batch
            return batches if dataset is not None else jax.tree.map(lambda a: a[i], batches)

        def one(i, carry):
            state, metrics = carry
            state, values = step(state, batch(i))
            return state, jax.tree.map(lambda buffer, value: buffer.at[i].set(value), metrics, values)

        shapes = jax.eval_shape(step, state, batch(0))[1]
        metrics = jax.tree.map(lambda s: jnp.zeros((steps_per_loop, *s.shape), s.dtype), shapes)
        return jax.lax.fori_loop(0, n, one, (state, metrics))

    return jax.jit(loop, donate_argnums=0)


def _step(model, tx, mesh, mean, std, num_classes, label_smoothing, schedule, dataset):
    """The train step of ``make_train_step``, not yet jit-compiled."""

    def local_step(state: TrainState, images, labels):
        def loss_fn(params):
            logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                          data.normalize(images, mean, std), train=True, mutable=["batch_stats"])
            targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
            return optax.softmax_cross_entropy(logits, targets).mean(), (logits, updates["batch_stats"])

        # Each device differentiates its own loss (parameters cast to device-varying; otherwise the transpose of
        # their implicit broadcast would already sum the gradients over devices), then the mean is taken.
        local_params = jax.lax.pcast(state.params, AXIS, to="varying")
        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(local_params)
        grads, loss, batch_stats = jax.lax.pmean((grads, loss, batch_stats), AXIS)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        errors = jax.lax.psum(jnp.sum(jnp.argmax(logits, -1) != labels), AXIS)
        metrics = {"loss": loss, "errors": errors, "count": jax.lax.psum(labels.shape[0], AXIS)}
        if schedule is not None:
            metrics["learning_rate"] = schedule(state.step)
        return TrainState(state.step + 1, params, batch_stats, opt_state), metrics

    sharded = jax.shard_map(local_step, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS)), out_specs=(P(), P()))
    batch_sharding = NamedSharding(mesh, P(AXIS))

    def step(state, batch):
        if dataset is not None:
            batch = jax.lax.with_sharding_constraint(dataset.draw(batch, state.step), batch_sharding)
        return sharded(state, batch["image"], batch["label"])

    return step


def stack_batches(batches: list[dict[str, np.ndarray]], mesh: jax.sharding.Mesh, length: int) -> dict[str, jax.Array]:
    """This process's slices of up to ``length`` consecutive batches -> global arrays of shape (length, global
    batch, ...) for ``make_train_loop``, sharded along the batch axis (one transfer per field). Fewer batches are
    padded with copies of the last one, which the loop does not use."""
    sharding = NamedSharding(mesh, P(None, AXIS))
    padded = batches + batches[-1:] * (length - len(batches))
    return {k: jax.make_array_from_process_local_data(sharding, np.stack([b[k] for b in padded]))
            for k in batches[0]}


@dataclasses.dataclass
class OnDeviceData:
    """A small train set kept on the accelerator as uint8, with the CIFAR augmentation (Sec. 4.2: 4-pixel zero
    padding, random crop, horizontal flip) done inside the jitted step, so small-image training is bound by
    compute, not by the host. Epoch order and augmentation are pure functions of (seed, step)."""

    images: jax.Array  # (N, H, W, 3) uint8, replicated
    labels: jax.Array  # (N,) int32
    batch_size: int
    seed: int

    @property
    def steps_per_epoch(self) -> int:
        return self.images.shape[0] // self.batch_size

    @property
    def arrays(self) -> dict[str, jax.Array]:
        return {"image": self.images, "label": self.labels}

    def draw(self, arrays: dict[str, jax.Array], step: jax.Array) -> dict[str, jax.Array]:
        """The augmented global batch of ``step`` from the whole train set ``arrays`` (inside jit)."""
        all_images, all_labels = arrays["image"], arrays["label"]
        n, h, w, _ = all_images.shape
        epoch, position = step // self.steps_per_epoch, step % self.steps_per_epoch
        key = jax.random.key(self.seed)
        order = jax.random.permutation(jax.random.fold_in(jax.random.fold_in(key, 0), epoch), n)
        index = jax.lax.dynamic_slice_in_dim(order, position * self.batch_size, self.batch_size)
        images = jnp.pad(all_images[index], ((0, 0), (4, 4), (4, 4), (0, 0)))
        k_crop, k_flip = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, 1), step))
        offsets = jax.random.randint(k_crop, (self.batch_size, 2), 0, 9)
        crops = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, 3)))(images, offsets)
        flip = jax.random.bernoulli(k_flip, 0.5, (self.batch_size,))
        crops = jnp.where(flip[:, None, None, None], crops[:, :, ::-1], crops)
        return {"image": crops, "label": all_labels[index]}


def on_device_data(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
                   mesh: jax.sharding.Mesh) -> OnDeviceData:
    """A decoded split (``data.load_arrays``) placed, replicated, on every device."""
    put = functools.partial(jax.device_put, device=NamedSharding(mesh, P()))
    return OnDeviceData(put(images), put(labels), batch_size, seed)


# ------------------------------------------------------------------------------------------ the run


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


def prepare(config: ml_collections.ConfigDict, workdir: str, mngr=None) -> Run:
    """Validate the config and workdir and read the data description. Raises ConfigError / DataError /
    CheckpointError with a message naming the problem; compiles nothing."""
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
    if config.on_device_data and config.train_preset != "cifar":
        raise ConfigError("on_device_data implements the cifar preset's augmentation; set train_preset=cifar")
    if config.eval_preset not in ("cifar", "center"):
        raise ConfigError(f"eval_preset during training must be 'cifar' or 'center', got {config.eval_preset!r}")
    try:
        jnp.dtype(config.dtype)
    except TypeError as e:
        raise ConfigError(f"dtype {config.dtype!r} is not a dtype") from e
    if config.get("conv_impl", "auto") not in conv.IMPLS:
        raise ConfigError(f"conv_impl must be one of {conv.IMPLS}, got {config.conv_impl!r}")
    profile_steps(config)
    verify = config.get("verify_images", False)
    if data.is_synthetic(config.dataset) and not config.on_device_data:
        raise ConfigError("synthetic data is generated in memory for on_device_data=True runs; set it")
    train_source, eval_source = (data.get_source(config.dataset, split, config.data_dir, verify=verify,
                                                 image_size=config.image_size)
                                 for split in (config.train_split, config.eval_split))
    if train_source.num_examples < config.batch_size:
        raise ConfigError(f"{config.dataset}:{config.train_split} has {train_source.num_examples} examples, "
                          f"fewer than batch_size {config.batch_size}")
    arrays = None
    if config.on_device_data:  # small images: both splits are decoded once, here
        arrays = {"train": data.load_arrays(train_source), "eval": data.load_arrays(eval_source)}
        for split, (images, _) in zip((config.train_split, config.eval_split), arrays.values()):
            if images.shape[1:3] != (config.image_size, config.image_size):
                raise ConfigError(f"on_device_data: {config.dataset}:{split} holds {images.shape[2]}x"
                                  f"{images.shape[1]} images, but image_size is {config.image_size}")
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


def profile_steps(config: ml_collections.ConfigDict) -> tuple[int, int] | None:
    """``profile_steps="START:STOP"`` -> (START, STOP): trace the steps after START up to STOP."""
    spec = config.get("profile_steps", "")
    if not spec:
        return None
    try:
        start, stop = (int(x) for x in spec.split(":"))
    except ValueError:
        raise ConfigError(f"profile_steps must be START:STOP, e.g. 10:20, got {spec!r}") from None
    if not 0 <= start < stop:
        raise ConfigError(f"profile_steps {spec!r}: need 0 <= START < STOP")
    return start, stop


class Preempted(Exception):
    """Training stopped on SIGTERM or SIGINT after saving; ``exit_code`` is 128 + the signal number (143 for
    SIGTERM, 130 for Ctrl-C), so schedulers can tell a preempted run from a finished one (0)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
MAX_CALLS_IN_FLIGHT = 2  # dispatched but not finished: enough to keep an accelerator busy, and a prompt stop


def loop_lengths(config: ml_collections.ConfigDict, start: int) -> Iterator[int]:
    """How many steps each train call runs, from ``start`` to the end: ``steps_per_loop``, or fewer to stop at the
    next step that logs, evaluates, checkpoints, starts or stops a profile, or ends the run."""
    k, step, total = config.get("steps_per_loop", 1), start, config.num_train_steps
    every = [config[key] for key in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps")]
    marks = profile_steps(config) or ()
    while step < total:
        stop = min([total, *((step // e + 1) * e for e in every), *(m for m in marks if m > step)])
        n = min(k, stop - step)
        yield n
        step += n


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       on_step: Callable[[int], None] | None = None) -> dict:
    """Train (resuming from the latest checkpoint in ``workdir``), evaluate and checkpoint; returns the
    last logged metrics. ``on_step(step)`` is called after every train call (every step, or every loop of
    ``steps_per_loop`` steps; e.g. for a study-wide progress bar)."""
    from resnet_jax import logger  # matplotlib, tqdm, tensorboardX: only the CLI path needs them

    # A start that fails (bad config, unprepared dataset) writes nothing: the workdir and its checkpoint
    # directory are created only once the run has been prepared.
    mngr = None
    if os.path.isdir(checkpoint.checkpoint_dir(workdir)):
        mngr = checkpoint.manager(workdir, keep=config.keep_checkpoints)
        checkpoint.newest_good_step(mngr)  # damaged newer steps are set aside, with a warning
    try:
        run = prepare(config, workdir, mngr)
    except Exception:
        if mngr is not None:
            mngr.close()
        raise
    if mngr is None:
        os.makedirs(workdir, exist_ok=True)
        mngr = checkpoint.manager(workdir, keep=config.keep_checkpoints)
    mesh = make_mesh()
    schedule = learning_rate_schedule(config, run.steps_per_epoch)
    tx = make_optimizer(config, schedule, run.model.frozen)
    state = create_train_state(run.model, tx, config.image_size, config.seed, mesh)
    start = mngr.latest_step() or 0
    if not start and run.init is not None:  # a new run from another's weights (a resume wins over init_from)
        variables = merge_variables(state.variables, run.init["variables"])
        state = state.replace(params=variables["params"], batch_stats=variables["batch_stats"],
                              opt_state=tx.init(variables["params"]))
    if start:
        restored = checkpoint.restore(mngr, start, state.variables, {"step": state.step, "opt_state": state.opt_state},
                                      sharding=NamedSharding(mesh, P()))
        state = TrainState(restored["train"]["step"], restored["variables"]["params"],
                           restored["variables"]["batch_stats"], restored["train"]["opt_state"])
        log.info("resumed from step %d", start)
    dataset = None
    if run.arrays:
        dataset = on_device_data(*run.arrays["train"], config.batch_size, config.seed, mesh)
    steps_per_loop = config.get("steps_per_loop", 1)
    step_args = (run.model, tx, mesh, run.mean, run.std, run.model.num_classes, config.label_smoothing, schedule,
                 dataset)
    # train_call(state, batch, n) runs n steps; to_device(local) turns the host batches of one call into its batch
    if steps_per_loop > 1:  # one call runs up to steps_per_loop steps (bitwise the same training)
        train_call = make_train_loop(*step_args, steps_per_loop)
        to_device = functools.partial(stack_batches, mesh=mesh, length=steps_per_loop)
    else:
        train_step = make_train_step(*step_args)

        def train_call(state, batch, n):
            return train_step(state, batch)

        def to_device(local):
            return data.to_global(local[0], mesh)
    eval_step = evaluation.make_eval_step(run.model, run.mean, run.std)
    host_batches = None if dataset is not None else train_iterator(run, start)

    stop = {"signal": None}
    previous = {sig: signal.signal(sig, lambda signum, _: stop.update(signal=signum)) for sig in STOP_SIGNALS}
    out = logger.RunLogger(workdir, config.num_train_steps, start, config.batch_size, run.steps_per_epoch)
    pending: list[tuple[int, dict]] = []

    def flush(keep: bool = False) -> dict | None:
        """Fetch the metrics of the steps since the last log event (and forget them unless ``keep``); stop on
        a non-finite loss."""
        if not pending:
            return None
        fetched = jax.device_get([m for _, _, m in pending])  # per call: scalars, or (steps_per_loop,) arrays
        per_step = {k: np.concatenate([np.reshape(m[k], -1)[:n] for (_, n, _), m in zip(pending, fetched)])
                    for k in fetched[0]}
        steps = np.concatenate([np.arange(last - n + 1, last + 1) for last, n, _ in pending])
        if not keep:
            pending.clear()
        bad = np.flatnonzero(~np.isfinite(per_step["loss"]))
        if bad.size:
            mngr.wait_until_finished()  # a save still being written counts
            good = mngr.latest_step()
            where = (f"The last good checkpoint is step {good} in {checkpoint.checkpoint_dir(workdir)}"
                     if good is not None else "No checkpoint had been saved yet")
            raise FloatingPointError(f"non-finite loss {per_step['loss'][bad[0]]} at step {steps[bad[0]]}; "
                                     f"stopping. {where}")
        return {"train_loss": float(np.mean(per_step["loss"])),
                "train_error": 100.0 * float(per_step["errors"].sum()) / float(per_step["count"].sum()),
                "learning_rate": float(per_step["learning_rate"][-1])}

    def save(step: int, metrics: dict | None) -> None:
        flush(keep=True)  # never save a step after a non-finite loss
        meta = dict(run.meta, step=step, data_position=dict(seed=config.seed, batch_size=config.batch_size,
                                                             epoch=step // run.steps_per_epoch,
                                                             step_in_epoch=step % run.steps_per_epoch))
        checkpoint.save(mngr, step, state.variables, meta, {"step": state.step, "opt_state": state.opt_state},
                        metrics)

    last: dict = {}
    step = start
    in_flight: collections.deque = collections.deque()
    profile = profile_steps(config)
    tracing = False
    try:
        for n in loop_lengths(config, start):
            if profile and step == profile[0] and jax.process_index() == 0:
                jax.profiler.start_trace(os.path.join(workdir, "profile"), create_perfetto_trace=True)
                tracing = True
            if dataset is not None:
                batch = dataset.arrays  # the step draws its own batches
            else:
                local: list[dict] = []
                try:
                    local.extend(next(host_batches) for _ in range(n))
                except Exception as e:  # an image the pipeline cannot decode: keep the trained steps, then name it
                    raise data_failure(run, run.train_source, e, step, save, mngr, step + len(local)) from e
                batch = to_device(local)
            state, metrics = train_call(state, batch, n)
            step += n
            pending.append((step, n, metrics))
            in_flight.append((n, metrics["loss"]))
            while in_flight and (len(in_flight) > MAX_CALLS_IN_FLIGHT or step == config.num_train_steps):
                in_flight.popleft()[1].block_until_ready()  # the host waits for the device: honest rates, prompt stops
            if tracing and step == profile[1]:
                jax.block_until_ready(state)
                jax.profiler.stop_trace()
                tracing = False
                log.info("wrote a profile of steps %d-%d to %s", profile[0] + 1, step, os.path.join(workdir, "profile"))
            out.tick(step - sum(k for k, _ in in_flight))
            if on_step is not None:
                on_step(step)
            done = step == config.num_train_steps
            if step % config.log_every_steps == 0 or done:
                last = dict(flush() or {})
                out.log(step, last)
            eval_metrics = None
            if step % config.eval_every_steps == 0 or done:
                eval_data = (data.array_batches(*run.arrays["eval"], config.eval_batch_size) if run.arrays else
                             data.eval_batches(run.eval_source, config.eval_batch_size, config.eval_preset,
                                               config.image_size))
                try:
                    result = evaluation.evaluate(eval_step, state.variables, eval_data, mesh)
                except Exception as e:
                    raise data_failure(run, run.eval_source, e, step, save, mngr) from e
                eval_metrics = {"eval_top1_error": result["top1_error"], "eval_top5_error": result["top5_error"],
                                "eval_loss": result["loss"]}
                last.update(eval_metrics)
                out.log(step, eval_metrics)
            if step % config.checkpoint_every_steps == 0 or done or stop["signal"]:
                save(step, eval_metrics)
            if stop["signal"]:
                mngr.wait_until_finished()
                name = signal.Signals(stop["signal"]).name
                raise Preempted(f"received {name}: saved step {step}, exiting", stop["signal"])
    finally:
        if tracing:
            jax.profiler.stop_trace()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        mngr.wait_until_finished()
        mngr.close()
        out.close()
    return dict(last, step=step)


def data_failure(run: Run, source: data.Source, error: Exception, step: int, save: Callable, mngr: Any,
                 batch_step: int | None = None) -> Exception:
    """After the input pipeline failed with ``step`` steps trained: save that step (unless it is saved or nothing
    was trained), then a DataError naming the unreadable file(s) of an image folder: those of the training batch of
    ``batch_step`` that failed (the order is a pure function of seed and epoch) or, for evaluation (None), of the
    whole split. Other errors pass through."""
    if not _is_data_error(error):
        return error
    if step > (run.meta.get("step") or 0) and step not in mngr.all_steps():
        save(step, None)
        mngr.wait_until_finished()
    kept = f"saved step {step} first" if step in mngr.all_steps() else "no trained step was lost"
    where = f"{source.name}:{source.split}"
    if source.paths is not None:
        paths = source.paths
        if batch_step is not None:
            config = run.config
            epoch, position = divmod(batch_step, run.steps_per_epoch)
            order = np.random.default_rng([config.seed, epoch]).permutation(source.num_examples)
            # the failing batch, and those the pipeline may have been prefetching after it
            paths = source.paths[order[position * config.batch_size:(position + 9) * config.batch_size]]
        bad = data.unreadable_files(list(paths))
        if bad:
            listed = "; ".join(f"{p} ({problem})" for p, problem in bad[:3]) + (" ..." if len(bad) > 3 else "")
            return data.DataError(f"unreadable image(s) in {where}: {listed}. {kept}: remove or replace the "
                                  f"file(s) and rerun the same command to resume (--config.verify_images=True "
                                  f"checks a whole folder up front)")
    return data.DataError(f"the input pipeline of {where} failed at step {step}: "
                          f"{checkpoint.first_line(error)}. {kept}; rerun the same command to resume")


def _is_data_error(error: Exception) -> bool:
    return isinstance(error, data.DataError) or type(error).__module__.startswith("tensorflow")


def train_iterator(run: Run, start_step: int) -> Iterator[dict[str, np.ndarray]]:
    """This process's slices of the training batches from ``start_step`` on, from the host pipeline."""
    config = run.config
    for batch in data.train_batches(run.train_source, config.batch_size, config.train_preset, config.image_size,
                                    seed=config.seed, start_step=start_step):
        batch.pop("mask")
        yield batch

