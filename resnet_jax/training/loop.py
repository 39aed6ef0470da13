"""The training loop: open the run, build its state and step, then train call by call, with the periodic actions
of ``periodic`` (where ``Triggers`` says when each one happens)."""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax import checkpoint, data, evaluation, storage
from resnet_jax.mesh import make_mesh
from resnet_jax.training.errors import ConfigError, lost_process
from resnet_jax.training.failures import data_failure
from resnet_jax.training.init import merge_variables
from resnet_jax.training.lock import BucketLease, WorkdirLock, run_lock
from resnet_jax.training.on_device import OnDeviceData, on_device_data
from resnet_jax.training.periodic import (
    EvaluationAbandoned,
    InFlight,
    Profiler,
    StopSignals,
    TrainMetrics,
    Triggers,
)
from resnet_jax.training.recipe import learning_rate_schedule, make_optimizer
from resnet_jax.training.run import Run, prepare, train_iterator
from resnet_jax.training.step import (
    TrainState,
    create_train_state,
    make_train_loop,
    make_train_step,
    stack_batches,
)

if TYPE_CHECKING:
    import ml_collections

log = logging.getLogger(__name__)


def open_run(config: ml_collections.ConfigDict, workdir: str) -> tuple[Run, Any, WorkdirLock | BucketLease | None]:
    """The prepared run, its checkpoint manager and the workdir's run lock (held by process 0; another live run
    on the workdir is refused before anything else). A start that fails (bad config, unprepared dataset, a
    bucket that is missing or cannot be written) writes nothing: the workdir and its checkpoint directory are
    created only once the run has been prepared. ``workdir`` is already resolved (``storage.for_checkpoints``)."""
    storage.check_writable(workdir)
    lock = take_lock(workdir) if storage.isdir(workdir) else None
    mngr = None
    try:
        if storage.isdir(checkpoint.checkpoint_dir(workdir)):
            mngr = checkpoint.manager(workdir, keep=config.keep_checkpoints)
            checkpoint.newest_good_step(mngr)  # damaged newer steps are set aside, with a warning
        run = prepare(config, workdir, mngr)
        if mngr is None:
            try:
                storage.makedirs(workdir)
            except OSError as e:
                raise ConfigError(f"cannot create the workdir {workdir}: {e.strerror}") from None
            lock = lock or take_lock(workdir)
            mngr = checkpoint.manager(workdir, keep=config.keep_checkpoints)
    except Exception:
        if mngr is not None:
            mngr.close()
        if lock is not None:
            lock.release()
        raise
    return run, mngr, lock


def take_lock(workdir: str) -> WorkdirLock | BucketLease | None:
    """Process 0 holds the workdir's run lock (the others write nothing of their own there)."""
    return run_lock(workdir).acquire() if jax.process_index() == 0 else None


def initial_state(run: Run, mngr: Any, tx: Any, mesh: jax.sharding.Mesh) -> tuple[TrainState, int]:
    """The state to train from and its step: the latest checkpoint, else ``init_from``'s weights, else He init."""
    config = run.config
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
    return state, start


@dataclasses.dataclass
class Steps:
    """How the run trains: ``call(state, batch, n)`` runs n steps, and ``batches(start)`` yields each call's batch
    given its length (the device-resident train set with on-device data, else the next host batches, stacked for
    a loop on the device)."""

    call: Callable
    run: Run
    mesh: jax.sharding.Mesh
    dataset: OnDeviceData | None
    steps_per_loop: int

    @classmethod
    def build(cls, run: Run, tx: Any, schedule: Any, mesh: jax.sharding.Mesh) -> Steps:
        config = run.config
        dataset = (on_device_data(*run.arrays["train"], config.batch_size, config.seed, mesh, config.train_preset,
                                  config.image_size) if run.arrays else None)
        k = config.get("steps_per_loop", 1)
        args = (run.model, tx, mesh, run.mean, run.std, run.model.num_classes, config.label_smoothing, schedule,
                dataset)
        if k > 1:  # one call runs up to steps_per_loop steps (bitwise the same training)
            call = make_train_loop(*args, k)
        else:
            step = make_train_step(*args)
            call = lambda state, batch, n: step(state, batch)  # noqa: E731
        return cls(call, run, mesh, dataset, k)

    def host_batches(self, start: int) -> Iterator[dict[str, jax.Array]] | None:
        return None if self.dataset is not None else train_iterator(self.run, start)

    def batch(self, source: Iterator | None, n: int, step: int, save: Callable, mngr: Any) -> Any:
        """The batch of the call that runs steps ``step + 1 .. step + n``. An image the pipeline cannot decode
        keeps the trained steps, then names the file (``data_failure``)."""
        if self.dataset is not None:
            return self.dataset.arrays  # the step draws its own batches
        local: list[dict] = []
        try:
            local.extend(next(source) for _ in range(n))
        except Exception as e:
            raise data_failure(self.run, self.run.train_source, e, step, save, mngr, step + len(local)) from e
        if self.steps_per_loop > 1:
            return stack_batches(local, self.mesh, self.steps_per_loop)
        return data.to_global(local[0], self.mesh)


class Checkpointer:
    """Saves a step with its description (``run.meta``) and data position; never a step after a non-finite loss.
    A step whose evaluation was abandoned is marked ``eval_pending``: the resumed run evaluates it first."""

    def __init__(self, run: Run, mngr: Any, metrics: TrainMetrics):
        self.run, self.mngr, self.metrics = run, mngr, metrics

    def save(self, state: TrainState, step: int, eval_metrics: dict | None, eval_pending: bool = False) -> None:
        self.metrics.flush(keep=True)  # raises on a non-finite loss
        config, per_epoch = self.run.config, self.run.steps_per_epoch
        meta = {k: v for k, v in self.run.meta.items() if k != "eval_pending"}
        meta.update(step=step, data_position=dict(seed=config.seed, batch_size=config.batch_size,
                                                  epoch=step // per_epoch, step_in_epoch=step % per_epoch))
        if eval_pending:
            meta["eval_pending"] = True
        checkpoint.save(self.mngr, step, state.variables, meta, {"step": state.step, "opt_state": state.opt_state},
                        eval_metrics)


class Evaluator:
    """Validation error during training, on the run's eval split (its whole images or center crops); ``check``
    runs between batches (a stop signal abandons the evaluation)."""

    def __init__(self, run: Run, mesh: jax.sharding.Mesh, check: Callable[[], None]):
        self.run, self.mesh, self.check = run, mesh, check
        self.step_fn = evaluation.make_eval_step(evaluation.model_scores(run.model, run.mean, run.std))

    def __call__(self, state: TrainState, step: int, save: Callable, mngr: Any) -> dict:
        run, config = self.run, self.run.config
        batches = (data.array_batches(*run.arrays["eval"], config.eval_batch_size) if run.arrays else
                   data.eval_batches(run.eval_source, config.eval_batch_size, config.eval_preset, config.image_size))
        try:
            result = evaluation.evaluate(self.step_fn, state.variables, self._checked(batches), self.mesh)
        except EvaluationAbandoned:
            raise
        except Exception as e:
            raise data_failure(run, run.eval_source, e, step, save, mngr) from e
        return {"eval_top1_error": result["top1_error"], "eval_top5_error": result["top5_error"],
                "eval_loss": result["loss"]}

    def _checked(self, batches: Iterator) -> Iterator:
        for batch in batches:
            self.check()
            yield batch


@dataclasses.dataclass
class Loop:
    """The loop over train calls, with its periodic actions; ``train`` runs it from ``start`` to the end."""

    run: Run
    mngr: Any
    out: Any  # logger.RunLogger
    stop: StopSignals
    steps: Steps
    evaluate: Evaluator
    on_step: Callable[[int], None] | None = None

    def __post_init__(self):
        self.triggers = Triggers.from_config(self.run.config)
        self.metrics = TrainMetrics(self.mngr, self.run.workdir)
        self.saver, self.in_flight = Checkpointer(self.run, self.mngr, self.metrics), InFlight()
        self.profiler = Profiler(self.run.workdir, self.triggers.profile)

    def train(self, state: TrainState, start: int) -> dict:
        """Train from ``start`` (a step whose evaluation was abandoned is evaluated first); the last metrics."""
        total, last, step = self.run.config.num_train_steps, {}, start
        source = self.steps.host_batches(start)
        try:
            if start and self.run.meta.get("eval_pending"):
                self.out.log(start, self.evaluate(state, start, functools.partial(self.saver.save, state), self.mngr))
            for n in self.triggers.loop_lengths(start, self.steps.steps_per_loop):
                self.profiler.before_call(step)
                batch = self.steps.batch(source, n, step, functools.partial(self.saver.save, state), self.mngr)
                self.stop.startup_point()  # before the first call compiles (a no-op once training)
                state, step_metrics = self.steps.call(state, batch, n)
                step += n
                self.metrics.add(step, n, step_metrics)
                self.in_flight.add(n, step_metrics["loss"], last=step == total)
                self.stop.training = True
                self.after_call(state, step, last)
            checkpoint.finish(self.mngr)
        finally:
            self.profiler.close()
        return dict(last, step=step)

    def after_call(self, state: TrainState, step: int, last: dict) -> None:
        """What follows a train call that ended at ``step``: progress, then log, evaluate, checkpoint and stop,
        each when ``Triggers`` (or a stop signal) says. ``last`` collects the metrics logged."""
        self.profiler.after_call(step, state)
        self.out.tick(step - self.in_flight.steps)
        if self.on_step is not None:
            self.on_step(step)
        if self.triggers.log(step):
            last.clear()
            last.update(self.metrics.flush() or {})
            self.out.log(step, dict(last))
        eval_metrics, abandoned = None, False
        if self.triggers.evaluate(step):
            try:
                eval_metrics = self.evaluate(state, step, functools.partial(self.saver.save, state), self.mngr)
            except EvaluationAbandoned:
                abandoned = True
            else:
                last.update(eval_metrics)
                self.out.log(step, eval_metrics)
        if self.triggers.checkpoint(step) or self.stop.signum:
            self.saver.save(state, step, eval_metrics, eval_pending=abandoned)
        if self.stop.signum:
            checkpoint.finish(self.mngr)
            raise self.stop.preempted(step, abandoned)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       on_step: Callable[[int], None] | None = None) -> dict:
    """Train (resuming from the latest checkpoint in ``workdir``), evaluate and checkpoint; returns the
    last logged metrics. ``on_step(step)`` is called after every train call (every step, or every loop of
    ``steps_per_loop`` steps; e.g. for a study-wide progress bar). A stop signal saves and raises Preempted."""
    from resnet_jax import logger  # matplotlib, tqdm, tensorboardX: only the CLI path needs them

    workdir = storage.for_checkpoints(workdir)
    with StopSignals() as stop:
        run, mngr, lock = open_run(config, workdir)
        if lock is not None:
            stop.cleanup.append(lock.release)
        out = None
        try:
            stop.startup_point()
            mesh = make_mesh()
            schedule = learning_rate_schedule(config, run.steps_per_epoch)
            tx = make_optimizer(config, schedule, run.model.frozen)
            state, start = initial_state(run, mngr, tx, mesh)
            stop.startup_point()
            out = logger.RunLogger(workdir, config.num_train_steps, start, config.batch_size, run.steps_per_epoch)
            steps = Steps.build(run, tx, schedule, mesh)
            stop.startup_point()
            loop = Loop(run, mngr, out, stop, steps, Evaluator(run, mesh, stop.check), on_step)
            return loop.train(state, start)
        except OSError as e:  # the logs on a full disk (checkpoints raise WriteFailed themselves)
            failure = checkpoint.write_failure(mngr, e, what=f"writing the logs in {workdir}")
            if failure is e:
                raise
            raise failure from e
        finally:
            error = sys.exc_info()[1]
            # a save in flight waits on every process: with one lost, waiting would last until JAX aborts this one,
            # so the save is left as it is, for the rerun to ignore and remove
            if error is None or not lost_process(error):
                checkpoint.close(mngr)
            if out is not None:
                out.close()
            if lock is not None:
                lock.release()
