"""Evaluation throughput on a folder of JPEGs: decoding alone, the network alone, and both together.

    python benchmarks/evaluation.py --images=DIR --model=resnet50 --crops=center|10 [--limit=64] \
        [--batch_size=16] [--output=out.json]

Random weights (throughput does not depend on them). 10-crop decodes each image once and cuts its ten views
from it, so it should cost ~10x the network compute of center-crop but about the same decoding.
"""

import argparse
import glob
import os
import statistics
import time

import common
import jax
import jax.numpy as jnp

from resnet_jax import data, evaluation, models


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", required=True)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--crops", default="center", choices=["center", "10"])
    p.add_argument("--limit", type=int, default=64, help="images to evaluate")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--output")
    args = p.parse_args()
    tf = data.backend.tensorflow()
    files = sorted(glob.glob(os.path.join(args.images, "**", "*.JPEG"), recursive=True)
                   + glob.glob(os.path.join(args.images, "**", "*.jpg"), recursive=True))[:args.limit]
    n = len(files) - len(files) % args.batch_size
    files = files[:n]

    def batches():
        ds = tf.data.Dataset.from_tensor_slices(files).map(
            lambda f: data.eval_preprocess(tf.io.read_file(f), args.crops, 224), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(args.batch_size).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()

    start = time.perf_counter()
    host = list(batches())
    decode_seconds = time.perf_counter() - start

    model = models.create_model(args.model, dtype=args.dtype)
    variables = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))()
    probs = jax.jit(lambda v, x: evaluation.predict_probs(model, v, x, data.IMAGENET_MEAN, data.IMAGENET_STD))
    start = time.perf_counter()
    probs(variables, host[0]).block_until_ready()
    compile_seconds = time.perf_counter() - start
    step_times = []
    for batch in host:  # the network alone, on decoded batches
        start = time.perf_counter()
        probs(variables, batch).block_until_ready()
        step_times.append(time.perf_counter() - start)
    start = time.perf_counter()
    for batch in batches():  # decoding and network together (tf.data prefetches while the network runs)
        out = probs(variables, batch)
    out.block_until_ready()
    total_seconds = time.perf_counter() - start
    result = dict(model=args.model, crops=args.crops, images=n, batch_size=args.batch_size, dtype=args.dtype,
                  images_per_second=n / total_seconds, decode_images_per_second=n / decode_seconds,
                  network_images_per_second=args.batch_size / statistics.median(step_times),
                  compile_seconds=compile_seconds, **common.environment())
    print(f"{'model':<10} {'crops':<6} {'images/s':>9} {'decode img/s':>13} {'network img/s':>14}")
    print(f"{args.model:<10} {args.crops:<6} {result['images_per_second']:9.2f} "
          f"{result['decode_images_per_second']:13.1f} {result['network_images_per_second']:14.2f}")
    common.write(result, args.output)


if __name__ == "__main__":
    main()
