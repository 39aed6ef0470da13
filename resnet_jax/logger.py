"""What a user sees of a training run: a progress bar, ``metrics.jsonl``, TensorBoard scalars and
``curves.png``. Only JAX process 0 writes."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

import jax

from resnet_jax import plot, storage

log = logging.getLogger(__name__)
PLOT_EVERY_SECONDS = 30  # redraw curves.png at most this often (and once at the end): drawing takes ~0.5 s


def keep_rows_through(path: str, step: int) -> None:
    """Before a run resumes from ``step``: drop the rows a stopped run logged after its last complete checkpoint
    (the resumed run logs those steps again, so each step is logged once) and a last line cut short by a kill.
    Rewritten whole (a temporary file, then a rename; in a bucket one upload), so it is never half-written."""
    if not storage.exists(path):
        return
    lines = storage.read_text(path).splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if line.endswith("\n") and row.get("step", 0) <= step:
            kept.append(line)
    if kept != lines:
        storage.write_text(path, "".join(kept))


def summary_writer(logdir: str) -> Any:
    """tensorboardX's ``SummaryWriter`` on ``logdir`` (a bucket too), or None where tensorboardX is not installed.
    Imported with PyTorch hidden: tensorboardX imports torch wherever it is installed, 3-4 s of every start, only
    to accept torch tensors, and the scalars logged here are floats."""
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # ``import torch`` raises ImportError, which tensorboardX expects
    try:
        from tensorboardX import SummaryWriter
    except ImportError:  # TensorBoard is optional
        return None
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter(logdir)


class RunLogger:
    def __init__(self, workdir: str, total_steps: int, start_step: int, batch_size: int, steps_per_epoch: int):
        self.workdir, self.batch_size, self.steps_per_epoch = workdir, batch_size, steps_per_epoch
        self.main = jax.process_index() == 0
        self.last_step, self.last_time = start_step, time.perf_counter()
        self.bar = self.writer = None
        self.unplotted, self.last_plot = False, -float("inf")
        if self.main:
            keep_rows_through(storage.join(workdir, "metrics.jsonl"), start_step)
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                            desc=storage.basename(workdir))
            self.writer = summary_writer(storage.join(workdir, "tensorboard"))

    def tick(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def log(self, step: int, metrics: dict) -> None:
        """One log event: training metrics (with images/s since the last one) and/or evaluation metrics."""
        if not metrics or not self.main:
            return
        event = dict(step=step, epoch=round(step / max(1, self.steps_per_epoch), 4), **metrics)
        if "train_loss" in metrics:
            now = time.perf_counter()
            if step > self.last_step:
                event["images_per_second"] = self.batch_size * (step - self.last_step) / (now - self.last_time)
            self.last_step, self.last_time = step, now
        storage.append_text(storage.join(self.workdir, "metrics.jsonl"), json.dumps(event) + "\n")
        if self.writer is not None:
            for key, value in event.items():
                if key != "step":
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()
        if self.bar is not None:
            shown = {"loss": "train_loss", "err": "train_error", "lr": "learning_rate", "img/s": "images_per_second",
                     "val": "eval_top1_error"}
            self.bar.set_postfix({k: f"{event[v]:.4g}" for k, v in shown.items() if v in event}, refresh=True)
        if "eval_top1_error" in metrics:
            self.unplotted = True
            if time.perf_counter() - self.last_plot > PLOT_EVERY_SECONDS:
                self.plot()

    def plot(self) -> None:
        plot.plot_runs([self.workdir], storage.join(self.workdir, "curves.png"))
        self.unplotted, self.last_plot = False, time.perf_counter()

    def close(self) -> None:
        """Draw the last curves and close; on every exit path, so a full disk here is not a second error."""
        if self.bar is not None:
            self.bar.close()
        try:
            if self.unplotted:
                self.plot()
            if self.writer is not None:
                self.writer.close()
        except (OSError, storage.StorageError) as e:
            log.warning("could not write the last curves and TensorBoard events in %s: %s", self.workdir,
                        getattr(e, "strerror", None) or e)
