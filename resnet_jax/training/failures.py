"""What a failed input pipeline leaves: the trained step saved, and a DataError naming the unreadable files."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from resnet_jax import checkpoint, data
from resnet_jax.training.run import Run


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
        if batch_step is not None:  # the failing batch, and those the pipeline may have been making after it
            steps = range(batch_step, batch_step + 9)
            paths = source.paths[np.concatenate([source.batch_indices(run.config.seed, s, run.config.batch_size)
                                                 for s in steps])]
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
