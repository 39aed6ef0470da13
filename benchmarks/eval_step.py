"""Evaluation network throughput on in-memory views (no decoding, no TensorFlow): the accelerator's share of
center-crop or 10-crop evaluation.

    python benchmarks/eval_step.py --model=resnet50 --crops=10 --batch_size=64 --batches=10 [--dtype=bfloat16]
"""

import argparse
import statistics
import time

import common
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import data, evaluation, models, training


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--crops", default="10", choices=["center", "10"])
    p.add_argument("--batch_size", type=int, default=64, help="images per batch (x10 views for 10-crop)")
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--output")
    args = p.parse_args()
    model = models.create_model(args.model, dtype=args.dtype)
    mesh = training.make_mesh()
    variables = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, args.image_size, args.image_size, 3))))()
    step = evaluation.make_eval_step(evaluation.model_scores(model, data.IMAGENET_MEAN, data.IMAGENET_STD))
    views = (10,) if args.crops == "10" else ()
    rng = np.random.default_rng(0)
    batch = data.to_global({
        "image": rng.integers(0, 256, (args.batch_size, *views, args.image_size, args.image_size, 3), dtype=np.uint8),
        "label": rng.integers(0, 1000, args.batch_size).astype(np.int32),
        "mask": np.ones(args.batch_size, bool)}, mesh)
    start = time.perf_counter()
    jax.block_until_ready(step(variables, batch))
    compile_seconds = time.perf_counter() - start
    times = []
    for _ in range(args.batches):
        start = time.perf_counter()
        jax.block_until_ready(step(variables, batch))
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    result = dict(model=args.model, crops=args.crops, batch_size=args.batch_size, dtype=args.dtype,
                  images_per_second=args.batch_size / median, step_seconds_median=median,
                  compile_seconds=compile_seconds, **common.environment())
    print(f"{args.model} {args.crops}-crop: {result['images_per_second']:.1f} images/s "
          f"({median * 1e3:.1f} ms per batch of {args.batch_size}) on {result['device_kind']}")
    common.write(result, args.output)


if __name__ == "__main__":
    main()
