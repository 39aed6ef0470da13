"""What train.py's loop costs on top of its step: the bare compiled step against ``train_and_evaluate``.

    python benchmarks/train_loop.py --model=cifar_resnet20 --image_size=32 --batch_size=128 --steps=300 \
        [--loops=1,10] [--profile] [--output=out.json]

Both run on the same synthetic train set kept on the device (``--config.dataset=synthetic`` with
``on_device_data``, the pad-and-crop augmentation on the device), so no input pipeline is involved. The bare
step is timed twice: dispatched back to back (the device never waits for the host) and waiting for each step
(what a loop that syncs every step gets).
train.py's loop is timed from inside (the ``on_step`` callback) from its first log event to its last step,
so compilation and the final evaluation and checkpoint are left out, while the log events in between (metric
fetches, metrics.jsonl, TensorBoard, the progress bar) count. ``--loops`` runs it once per ``steps_per_loop``.
``--profile`` adds the host functions that took the most time in the timed part of the first loop run (cProfile).
"""

import argparse
import cProfile
import io
import pstats
import statistics
import tempfile
import time

import common
import jax

from resnet_jax import training
from resnet_jax.configs import cifar10, imagenet


def config_for(args, steps_per_loop: int):
    """The paper's recipe for the model (CIFAR's or ImageNet's) on synthetic data kept on the device."""
    c = cifar10.get_config(args.model) if args.model.startswith("cifar_") else imagenet.get_config(args.model)
    c.update(dict(train_preset="cifar", dataset=f"synthetic:{args.num_classes}", on_device_data=True,
                  train_split="train", eval_split="test",
                  image_size=args.image_size, batch_size=args.batch_size, num_train_steps=args.steps,
                  log_every_steps=args.log_every, eval_every_steps=args.steps, checkpoint_every_steps=args.steps,
                  eval_batch_size=1024, steps_per_loop=steps_per_loop, dtype=args.dtype))
    return c


def bare(args) -> dict:
    """Seconds per step of the bare step, back to back and waiting for each."""
    config = config_for(args, 1)
    with tempfile.TemporaryDirectory() as workdir:  # prepare() only reads it
        run = training.prepare(config, workdir)
    mesh = training.make_mesh()
    schedule = training.learning_rate_schedule(config, run.steps_per_epoch)
    tx = training.make_optimizer(config, schedule)
    state = training.create_train_state(run.model, tx, config.image_size, config.seed, mesh)
    dataset = training.on_device_data(*run.arrays["train"], config.batch_size, config.seed, mesh)
    step = training.make_train_step(run.model, tx, mesh, run.mean, run.std, run.model.num_classes,
                                     schedule=schedule, dataset=dataset)
    state, _ = step(state, dataset.arrays)
    jax.block_until_ready(state)
    n = args.steps // 2
    rounds = {"back_to_back": [], "waiting": []}
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            state, metrics = step(state, dataset.arrays)
        jax.block_until_ready(state)
        rounds["back_to_back"].append((time.perf_counter() - start) / n)
        start = time.perf_counter()
        for _ in range(n):
            state, metrics = step(state, dataset.arrays)
            metrics["loss"].block_until_ready()
        rounds["waiting"].append((time.perf_counter() - start) / n)
    return {k: statistics.median(v) for k, v in rounds.items()}


def loop(args, steps_per_loop: int, profile: bool) -> tuple[float, str]:
    """Seconds per step of train.py's loop between its first log event and its end (and a host profile)."""
    times: dict[int, float] = {}
    profiler = cProfile.Profile() if profile else None
    profiling: list[int] = []

    def on_step(step):
        times[step] = time.perf_counter()
        if profiler is not None and step > args.log_every and not profiling:
            profiler.enable()
            profiling.append(step)
        if profiler is not None and step == args.steps:
            profiler.disable()

    with tempfile.TemporaryDirectory() as workdir:
        training.train_and_evaluate(config_for(args, steps_per_loop), workdir, on_step=on_step)
    # The log event at step log_every fetched its metrics, so every step up to it had finished; the first call
    # after it was dispatched just before its on_step; the last step is waited for before its on_step.
    start, last = min(s for s in times if s > args.log_every), max(times)
    report = ""
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
        report = out.getvalue()
    return (times[last] - times[start]) / (last - args.log_every), report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--num_classes", type=int, default=10)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--steps", type=int, default=300, help="train.py steps per run (the bare step: 3 x steps/2)")
    p.add_argument("--log_every", type=int, default=100)
    p.add_argument("--loops", default="1", help="comma-separated steps_per_loop values for train.py's loop")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--output")
    args = p.parse_args()
    if args.steps % args.log_every or args.steps < 2 * args.log_every:
        p.error("--steps must be a multiple of --log_every, at least twice it")
    result = dict(model=args.model, image_size=args.image_size, batch_size=args.batch_size, dtype=args.dtype,
                  steps=args.steps, log_every=args.log_every, **common.environment())
    seconds = bare(args)
    result.update({f"bare_{k}_ms": 1e3 * v for k, v in seconds.items()})
    print(f"{'':<26} {'ms/step':>8} {'images/s':>9} {'vs bare':>8}")
    reference = seconds["back_to_back"]
    for name, value in seconds.items():
        print(f"{'bare step, ' + name.replace('_', ' '):<26} {1e3 * value:8.2f} {args.batch_size / value:9.1f}"
              f" {reference / value:8.3f}")
    for i, k in enumerate(int(k) for k in args.loops.split(",")):
        value, report = loop(args, k, args.profile and i == 0)
        result[f"train_py_loop{k}_ms"] = 1e3 * value
        result[f"train_py_loop{k}_vs_bare"] = reference / value
        print(f"{f'train.py, steps_per_loop={k}':<26} {1e3 * value:8.2f} {args.batch_size / value:9.1f}"
              f" {reference / value:8.3f}")
        if report:
            print(report)
    print(f"device {jax.devices()[0].device_kind} x{jax.device_count()}")
    common.write(result, args.output)


if __name__ == "__main__":
    main()
