"""The paper's recipe: the learning-rate schedule (Sec. 3.4, 4.2), SGD with momentum and weight decay, and
which parts of the network train."""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import optax

from resnet_jax import models
from resnet_jax.training.errors import ConfigError

if TYPE_CHECKING:
    import ml_collections


def model_options(config: ml_collections.ConfigDict) -> dict:
    """The ``create_model`` options a config asks for (the model's own defaults where it says nothing)."""
    options = dict(version=config.version, zero_init_residual=config.zero_init_residual, scan=config.scan,
                   remat=config.remat, dtype=config.dtype)
    if config.shortcut:
        options["shortcut"] = config.shortcut
    for key in models.ARCHITECTURE:  # overrides only where given, so older runs' options stay what they were
        value = getattr(config, key, None)
        if value:  # lists: the form they take in a checkpoint's JSON description
            options[key] = list(value) if isinstance(value, (list, tuple)) else value
    return options


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """Step decay by 10x at ``lr_boundaries`` (Sec. 3.4, 4.2) or cosine, after an optional warm-up."""
    base = config.learning_rate * (config.batch_size / 256 if config.lr_scaling == "linear" else 1.0)
    boundaries = ([int(e * steps_per_epoch) for e in config.lr_boundaries_epochs] if config.lr_boundaries_epochs
                  else list(config.lr_boundaries))
    warmup_epochs = getattr(config, "warmup_epochs", 0.0)  # also plain namespaces (benchmarks/)
    warmup = int(warmup_epochs * steps_per_epoch) if warmup_epochs > 0 else config.warmup_steps
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
