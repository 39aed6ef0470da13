"""Train a ResNet of the paper (thin CLI over resnet_jax.training).

    python -m resnet_jax.train --config=cifar10:cifar_resnet20 --workdir=runs/r20 \
        [--config.dataset=folder:/data/cifar10] [--config.num_train_steps=500] [--config.<field>=<value> ...]

The same as ``resnet-jax-train`` and, in a checkout, ``python train.py``. ``--config`` is a packaged config
(``cifar10``, ``cifar100``, ``imagenet``, ``tiny_imagenet``, then ``:<model>``) or a config file's path.

Rerunning the same command resumes from the latest checkpoint in --workdir. Multi-host: on TPU pods
jax.distributed initialises itself (pass --multihost); on GPU clusters pass --coordinator_address,
--num_processes and --process_id on every host.
"""

import ast
import logging
import os
import signal
import sys

from absl import app, flags
from ml_collections import config_flags

from resnet_jax import host_memory

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "a packaged config or a config file, then :<model>, e.g. "
                                "cifar10:cifar_resnet20 or resnet_jax/configs/cifar10.py:cifar_resnet20",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics.jsonl, curves.png and TensorBoard logs")
flags.DEFINE_bool("multihost", False, "call jax.distributed.initialize() (automatic on TPU pods and SLURM)")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-host GPU/CPU clusters")
flags.DEFINE_integer("num_processes", None, "number of processes (multi-host)")
flags.DEFINE_integer("process_id", None, "this process's index (multi-host)")
flags.DEFINE_integer("heartbeat_timeout", 60, "multi-host: seconds after which a silent process counts as lost")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    import jax

    if FLAGS.coordinator_address or FLAGS.multihost:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives; GPUs/TPUs ignore it
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                                   heartbeat_timeout_seconds=FLAGS.heartbeat_timeout)
    from absl import logging as absl_logging

    from resnet_jax import checkpoint, data, quiet, storage, training

    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax is chatty at INFO
    quiet.cli_logging()
    logging.getLogger("resnet_jax").setLevel(logging.INFO)
    try:
        metrics = training.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (training.ConfigError, data.DataError, checkpoint.CheckpointError, storage.StorageError,
            FloatingPointError) as e:
        sys.exit(f"error: {e}")
    except checkpoint.WriteFailed as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except training.Preempted as e:  # the run is saved and its files closed: end without the interpreter's
        print(e, flush=True)          # shutdown, whose teardown beside XLA's and TensorFlow's threads can crash
        sys.stderr.flush()
        os._exit(e.exit_code)
    except Exception as e:
        if training.lost_process(e):
            # JAX's shutdown would wait on the lost process, then abort with pages of native stack traces
            print(f"error: process {jax.process_index()} lost contact with another process of this run "
                  f"({checkpoint.first_line(e, 200)}); rerun all {jax.process_count()} processes to resume from the "
                  f"last checkpoint", file=sys.stderr, flush=True)
            os._exit(training.LOST_PROCESS_EXIT_CODE)
        raise
    if jax.process_index() == 0:
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))


def parse_flags(argv):
    """absl's flag parsing, with a mistyped field or a bad value reported in one line instead of a traceback."""
    from resnet_jax import configs

    try:
        return FLAGS(configs.resolve_flag(argv))
    except (AttributeError, KeyError) as e:  # ml_collections: an override of a field the config lacks
        sys.exit(f"error: unknown config field: {one_line(e)}")
    except Exception as e:  # flags.Error, a value of the wrong type, a config file that does not load
        sys.exit(f"error: {one_line(e)}")


def one_line(error: Exception) -> str:
    text = str(error)
    while len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":  # KeyError wrapped in AttributeError
        text = ast.literal_eval(text) if text[0] in "'\"" else text
    return " ".join(text.split())


def stop_during_start_up(signum: int, frame) -> None:
    """A stop signal before the training loop has installed its own handlers (while Python imports JAX, parses
    the flags, starts the processes): nothing is open or trained yet, so the run ends at once with the signal's
    exit code (143 for SIGTERM, 130 for Ctrl-C), as it would later, instead of dying by the signal."""
    print(f"received {signal.Signals(signum).name} during start-up: nothing new to save, exiting", flush=True)
    os._exit(128 + signum)


def run() -> None:
    """The command (``resnet-jax-train``)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop_during_start_up)
    host_memory.keep_freed_memory()  # before JAX starts its threads
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
