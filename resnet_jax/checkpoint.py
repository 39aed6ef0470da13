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

import errno
import logging
import os
import re
import shutil
import traceback
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from resnet_jax import models, storage

FORMAT = 1  # of the checkpoint's layout and description: raise it when they change, and keep reading older ones
log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not fit its described model."""


class NewerFormat(CheckpointError):
    """A checkpoint written by a newer resnet_jax, in a format this one does not know."""


WRITE_FAILED_EXIT_CODE = 74  # sysexits.h EX_IOERR: distinct from errors (1) and stop signals (128 + signal)
DISK_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
               errno.EROFS: "the filesystem is read-only"}


class WriteFailed(Exception):
    """The workdir could not be written (a full disk, a quota, a read-only filesystem): the run stops with
    ``exit_code`` 74, its saved steps intact and no partial step left."""

    exit_code = WRITE_FAILED_EXIT_CODE


def checkpoint_dir(workdir: str) -> str:
    """``<workdir>/checkpoints``: a local path made absolute, or in a gs:// bucket (StorageError for a URL Orbax
    cannot write)."""
    return storage.join(storage.for_checkpoints(workdir), "checkpoints")


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
    """Save (asynchronously where the manager is async) one step. A save that cannot be written (this one, or the
    previous asynchronous one) raises WriteFailed."""
    items = dict(variables=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(dict(meta, format=FORMAT)))
    if train is not None:
        items["train"] = ocp.args.StandardSave(train)
    ensure_space(mngr, step, sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves((variables, train))))
    try:
        mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
    except Exception as e:
        raise write_failure(mngr, e, step) from e


def ensure_space(mngr: ocp.CheckpointManager, step: int, nbytes: int) -> None:
    """Refuse a save that will not fit on the disk before writing any of it (a write that fails half-way leaves
    TensorStore's threads failing in the background): WriteFailed. Where space is short, the save in flight is
    waited for first, since it is still taking space and older steps are deleted after it."""
    directory = str(mngr.directory)
    if storage.is_remote(directory):  # a bucket has no free space to check
        return
    need = int(nbytes * 1.1) + (1 << 20)  # the arrays, plus metadata and Orbax's own files
    if shutil.disk_usage(directory).free >= 2 * need:
        return
    finish(mngr)
    free = shutil.disk_usage(directory).free
    if free < need:
        raise WriteFailed(f"saving step {step} to {directory} failed: no space left on the device (the step needs "
                          f"about {_size(need)}, {_size(free)} are free). {_kept(directory)}")


def finish(mngr: ocp.CheckpointManager) -> None:
    """Wait for the asynchronous save in flight; WriteFailed if it could not be written."""
    try:
        mngr.wait_until_finished()
    except Exception as e:
        raise write_failure(mngr, e) from e


def close(mngr: ocp.CheckpointManager) -> None:
    """Wait for the writers and close, on every exit path; a failure already reported is not reported again. Then
    no partial step is left behind (process 0 removes any, e.g. of a save that hit a full disk)."""
    try:
        mngr.wait_until_finished()
    except Exception as e:  # the run is ending on an error of its own (or on this one, raised by ``finish``)
        log.debug("closing %s after a failed save: %s", mngr.directory, first_line(e))
    mngr.close()
    directory = str(mngr.directory)
    if jax.process_index() == 0:
        for name in partial_steps(directory):
            storage.remove(storage.join(directory, name))


def partial_steps(directory: str) -> list[str]:
    """The directories of steps whose save did not complete (Orbax renames a step's directory when it is)."""
    return [n for n in storage.listdir(directory) if re.fullmatch(r"\d+\.orbax-checkpoint-tmp.*", n)]


def disk_error(error: BaseException) -> str | None:
    """What a full disk, an exceeded quota or a read-only filesystem says, or None for any other error (found in
    the errno or in TensorStore's text, e.g. ``os_error_code='28'``, of the error and its causes)."""
    text = "".join(traceback.format_exception(error))
    for code, words in DISK_ERRNOS.items():
        if getattr(error, "errno", None) == code or f"os_error_code='{code}'" in text or os.strerror(code) in text:
            return words
    return None


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def write_failure(mngr: ocp.CheckpointManager, error: Exception, step: int | None = None,
                  what: str | None = None) -> Exception:
    """For a disk error, a WriteFailed naming what failed, where, the free space and the steps kept (``close``
    removes the partial step). Other errors pass through."""
    cause = disk_error(error)
    if cause is None:
        return error
    directory = str(mngr.directory)
    partial = partial_steps(directory)
    failed = sorted({int(n.split(".")[0]) for n in partial}) or ([step] if step is not None else [])
    free = shutil.disk_usage(directory).free if os.path.isdir(directory) else 0
    what = what or (f"saving step {failed[0]} to {directory}" if failed else f"writing to {directory}")
    return WriteFailed(f"{what} failed: {cause} ({_size(free)} free). {_kept(directory)}")


def _kept(directory: str) -> str:
    """Which saved steps are intact, and how to resume from the newest."""
    kept = sorted(int(n) for n in storage.listdir(directory) if n.isdigit())
    resume = f"rerun the same command to resume from step {kept[-1]}" if kept else "rerun the same command"
    return (f"Saved steps {kept or 'none'} are intact and no partial step is left; free some space and {resume}")


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
    """A step's description; NewerFormat if a newer resnet_jax wrote it."""
    try:
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:
        raise CheckpointError(f"checkpoint step {step} in {mngr.directory} is damaged: its description (meta) "
                              f"cannot be read: {first_line(e)}") from e
    if meta.get("format", 1) > FORMAT:
        raise NewerFormat(f"checkpoint step {step} in {mngr.directory} is in format {meta['format']}, written by a "
                          f"newer resnet_jax; this version reads formats up to {FORMAT}: upgrade resnet_jax")
    return meta


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
        aside = storage.join(str(mngr.directory), f"damaged-{bad}")
        if jax.process_index() == 0:
            storage.move(storage.join(str(mngr.directory), str(bad)), aside)
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
    if not storage.isdir(checkpoint_dir(workdir)):
        raise CheckpointError(f"no checkpoints in {checkpoint_dir(workdir)}{storage.missing_bucket(workdir)}")
    mngr = manager(workdir, create=False, async_save=False)
    try:
        step = resolve_step(mngr, step, workdir)
        try:
            meta = read_meta(mngr, step)
            model = model_from_meta(meta)
            size = meta["preprocessing"]["image_size"]
            variables = restore(mngr, step, models.abstract_variables(model, size))["variables"]
        except NewerFormat:
            raise
        except CheckpointError as e:
            others = sorted(s for s in mngr.all_steps() if s != step)
            advice = (f"; other saved steps: {others}, e.g. --step={others[-1]}" if others
                      else "; no other step is saved")
            raise CheckpointError(f"{e}{advice}") from e
    finally:
        mngr.close()  # read-only: a training run may be saving here, so its partial step is not ours to remove
    return model, jax.tree.map(np.asarray, variables), dict(meta, step=step)
