"""Throughput of the real train step of train.py on synthetic device-resident data.

    python benchmarks/train_step.py --model=resnet50 --batch_size=16 --image_size=224 --dtype=float32 \
        --steps=5 [--conv_impl=auto,xla] [--torch] [--reference=PATH/TO/flax/examples/imagenet] [--output=out.json]

``--reference`` names a checkout of google/flax's examples/imagenet: its own ``train_step`` and ``ResNet50``
are imported from there (nothing is copied here) and timed in the same process, the two steps taking turns.
``--conv_impl`` takes a comma-separated list: each implementation is timed as its own runner. ``--loops=1,10``
also times train.py's loop (``make_train_loop``) running that many steps per call (one runner each; images/s
per step). ``--torch``
times the same network (resnet_jax.torch_models) with PyTorch's SGD step on this machine's threads, also in
the same process: in ``channels_last`` (``torch``: PyTorch's best mode on CPUs, the baseline of the speedups)
and in NCHW (``torch_nchw``); with ``--dtype=bfloat16`` under bf16 autocast (fp32 parameters, as ours).
Reported: images/s (median over steps), step time, compile time, training FLOPs per image (6 x the
multiply-adds of Table 1's count) and MFU where the device's peak is known.
"""

import argparse
import functools
import resource
import statistics
import sys
import time
from types import SimpleNamespace

import common
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from resnet_jax import data, models, training
from resnet_jax.configs import default

# Dense peak FLOP/s by device kind and compute dtype (vendor figures).
PEAK_FLOPS = {("NVIDIA H100 80GB HBM3", "bfloat16"): 989e12, ("NVIDIA H200", "bfloat16"): 989e12,
              ("NVIDIA A100-SXM4-80GB", "bfloat16"): 312e12, ("NVIDIA A100-SXM4-40GB", "bfloat16"): 312e12}


def flops_per_image(model, image_size: int) -> float:
    """Training FLOPs per image by the usual convention: 3 passes (forward, two backward) x 2 FLOPs per
    multiply-add of the convolutions and the fully-connected layer. (XLA's cost analysis is not used: on GPUs it
    leaves out the cuDNN convolutions.)"""
    return 6 * models.multiply_adds(model, image_size)


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    jax.block_until_ready(out)
    return out, time.perf_counter() - start


def faults() -> int:
    """Minor page faults of this process so far: memory touched for the first time."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed_faults(fn) -> tuple[float, int]:
    """Seconds of one call of ``fn`` (as :func:`timed`) and the pages it faulted in."""
    before = faults()
    seconds = timed(fn)[1]
    return seconds, faults() - before


def warm_up(runners: dict, rounds: int, settled: int = 1000, extra: int = 10) -> None:
    """``rounds`` untimed steps of each runner in turn, then more rounds (at most ``extra``) until one in which no
    step faulted in more than ``settled`` pages: the heap kept by ``resnet_jax.host_memory`` grows over the first
    steps, in jumps of a whole step's buffer where two steps' buffers are alive at once, then stays (a run of
    train.py reaches that size once; docs/performance.md)."""
    for round_ in range(rounds + extra):
        grew = [timed_faults(run)[1] for run, *_ in runners.values()]
        if round_ + 1 >= rounds and max(grew) <= settled:
            return


def ours(args, conv_impl: str, loop: int = 0):
    """Our step (``loop=0``), or ``loop`` steps per call of train.py's loop; returns (run, compile seconds,
    training FLOPs per image, steps per call)."""
    config = SimpleNamespace(**dict(default.fields(), model=args.model, batch_size=args.batch_size,
                                    dtype=args.dtype, scan=args.scan, remat=args.remat))
    model = models.create_model(args.model, num_classes=args.num_classes, conv_impl=conv_impl,
                                **training.model_options(config))
    mesh = training.make_mesh()
    schedule = training.learning_rate_schedule(config, 1000)
    tx = training.make_optimizer(config, schedule)
    state = training.create_train_state(model, tx, args.image_size, 0, mesh)
    rng = np.random.default_rng(0)
    batch = data.to_global({"image": rng.integers(0, 256, (args.batch_size, args.image_size, args.image_size, 3),
                                                  dtype=np.uint8),
                            "label": rng.integers(0, args.num_classes, args.batch_size).astype(np.int32)}, mesh)
    dataset = None
    if args.on_device_data:  # a CIFAR-sized train set resident on the device; the step draws its batches
        n = 50_000
        put = functools.partial(jax.device_put, device=NamedSharding(mesh, PartitionSpec()))
        dataset = training.OnDeviceData(put(rng.integers(0, 256, (n, args.image_size, args.image_size, 3),
                                                          dtype=np.uint8)),
                                         put(rng.integers(0, args.num_classes, n).astype(np.int32)),
                                         args.batch_size, seed=0)
        batch = dataset.arrays
    common_args = (model, tx, mesh, data.IMAGENET_MEAN, data.IMAGENET_STD, args.num_classes)
    if loop:
        step = training.make_train_loop(*common_args, schedule=schedule, dataset=dataset, steps_per_loop=loop)
        if dataset is None:  # the same batch, ``loop`` times
            batch = jax.tree.map(lambda a: jnp.stack([a] * loop), batch)
        args_ = (state, batch, np.int32(loop))
    else:
        step = training.make_train_step(*common_args, schedule=schedule, dataset=dataset)
        args_ = (state, batch)
    start = time.perf_counter()
    compiled = step.lower(*args_).compile()
    compile_seconds = time.perf_counter() - start
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], *args_[1:])
        return metrics

    run.compiled = compiled  # for benchmarks/step_profile.py: the program's HLO names its ops
    return run, compile_seconds, flops_per_image(model, args.image_size), max(loop, 1)


def pytorch(args, channels_last: bool = True):
    """The same network and step in PyTorch: forward, cross-entropy, backward, SGD with momentum 0.9 and
    weight decay 1e-4 (the paper's recipe); the network and its input in ``channels_last`` or NCHW; fp32, or bf16
    autocast for ``--dtype=bfloat16`` (PyTorch's mixed precision on CPUs: fp32 parameters and optimizer)."""
    import torch

    from resnet_jax.torch_models import torch_model

    version = models.MODELS[args.model].get("version", "v1")
    layout = torch.channels_last if channels_last else torch.contiguous_format
    net = torch_model(args.model, args.num_classes, version=version).train().to(memory_format=layout)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.normal(size=(args.batch_size, 3, args.image_size, args.image_size))
                              .astype(np.float32)).contiguous(memory_format=layout)
    labels = torch.from_numpy(rng.integers(0, args.num_classes, args.batch_size))

    bf16 = args.dtype == "bfloat16"

    def run():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(net(images), labels)
        loss.backward()
        opt.step()
        return loss.item()

    return run, 0.0, float("nan"), 1


def reference(args):
    sys.path.insert(0, args.reference)
    import importlib
    import types

    # The example's train.py imports its input pipeline, TensorFlow, TFDS and clu at the top; the two
    # functions timed here use none of them, so where one is not installed (GPU images) an empty module
    # stands in for it.
    class Absent(types.ModuleType):
        def __getattr__(self, attr):
            if attr.startswith("__"):
                raise AttributeError(attr)
            return Absent(f"{self.__name__}.{attr}")

    import flax.training.checkpoints  # noqa: F401  (before the stand-ins: flax.io looks for TensorFlow)

    sys.modules["input_pipeline"] = Absent("input_pipeline")
    for name in ("tensorflow", "tensorflow_datasets", "clu.metric_writers", "clu.periodic_actions"):
        try:
            importlib.import_module(name)
        except Exception:  # not installed, or broken by a stand-in
            sys.modules[name.split(".")[0]] = Absent(name.split(".")[0])
    import ml_collections
    import models as ref_models  # the flax example's own modules

    import train as ref_train

    n = jax.local_device_count()
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    model = ref_models.ResNet50(num_classes=args.num_classes, dtype=dtype)
    lr = lambda step: 0.1  # noqa: E731
    # The compute dtype is set on the model; half_precision stays off, which on GPUs would mean float16 with
    # dynamic loss scaling in the example (on TPUs it means bfloat16, as here).
    config = ml_collections.ConfigDict(dict(momentum=0.9, half_precision=False))
    state = ref_train.create_train_state(jax.random.key(0), config, model, args.image_size, lr)
    p_step = jax.pmap(functools.partial(ref_train.train_step, learning_rate_fn=lr), in_axes=(None, 0),
                      out_axes=(None, 0), axis_name="batch")
    rng = np.random.default_rng(0)
    shape = (n, args.batch_size // n, args.image_size, args.image_size, 3)
    batch = {"image": jnp.asarray(rng.normal(size=shape), dtype),
             "label": jnp.asarray(rng.integers(0, args.num_classes, shape[:2]).astype(np.int32))}
    (state, _), compile_seconds = timed(p_step, state, batch)
    holder = {"state": state}

    def run():
        holder["state"], metrics = p_step(holder["state"], batch)
        return metrics

    return run, compile_seconds, float("nan"), 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--num_classes", type=int, default=1000)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed rounds of steps first, then up to 10 more until the heap stops growing (no runner's "
                        "step faults in over 1,000 pages)")
    p.add_argument("--scan", action="store_true")
    p.add_argument("--remat", action="store_true")
    p.add_argument("--on_device_data", action="store_true", help="draw batches from a device-resident train set")
    p.add_argument("--conv_impl", default="auto", help="comma-separated: auto, xla, im2col, onednn (one runner each)")
    p.add_argument("--loops", default="", help="comma-separated steps per call of train.py's loop, e.g. 1,10")
    p.add_argument("--torch", action="store_true",
                   help="also time the PyTorch twin of the network (channels_last and NCHW; bf16 autocast with "
                        "--dtype=bfloat16)")
    p.add_argument("--reference", help="path to flax/examples/imagenet (ResNet-50 only)")
    p.add_argument("--output")
    args = p.parse_args()
    impls = args.conv_impl.split(",")
    runners = {("ours" if len(impls) == 1 else f"ours_{impl}"): ours(args, impl) for impl in impls}
    for k in filter(None, args.loops.split(",")):
        runners[f"ours_loop{k}"] = ours(args, impls[0], int(k))
    if args.torch:
        runners["torch"] = pytorch(args, channels_last=True)
        runners["torch_nchw"] = pytorch(args, channels_last=False)
    if args.reference:
        runners["reference"] = reference(args)
    times = {name: [] for name in runners}
    faulted = {name: 0 for name in runners}  # minor page faults in the timed steps (memory touched afresh)
    warm_up(runners, args.warmup)
    for _ in range(args.steps):
        for name, (run, *_) in runners.items():
            seconds, pages = timed_faults(run)
            times[name].append(seconds)
            faulted[name] += pages
    device = jax.devices()[0]
    result = dict(model=args.model, batch_size=args.batch_size, image_size=args.image_size, dtype=args.dtype,
                  scan=args.scan, remat=args.remat, on_device_data=args.on_device_data, conv_impl=args.conv_impl,
                  **common.environment())
    prefixes = {name: "" if name == "ours" else f"{name}_" for name in runners}
    for name, (_, compile_seconds, fpi, steps_per_call) in runners.items():
        prefix = prefixes[name]
        median = statistics.median(times[name]) / steps_per_call
        result.update({f"{prefix}step_seconds_median": median,
                       f"{prefix}images_per_second": args.batch_size / median,
                       f"{prefix}compile_seconds": compile_seconds,
                       f"{prefix}page_faults_per_step": faulted[name] / args.steps})
        if name.startswith("ours"):
            result["flops_per_image"] = fpi
            peak = PEAK_FLOPS.get((device.device_kind, args.dtype))
            result[f"{prefix}mfu"] = fpi * args.batch_size / median / (peak * jax.device_count()) if peak else None
    for baseline in ("reference", "torch", "torch_nchw"):
        if baseline in runners:
            for name in runners:
                if name.startswith("ours"):
                    result[f"{prefixes[name]}speedup_vs_{baseline}"] = (
                        result[f"{prefixes[name]}images_per_second"] / result[f"{baseline}_images_per_second"])
    print(f"{'':<14} {'images/s':>9} {'step s':>8} {'compile s':>10} {'faults/step':>12}")
    for name, prefix in prefixes.items():
        print(f"{name:<14} {result[prefix + 'images_per_second']:9.2f} {result[prefix + 'step_seconds_median']:8.3f} "
              f"{result[prefix + 'compile_seconds']:10.1f} {result[prefix + 'page_faults_per_step']:12.0f}")
    for key, value in result.items():
        if "speedup_vs_" in key:
            name, baseline = key.split("speedup_vs_")
            print(f"{(name.rstrip('_') or 'ours')} / {baseline}: {value:.2f}x")
    host = (f", {result['cpu_model']} (cpu family {result['cpu_family']}, model {result['cpu_model_number']}, "
            f"AVX-512 {'yes' if result['avx512'] else 'no'})" if device.platform == "cpu" else "")
    print(f"GFLOPs/image {result['flops_per_image'] / 1e9:.2f}  device {device.device_kind}{host}")
    common.write(result, args.output)


if __name__ == "__main__":
    main()
