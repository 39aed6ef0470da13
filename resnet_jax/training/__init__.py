"""Training, one job per module:

- ``recipe``: the learning-rate schedule, the optimizer and which parts train (Sec. 3.4, 4.2);
- ``init``: fine-tuning from another run's weights (``init_from``);
- ``step``: the sharded train step and the loop of steps on the device;
- ``on_device``: a small train set kept and augmented on the accelerator;
- ``run``: checking a config and workdir and describing the data before anything compiles;
- ``periodic``: when the loop logs, evaluates, checkpoints, profiles and stops on a signal;
- ``failures``: what a failed input pipeline leaves behind;
- ``lock``: one run per workdir;
- ``loop``: ``train_and_evaluate``, the loop itself.
"""

from resnet_jax.mesh import AXIS, make_mesh
from resnet_jax.training.errors import LOST_PROCESS_EXIT_CODE, ConfigError, Preempted, lost_process
from resnet_jax.training.init import load_init_from, merge_variables
from resnet_jax.training.lock import LEASE_SECONDS, BucketLease, WorkdirLock, WorkdirLocked, run_lock
from resnet_jax.training.loop import train_and_evaluate
from resnet_jax.training.on_device import OnDeviceData, on_device_data
from resnet_jax.training.periodic import (
    GRACE_SECONDS,
    MAX_CALLS_IN_FLIGHT,
    StopSignals,
    Triggers,
    loop_lengths,
    profile_steps,
)
from resnet_jax.training.recipe import frozen_parts, learning_rate_schedule, make_optimizer, model_options
from resnet_jax.training.run import Run, prepare
from resnet_jax.training.step import (
    TrainState,
    create_train_state,
    make_train_loop,
    make_train_step,
    stack_batches,
)

__all__ = [
    "AXIS",
    "GRACE_SECONDS",
    "LEASE_SECONDS",
    "LOST_PROCESS_EXIT_CODE",
    "MAX_CALLS_IN_FLIGHT",
    "BucketLease",
    "ConfigError",
    "OnDeviceData",
    "Preempted",
    "Run",
    "StopSignals",
    "TrainState",
    "Triggers",
    "WorkdirLock",
    "WorkdirLocked",
    "create_train_state",
    "frozen_parts",
    "learning_rate_schedule",
    "load_init_from",
    "loop_lengths",
    "lost_process",
    "make_mesh",
    "make_optimizer",
    "make_train_loop",
    "make_train_step",
    "merge_variables",
    "model_options",
    "on_device_data",
    "prepare",
    "profile_steps",
    "run_lock",
    "stack_batches",
    "train_and_evaluate",
]
