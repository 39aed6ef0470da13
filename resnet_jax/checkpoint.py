"""Self-describing Orbax checkpoints.

A checkpoint step holds three items:
  ``variables``  params and batch statistics (all that inference needs),
  ``train``      optimizer state, step and RNG (only for resuming training; absent in imported weights),
  ``meta``       JSON: the architecture and its options, class names, preprocessing (preset, image size,
                 normalisation), dataset, data position and the training config.
Orbax writes each step to a temporary directory and renames it when complete, so an interrupted save never
becomes the latest step.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from resnet_jax import models

FORMAT = 1
log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not fit its described model."""


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def manager(workdir: str, keep: int = 3, create: bool = True, async_save: bool = True) -> ocp.CheckpointManager:
    """A manager over ``<workdir>/checkpoints`` keeping the last ``keep`` steps plus the best by
    ``eval_top1_error``."""
    policies = ocp.checkpoint_managers
    # best_fn also makes the manager write each step's metrics (read back by best_step / --step=best)
    options = dict(create=create, enable_async_checkpointing=async_save, best_fn=lambda m: m["eval_top1_error"],
                   best_mode="min", keep_checkpoints_without_metrics=True)
    if hasattr(policies, "AnyPreservationPolicy"):
        options["preservation_policy"] = policies.AnyPreservationPolicy([
            policies.LatestN(n=keep),
            policies.BestN(get_metric_fn=lambda m: m["eval_top1_error"], reverse=True, n=1,
                           keep_checkpoints_without_metrics=False)])
    else:  # older Orbax: the last ``keep`` steps
        options["max_to_keep"] = keep
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=ocp.CheckpointManagerOptions(**options),
                                 item_handlers=dict(variables=ocp.StandardCheckpointHandler(),
                                                    train=ocp.StandardCheckpointHandler(),
                                                    meta=ocp.JsonCheckpointHandler()))


def save(mngr: ocp.CheckpointManager, step: int, variables: Any, meta: dict, train: Any = None,
         metrics: dict | None = None) -> None:
    """Save (asynchronously where the manager is async) one step."""
    items = dict(variables=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(dict(meta, format=FORMAT)))
    if train is not None:
        items["train"] = ocp.args.StandardSave(train)
    mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)


def best_step(mngr: ocp.CheckpointManager) -> int | None:
    """The saved step with the lowest ``eval_top1_error`` (None if no step has metrics)."""
    scored = [(m["eval_top1_error"], s) for s in mngr.all_steps() if (m := mngr.metrics(s)) and "eval_top1_error" in m]
    return min(scored)[1] if scored else None


def resolve_step(mngr: ocp.CheckpointManager, step: int | str, workdir: str) -> int:
    """``"latest"``, ``"best"`` or a number -> an existing step, or a clear error."""
    steps = mngr.all_steps()
    if not steps:
        raise CheckpointError(f"no checkpoints in {checkpoint_dir(workdir)}")
    if step == "latest":
        return max(steps)
    if step == "best":
        best = best_step(mngr)
        return max(steps) if best is None else best
    if not str(step).isdigit():
        raise CheckpointError(f"step must be 'latest', 'best' or a number, got {step!r}; saved steps: "
                              f"{sorted(steps)}")
    if int(step) not in steps:
        raise CheckpointError(f"step {step} is not in {checkpoint_dir(workdir)}; saved steps: {sorted(steps)}")
    return int(step)


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an error (TensorStore's run to dozens of lines of spec)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:limit]


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
    try:
        return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:
        raise CheckpointError(f"checkpoint step {step} in {mngr.directory} is damaged: its description (meta) "
                              f"cannot be read: {first_line(e)}") from e


def verify_step(mngr: ocp.CheckpointManager, step: int) -> None:
    """Read one step completely (its description and every array); CheckpointError naming it if damaged."""
    try:
        saved = mngr.item_metadata(step)
        items = {name: ocp.args.StandardRestore() for name in ("variables", "train") if saved.get(name) is not None}
        if "variables" not in items:
            raise ValueError("it holds no variables")
        mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore(), **items))
    except Exception as e:
        raise CheckpointError(f"checkpoint step {step} in {mngr.directory} is damaged: {first_line(e)}") from e


def newest_good_step(mngr: ocp.CheckpointManager) -> int | None:
    """The newest step that reads completely. Newer damaged steps (a truncated, deleted or zeroed file) are moved
    aside to ``checkpoints/damaged-<step>`` with a warning naming each, so that training resumes from the good
    step and can save those steps again; the damaged files are kept for inspection."""
    damaged = []
    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            verify_step(mngr, step)
        except CheckpointError as e:
            damaged.append((step, e))
            continue
        break
    else:
        if damaged:  # nothing to fall back on: refuse rather than silently start afresh
            raise CheckpointError(f"every saved step in {mngr.directory} is damaged ({damaged[0][1]}); move that "
                                  f"directory away to train from scratch")
        return None
    for bad, error in damaged:
        aside = os.path.join(str(mngr.directory), f"damaged-{bad}")
        if jax.process_index() == 0:
            os.replace(os.path.join(str(mngr.directory), str(bad)), aside)
        log.warning("%s; resuming from step %d, the newest good one (the damaged files are kept in %s)", error,
                    step, aside)
    if damaged:
        if jax.process_count() > 1:  # every process sees the renamed steps before it reloads
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("resnet_jax: damaged checkpoints set aside")
        mngr.reload()
    return step


def model_from_meta(meta: dict, **overrides: Any) -> models.ResNet:
    options = dict(meta.get("model_options", {}), num_classes=meta["num_classes"])
    return models.create_model(meta["model"], **dict(options, **overrides))


def check_shapes(expected: Any, found: Any, step: int) -> None:
    """Raise naming the first parameter whose shape differs (or that is missing / unexpected)."""
    exp = {jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(expected)}
    got = {jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(found)}
    for key in sorted(exp.keys() | got.keys()):
        if exp.get(key) != got.get(key):
            raise CheckpointError(f"checkpoint step {step} does not fit the described model: parameter {key} "
                                  f"expected shape {exp.get(key, 'absent')}, found {got.get(key, 'absent')}")


def _target(abstract: Any, sharding: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)


def restore(mngr: ocp.CheckpointManager, step: int, variables: Any, train: Any = None,
            sharding: Any = None) -> dict:
    """Restore ``variables`` (and ``train`` if given) shaped like the given (abstract) trees, onto ``sharding``
    (default: replicated on this process's first device), whatever devices wrote them."""
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    try:
        saved = mngr.item_metadata(step)
        saved_vars = saved["variables"]
    except Exception as e:
        raise CheckpointError(f"checkpoint step {step} in {mngr.directory} is damaged: {first_line(e)}") from e
    if saved_vars is None:
        raise CheckpointError(f"checkpoint step {step} in {mngr.directory} has no variables")
    check_shapes(variables, saved_vars.tree if hasattr(saved_vars, "tree") else saved_vars, step)
    items = dict(variables=ocp.args.StandardRestore(_target(variables, sharding)))
    if train is not None:
        items["train"] = ocp.args.StandardRestore(_target(train, sharding))
    try:
        return mngr.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:
        raise CheckpointError(f"checkpoint step {step} in {mngr.directory} is damaged: {first_line(e)}") from e


def load_checkpoint(workdir: str, step: int | str = "latest") -> tuple[models.ResNet, dict, dict]:
    """The raw Flax pieces of a saved run: ``model, variables, info`` (info = the checkpoint's description,
    with ``step``)."""
    if not os.path.isdir(checkpoint_dir(workdir)):
        raise CheckpointError(f"no checkpoints in {checkpoint_dir(workdir)}")
    mngr = manager(workdir, create=False, async_save=False)
    try:
        step = resolve_step(mngr, step, workdir)
        try:
            meta = read_meta(mngr, step)
            model = model_from_meta(meta)
            size = meta["preprocessing"]["image_size"]
            variables = restore(mngr, step, models.abstract_variables(model, size))["variables"]
        except CheckpointError as e:
            others = sorted(s for s in mngr.all_steps() if s != step)
            advice = (f"; other saved steps: {others}, e.g. --step={others[-1]}" if others
                      else "; no other step is saved")
            raise CheckpointError(f"{e}{advice}") from e
    finally:
        mngr.close()
    return model, jax.tree.map(np.asarray, variables), dict(meta, step=step)
