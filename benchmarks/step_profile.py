"""Where the whole CPU train step's time goes, by kind of work: ours (train.py's step) beside PyTorch's.

    python benchmarks/step_profile.py --model=cifar_resnet20 --image_size=32 --batch_size=128 [--torch] \
        [--dtype=bfloat16] [--steps=5] [--output=out.json]

Ours: a ``jax.profiler`` trace of ``--steps`` steps of benchmarks/train_step.py's step (``conv_impl=auto``).
Each op of the trace is the instruction of that name in the compiled program, classified by what it computes:
convolutions (oneDNN's custom calls, XLA's convolutions), matmuls (im2col convolutions, the classifier),
reductions over the batch (batch-norm statistics and their gradients), transposes and copies of activations,
elementwise work on activations (normalising, ReLU, the shortcut additions and option A's padding, and their
gradients), and work on parameter-sized arrays (the optimizer update, weight decay, the gradients' mean).
PyTorch (``--torch``, ``channels_last``, SGD; fp32, or bf16 autocast with ``--dtype=bfloat16``):
``torch.profiler``'s self time of each ATen op, grouped the same way. "Outside the ops" is the profiled step's
wall time that no op accounts for (dispatch, the framework); the step's median time without the profiler is
printed beside it.

The process's allocator is set as train.py sets it (``resnet_jax.host_memory``, the same for both);
``RESNET_JAX_MALLOC=0`` profiles glibc's default instead.
"""

import argparse
import collections
import glob
import gzip
import itertools
import json
import re
import statistics
import tempfile

import common
import jax
import train_step

KINDS = ("convolutions", "matmuls", "reductions over the batch", "transposes and copies", "elementwise on activations",
         "parameters and optimizer", "loss", "outside the ops")
# PyTorch's ATen ops by kind (self time; the rest of its ops are elementwise work on activations)
# (the optimizer's ops are those inside its ``Optimizer.step`` range)
TORCH_KINDS = {"convolution": "convolutions", "addmm": "matmuls", "mm": "matmuls", "batch_norm": "batch norm",
               "cross_entropy": "loss", "log_softmax": "loss", "nll_loss": "loss", "copy_": "transposes and copies",
               "clone": "transposes and copies", "contiguous": "transposes and copies"}

INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\([^)]*\)|\S+) ([\w\-]+)\((.*)$")
COMPUTATION = re.compile(r"^%?([\w.\-]+) .*\{$")


def parse_hlo(text: str) -> tuple[dict, dict]:
    """The program's instructions (name -> (shape, opcode, operand names, called computation)) and the opcodes
    of each computation's body."""
    instructions, bodies, current = {}, collections.defaultdict(set), None
    for line in text.splitlines():
        if (m := COMPUTATION.match(line)) and " = " not in line:
            current = m.group(1)
            continue
        if (m := INSTRUCTION.match(line)) is None:
            continue
        name, shape, opcode, rest = m.groups()
        bodies[current].add(opcode)
        called = re.search(r"calls=%?([\w.\-]+)", rest)
        target = re.search(r'custom_call_target="([^"]+)"', rest)
        instructions[name] = dict(shape=shape, opcode=opcode, operands=re.findall(r"%([\w.\-]+)", rest.split("),")[0]),
                                  called=called.group(1) if called else None, target=target.group(1) if target else "")
    return instructions, bodies


def dims(shape: str) -> list[list[int]]:
    return [[int(d) for d in m.split(",") if d] for m in re.findall(r"\[([\d,]*)\]", shape)]


def classify(name: str, instructions: dict, bodies: dict, batch: int) -> str | None:
    """The kind of work of the program's instruction ``name`` (None: not an op of the program)."""
    op = instructions.get(name)
    if op is None:
        return None
    body = bodies.get(op["called"], set()) | {op["opcode"]}
    if (op["opcode"] == "custom-call" and "onednn" in op["target"]) or "convolution" in body:
        return "convolutions"
    if "dot" in body:
        return "matmuls"
    shapes = [d for s in [op["shape"], *(instructions[o]["shape"] for o in op["operands"] if o in instructions)]
              for d in dims(s)]
    if not any(len(d) >= 3 and d[0] == batch for d in shapes):
        return "loss" if any(len(d) == 2 and d[0] == batch for d in shapes) else "parameters and optimizer"
    if "reduce" in body:
        return "reductions over the batch"
    if (body & {"transpose", "copy"} and op["opcode"] != "fusion") or "transpose" in body:
        return "transposes and copies"
    return "elementwise on activations"


def step_times(run, steps: int) -> list[float]:
    """Seconds of each of ``steps`` calls of ``run`` (train_step.py's timing, to the end of the work)."""
    return [train_step.timed(run)[1] for _ in range(steps)]


def profile_ours(args) -> dict:
    run, *_ = train_step.ours(args, "auto")
    instructions, bodies = parse_hlo(run.compiled.as_text())
    local_batch = args.batch_size // jax.local_device_count()
    step_times(run, 2)  # warm-up
    wall = statistics.median(step_times(run, args.steps))
    with tempfile.TemporaryDirectory() as folder:
        jax.profiler.start_trace(folder, create_perfetto_trace=True)
        traced = statistics.mean(step_times(run, args.steps))
        jax.profiler.stop_trace()
        (path,) = glob.glob(f"{folder}/**/perfetto_trace.json.gz", recursive=True)
        with gzip.open(path) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    ops = [(e["ts"], e["ts"] + e["dur"], kind) for e in events
           if e.get("ph") == "X" and (kind := classify(e["name"], instructions, bodies, local_batch))]
    ms = {kind: v / 1e3 / args.steps for kind, v in shared_time(ops).items()}
    ms["outside the ops"] = max(0.0, 1e3 * traced - sum(ms.values()))
    return dict(step_ms=1e3 * wall, traced_step_ms=1e3 * traced, ms=ms)


def shared_time(ops: list[tuple[float, float, str]]) -> collections.Counter:
    """Wall time by kind, from (start, end, kind) intervals that may overlap (XLA:CPU runs independent ops at
    once): each stretch of time is shared equally by the ops running in it, so the kinds add up to the time
    that any op was running."""
    edges = sorted({t for start, end, _ in ops for t in (start, end)})
    starts = collections.defaultdict(list)
    for start, end, kind in ops:
        starts[start].append((end, kind))
    running, total = [], collections.Counter()
    for t, following in itertools.pairwise(edges):
        running = [(end, kind) for end, kind in running if end > t] + starts.get(t, [])
        for _, kind in running:
            total[kind] += (following - t) / len(running)
    return total


def torch_kind(event) -> str:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("Optimizer.step"):
            return "parameters and optimizer"
        parent = parent.cpu_parent
    name = event.name.removeprefix("aten::")
    for key, kind in TORCH_KINDS.items():
        if key in name:
            return kind
    return "elementwise on activations"


def profile_torch(args) -> dict:
    import torch

    run, *_ = train_step.pytorch(args, channels_last=True)
    step_times(run, 2)  # warm-up
    wall = statistics.median(step_times(run, args.steps))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        traced = statistics.mean(step_times(run, args.steps))
    ms = collections.Counter()
    for event in prof.events():
        if event.name.startswith("aten::"):
            ms[torch_kind(event)] += event.self_cpu_time_total / 1e3 / args.steps
    ms["outside the ops"] = max(0.0, 1e3 * traced - sum(ms.values()))
    return dict(step_ms=1e3 * wall, traced_step_ms=1e3 * traced, ms=dict(ms))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--num_classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="the compute type (parameters stay fp32); PyTorch's step under bf16 autocast for bfloat16")
    p.add_argument("--torch", action="store_true", help="also profile PyTorch's step (channels_last)")
    p.add_argument("--output")
    args = p.parse_args()
    args.scan, args.remat, args.on_device_data = False, False, False
    result = dict(model=args.model, batch_size=args.batch_size, image_size=args.image_size, dtype=args.dtype,
                  **common.environment())
    result["ours"] = profile_ours(args)
    if args.torch:
        result["torch"] = profile_torch(args)
    names = [n for n in ("ours", "torch") if n in result]
    kinds = [k for k in (*KINDS, "batch norm") if any(k in result[n]["ms"] for n in names)]
    print(f"{'ms per step':<28}" + "".join(f"{n:>10}" for n in names))
    for kind in kinds:
        print(f"{kind:<28}" + "".join(f"{result[n]['ms'].get(kind, 0.0):10.1f}" for n in names))
    print(f"{'step while profiled':<28}" + "".join(f"{result[n]['traced_step_ms']:10.1f}" for n in names))
    print(f"{'step, not profiled':<28}" + "".join(f"{result[n]['step_ms']:10.1f}" for n in names))
    print(f"{result['cpu_model']} (cpu family {result['cpu_family']}, model {result['cpu_model_number']}), "
          f"{result['cores']} cores, allocator: {result['malloc']}")
    common.write(result, args.output)


if __name__ == "__main__":
    main()
