"""Every convolution of a network, each pass (forward, input gradient, kernel gradient) timed with each
implementation of resnet_jax.conv: the measurements behind ``conv_impl="auto"``'s CPU rules.

    python benchmarks/conv_passes.py --model=resnet18 --image_size=64 --batch_size=128 [--output=out.json]

Prints one row per distinct convolution (how often the network uses it, milliseconds per pass and
implementation, the faster one, and what ``cpu_plan`` picks) and the network's totals per choice.
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


def pass_fn(impl: str, which: str, stride: int, padding):
    f = conv.IMPLEMENTATIONS[impl]
    if which == "forward":
        return jax.jit(lambda x, k, g: f(x, k, stride, padding))
    if which == "input_grad":
        return jax.jit(lambda x, k, g: jax.vjp(lambda x: f(x, k, stride, padding), x)[1](g)[0])
    return jax.jit(lambda x, k, g: jax.vjp(lambda k: f(x, k, stride, padding), k)[1](g)[0])


def time_ms(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    rows, totals = [], Counter()
    print(f"{'input':>18} {'kernel':>16} s  n | " + " | ".join(f"{w:>17}" for w in PASSES) + " | auto")
    for (shape, kshape, stride, padding), count in sorted(conv_shapes(args.model, args.image_size,
                                                                      args.batch_size).items()):
        x = jnp.asarray(rng.normal(size=shape), jnp.float32)
        k = jnp.asarray(rng.normal(size=kshape), jnp.float32)
        out = jax.eval_shape(pass_fn("xla", "forward", stride, padding), x, k, None)
        g = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
        ms = {(impl, w): time_ms(pass_fn(impl, w, stride, padding), (x, k, g), args.repeats)
              for w in PASSES for impl in conv.IMPLEMENTATIONS}
        plan = conv.cpu_plan(shape, kshape, stride)
        for w, chosen in zip(PASSES, plan):
            for impl in conv.IMPLEMENTATIONS:
                totals[(w, impl)] += count * ms[(impl, w)]
            totals[(w, "best")] += count * min(ms[(i, w)] for i in conv.IMPLEMENTATIONS)
            totals[(w, "auto")] += count * ms[(chosen, w)]
        rows.append(dict(input=shape, kernel=kshape, stride=stride, count=count, plan=list(plan),
                         ms={f"{impl}/{w}": v for (impl, w), v in ms.items()}))
        cells = " | ".join(f"{ms[('xla', w)]:7.1f} {ms[('im2col', w)]:7.1f} {'xi'[ms[('im2col', w)] < ms[('xla', w)]]}"
                           for w in PASSES)
        print(f"{shape!s:>18} {kshape!s:>16} {stride} {count:2d} | {cells} | {''.join(c[0] for c in plan)}",
              flush=True)
    print("network total, ms (count-weighted):")
    for choice in ("xla", "im2col", "best", "auto"):
        print(f"  {choice:<7} " + "  ".join(f"{w} {totals[(w, choice)]:8.1f}" for w in PASSES)
              + f"  all {sum(totals[(w, choice)] for w in PASSES):8.1f}")
    common.write(dict(vars(args), rows=rows, totals={f"{a}/{b}": v for (a, b), v in totals.items()},
                      **common.environment()), args.output)


if __name__ == "__main__":
    main()
