"""Every convolution of a network, each pass (forward, input gradient, kernel gradient) timed with each
implementation of resnet_jax.conv: the measurements behind ``conv_impl="auto"``'s CPU rules.

    python benchmarks/conv_passes.py --model=resnet18 --image_size=64 --batch_size=128 [--torch] [--output=out.json]

Prints one row per distinct convolution (how often the network uses it, milliseconds per pass and
implementation, the fastest one's initial, and what ``cpu_plan`` picks) and the network's totals per choice.
oneDNN's passes are included where they can be built (``resnet_jax.native.onednn``); ``--torch`` adds PyTorch's
time for each pass of the same convolution (same process, this machine's threads).
"""

import argparse
import statistics
import time
from collections import Counter

import common
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import conv, models

PASSES = ("forward", "input_grad", "kernel_grad")


def conv_shapes(model_name: str, image_size: int, batch_size: int) -> Counter:
    """(input shape, kernel shape, stride, padding) of every convolution in the forward pass, with counts."""
    model = models.create_model(model_name, conv_impl="xla")
    x = jax.ShapeDtypeStruct((batch_size, image_size, image_size, 3), jnp.float32)
    return Counter(conv.traced_convolutions(model.apply, models.abstract_variables(model, image_size), x))


def candidates() -> dict[str, dict[str, object]]:
    """Each pass's implementations (oneDNN's only where it can be built here)."""
    found = {"forward": dict(conv.IMPLEMENTATIONS), "input_grad": dict(conv.INPUT_GRADS),
             "kernel_grad": dict(conv.KERNEL_GRADS)}
    reason = conv.onednn.unavailable()
    if reason:
        print(f"oneDNN left out: {reason}")
        for impls in found.values():
            impls.pop("onednn")
    return found


def pass_fn(which: str, f, stride: int, padding):
    if which == "forward":
        return jax.jit(lambda x, k, g: f(x, k, stride, padding))
    if which == "input_grad":
        return jax.jit(lambda x, k, g: f(g, k, stride, padding, x.shape))
    return jax.jit(lambda x, k, g: f(x, g, stride, padding, k.shape))


def time_ms(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def torch_ms(x, k, g, stride: int, padding, repeats: int) -> dict[str, float]:
    """PyTorch's time for the same convolution's three passes (NCHW tensors, its default; oneDNN on CPUs)."""
    import torch

    tx, tg = (torch.from_numpy(np.array(a)).permute(0, 3, 1, 2).contiguous() for a in (x, g))
    tk = torch.from_numpy(np.array(k)).permute(3, 2, 0, 1).contiguous()
    pad = (padding[0][0], padding[1][0])
    assert padding[0][0] == padding[0][1] or stride > 1, padding  # symmetric, as in these networks

    def backward(mask):
        return lambda *_: torch.ops.aten.convolution_backward(tg, tx, tk, None, (stride, stride), pad, (1, 1), False,
                                                              (0, 0), 1, mask)

    passes = {"forward": lambda *_: torch.nn.functional.conv2d(tx, tk, stride=stride, padding=pad),
              "input_grad": backward((True, False, False)), "kernel_grad": backward((False, True, False))}
    with torch.no_grad():
        return {w: time_ms(f, (), repeats) for w, f in passes.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--torch", action="store_true", help="also time PyTorch's passes of each convolution")
    p.add_argument("--output")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    impls = candidates()
    rows, totals = [], Counter()
    print(f"{'input':>18} {'kernel':>16} s  n | " + " | ".join(f"{w}: " + " ".join(impls[w]) for w in PASSES)
          + " | auto")
    for (shape, kshape, stride, padding), count in sorted(conv_shapes(args.model, args.image_size,
                                                                      args.batch_size).items()):
        x = jnp.asarray(rng.normal(size=shape), jnp.float32)
        k = jnp.asarray(rng.normal(size=kshape), jnp.float32)
        g = jnp.asarray(rng.normal(size=conv.onednn.output_shape(shape, kshape, stride, padding)), jnp.float32)
        ms = {(w, impl): time_ms(pass_fn(w, f, stride, padding), (x, k, g), args.repeats)
              for w in PASSES for impl, f in impls[w].items()}
        if args.torch:
            for w, v in torch_ms(x, k, g, stride, padding, args.repeats).items():
                totals[(w, "torch")] += count * v
                ms[(w, "torch")] = v
        plan = conv.plan_for("auto", shape, kshape, stride)
        for w, chosen in zip(PASSES, plan):
            for impl in impls[w]:
                totals[(w, impl)] += count * ms[(w, impl)]
            totals[(w, "best")] += count * min(ms[(w, i)] for i in impls[w])
            totals[(w, "auto")] += count * ms[(w, chosen)]
        rows.append(dict(input=shape, kernel=kshape, stride=stride, count=count, plan=list(plan),
                         ms={f"{impl}/{w}": v for (w, impl), v in ms.items()}))
        cells = " | ".join(" ".join(f"{ms[(w, i)]:6.1f}" for i in impls[w])
                           + f" {min(impls[w], key=lambda i, w=w: ms[(w, i)])[0]}"
                           + (f" torch {ms[(w, 'torch')]:6.1f}" if args.torch else "") for w in PASSES)
        print(f"{shape!s:>18} {kshape!s:>16} {stride} {count:2d} | {cells} | {'/'.join(plan)}", flush=True)
    print("network total, ms (count-weighted; each pass's implementation, the fastest per shape, and auto's):")
    for w in PASSES:
        print(f"  {w:<12} " + "  ".join(f"{c} {totals[(w, c)]:8.1f}"
                                         for c in (*impls[w], "best", "auto", *args.torch * ["torch"])))
    print("  all passes   " + "  ".join(f"{c} {sum(totals[(w, c)] for w in PASSES):8.1f}"
                                        for c in ("best", "auto", *args.torch * ["torch"])))
    common.write(dict(vars(args), rows=rows, totals={f"{a}/{b}": v for (a, b), v in totals.items()},
                      **common.environment()), args.output)


if __name__ == "__main__":
    main()
