"""When things happen during training: the loop's periodic actions (log, evaluate, checkpoint, profile, stop on a
signal), each a small object with one trigger, in the spirit of CLU's periodic actions. ``Triggers`` is the one
place that says at which steps the run logs, evaluates, checkpoints and profiles."""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from resnet_jax import checkpoint
from resnet_jax.training.errors import ConfigError, Preempted

if TYPE_CHECKING:
    import ml_collections

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
MAX_CALLS_IN_FLIGHT = 2  # dispatched but not finished: enough to keep an accelerator busy, and a prompt stop


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


@dataclasses.dataclass(frozen=True)
class Triggers:
    """The steps at which a run logs, evaluates and checkpoints (every ``*_every_steps`` and at the last step),
    and the profiled span; train calls (loops of up to ``steps_per_loop`` steps) end at each of them."""

    total: int
    log_every: int
    eval_every: int
    checkpoint_every: int
    profile: tuple[int, int] | None = None

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> Triggers:
        return cls(config.num_train_steps, config.log_every_steps, config.eval_every_steps,
                   config.checkpoint_every_steps, profile_steps(config))

    def log(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.total

    def evaluate(self, step: int) -> bool:
        return step % self.eval_every == 0 or step == self.total

    def checkpoint(self, step: int) -> bool:
        return step % self.checkpoint_every == 0 or step == self.total

    def loop_lengths(self, start: int, steps_per_loop: int) -> Iterator[int]:
        """How many steps each train call runs, from ``start`` to the end: ``steps_per_loop``, or fewer to stop at
        the next step that logs, evaluates, checkpoints, starts or stops a profile, or ends the run."""
        every = (self.log_every, self.eval_every, self.checkpoint_every)
        step = start
        while step < self.total:
            stop = min([self.total, *((step // e + 1) * e for e in every),
                        *(m for m in self.profile or () if m > step)])
            n = min(steps_per_loop, stop - step)
            yield n
            step += n


def loop_lengths(config: ml_collections.ConfigDict, start: int) -> Iterator[int]:
    """``Triggers.loop_lengths`` of a config."""
    return Triggers.from_config(config).loop_lengths(start, config.get("steps_per_loop", 1))


GRACE_SECONDS = 2.0  # before training starts: how long Python code gets to act on a signal itself


class EvaluationAbandoned(Exception):
    """A stop signal arrived during an evaluation, which was abandoned."""


class StopSignals:
    """SIGTERM and SIGINT over a whole run, acted on within a bounded time wherever the run is. The handler only
    records the signal: an exception raised from a handler lands in whatever code runs then (a library's callback,
    a garbage-collection hook) and can be swallowed there. The run acts on it at safe points:

    - before the first train call has finished (reading the data, restoring, compiling), nothing new would be
      lost: the start-up's steps call ``startup_point`` between them, which raises Preempted; inside a long native
      call such as XLA's compile, a watcher thread woken by the signal (``signal.set_wakeup_fd``) ends the process
      after ``GRACE_SECONDS``;
    - while training, the signal is acted on at the end of the train call (save, then exit), and an evaluation in
      progress is abandoned (``check`` between its batches); a save in progress completes first.
    """

    def __init__(self, cleanup: list | None = None):
        self.signum: int | None = None
        self.training = False  # set once the first train call has finished
        self.exiting = False
        self.cleanup = cleanup if cleanup is not None else []  # run before the watcher ends the process
        self._previous: dict = {}
        self._wakeup = self._old_fd = None

    def __enter__(self) -> StopSignals:
        self._previous = {sig: signal.signal(sig, self._note) for sig in STOP_SIGNALS}
        read, self._wakeup = os.pipe()
        os.set_blocking(self._wakeup, False)
        self._old_fd = signal.set_wakeup_fd(self._wakeup, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(read,), daemon=True, name="resnet_jax-stop-signals").start()
        return self

    def _note(self, signum: int, _frame: Any) -> None:
        self.signum = signum

    def startup_point(self) -> None:
        """Between the steps of the start-up: a stop signal received so far ends the run (nothing new to save)."""
        if self.signum and not self.training:
            self.exiting = True
            raise Preempted(f"received {signal.Signals(self.signum).name} before training started: nothing new to "
                            f"save, exiting", self.signum)

    def _watch(self, read: int) -> None:
        with os.fdopen(read, "rb", buffering=0) as pipe:
            while byte := pipe.read(1):
                if byte[0] not in STOP_SIGNALS or self.training:
                    continue
                time.sleep(GRACE_SECONDS)
                if self.training or self.exiting:
                    continue
                for action in self.cleanup:
                    action()
                print(f"received {signal.Signals(byte[0]).name} before training started: nothing new to save, "
                      f"exiting", flush=True)
                os._exit(128 + byte[0])

    def check(self) -> None:
        """Between the batches of an evaluation: abandon it on a stop signal."""
        if self.signum:
            raise EvaluationAbandoned

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._old_fd if self._old_fd is not None else -1)
        os.close(self._wakeup)

    def preempted(self, step: int, abandoned: bool = False) -> Preempted:
        during = " during the evaluation of that step (the resumed run evaluates it first)" if abandoned else ""
        return Preempted(f"received {signal.Signals(self.signum).name}: saved step {step}{during}, exiting",
                         self.signum)


class Profiler:
    """A jax.profiler trace of the steps in ``span`` = (START, STOP], written to ``<workdir>/profile`` by process 0."""

    def __init__(self, workdir: str, span: tuple[int, int] | None):
        self.directory, self.span, self.tracing = os.path.join(workdir, "profile"), span, False

    def before_call(self, step: int) -> None:
        if self.span and step == self.span[0] and jax.process_index() == 0:
            jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
            self.tracing = True

    def after_call(self, step: int, state: Any) -> None:
        if self.tracing and step == self.span[1]:
            jax.block_until_ready(state)
            self.close()
            log.info("wrote a profile of steps %d-%d to %s", self.span[0] + 1, step, self.directory)

    def close(self) -> None:
        if self.tracing:
            jax.profiler.stop_trace()
            self.tracing = False


class InFlight:
    """Train calls dispatched but not yet finished. The host waits for the device once more than
    ``MAX_CALLS_IN_FLIGHT`` are queued (and at the end): honest rates and prompt stops."""

    def __init__(self):
        self.calls: collections.deque = collections.deque()

    def add(self, n: int, loss: jax.Array, last: bool) -> None:
        self.calls.append((n, loss))
        while self.calls and (len(self.calls) > MAX_CALLS_IN_FLIGHT or last):
            self.calls.popleft()[1].block_until_ready()

    @property
    def steps(self) -> int:
        return sum(n for n, _ in self.calls)


class TrainMetrics:
    """The device metrics of the train calls since the last log event, fetched once per log event; a non-finite
    loss stops the run, naming its step and the last good checkpoint."""

    def __init__(self, mngr: Any, workdir: str):
        self.mngr, self.workdir = mngr, workdir
        self.pending: list[tuple[int, int, dict]] = []  # (last step of the call, steps in it, metrics)

    def add(self, step: int, n: int, metrics: dict) -> None:
        self.pending.append((step, n, metrics))

    def flush(self, keep: bool = False) -> dict | None:
        """Mean loss, error rate and the last learning rate since the last log event (forgotten unless
        ``keep``); None if no step ran since."""
        if not self.pending:
            return None
        fetched = jax.device_get([m for _, _, m in self.pending])  # per call: scalars, or (steps_per_loop,) arrays
        per_step = {k: np.concatenate([np.reshape(m[k], -1)[:n] for (_, n, _), m in zip(self.pending, fetched)])
                    for k in fetched[0]}
        steps = np.concatenate([np.arange(last - n + 1, last + 1) for last, n, _ in self.pending])
        if not keep:
            self.pending.clear()
        bad = np.flatnonzero(~np.isfinite(per_step["loss"]))
        if bad.size:
            self.mngr.wait_until_finished()  # a save still being written counts
            good = self.mngr.latest_step()
            where = (f"The last good checkpoint is step {good} in {checkpoint.checkpoint_dir(self.workdir)}"
                     if good is not None else "No checkpoint had been saved yet")
            raise FloatingPointError(f"non-finite loss {per_step['loss'][bad[0]]} at step {steps[bad[0]]}; "
                                     f"stopping. {where}")
        return {"train_loss": float(np.mean(per_step["loss"])),
                "train_error": 100.0 * float(per_step["errors"].sum()) / float(per_step["count"].sum()),
                "learning_rate": float(per_step["learning_rate"][-1])}
