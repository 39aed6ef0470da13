"""Input-pipeline throughput on a folder of JPEGs, optionally beside the reference Flax ImageNet example's
tf.data preprocessing of the same files, in the same process.

    python benchmarks/input_pipeline.py --images=DIR --preset=inception|imagenet|center|10 \
        [--reference=PATH/TO/flax/examples/imagenet] [--output=out.json]

``--reference`` names a checkout of google/flax's examples/imagenet; its ``input_pipeline`` module is imported
from there (nothing of it is copied here) and its ``preprocess_for_train`` / ``preprocess_for_eval`` are mapped
over the same files with the same parallelism and batching. Reported: images/s (median over passes) and per core.
"""

import argparse
import glob
import os
import statistics
import sys
import time

import common
import numpy as np

from resnet_jax import data


def throughputs(pipelines: dict, n: int, passes: int) -> dict[str, float]:
    """Median images/s of each pipeline over ``passes`` full passes, the pipelines taking turns so that a
    noisy neighbour hurts all alike (after one warm-up pass each that also fills the page cache)."""
    rates = {name: [] for name in pipelines}
    for i in range(passes + 1):
        for name, make_dataset in pipelines.items():
            start = time.perf_counter()
            count = sum(len(b) for b in make_dataset().as_numpy_iterator())
            assert count == n, (count, n)
            if i:
                rates[name].append(n / (time.perf_counter() - start))
    out = {name: statistics.median(r) for name, r in rates.items()}
    out.update({name.replace("images", "best_images"): max(r) for name, r in rates.items()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", required=True, help="folder of JPEG files (searched recursively)")
    parser.add_argument("--preset", default="inception", choices=["inception", "imagenet", "center", "10"])
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--passes", type=int, default=9)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="parallel map calls (both pipelines)")
    parser.add_argument("--reference", help="path to flax/examples/imagenet for a same-run comparison")
    parser.add_argument("--output")
    args = parser.parse_args()
    tf = data.backend.tensorflow()
    files = sorted(glob.glob(os.path.join(args.images, "**", "*.JPEG"), recursive=True)
                   + glob.glob(os.path.join(args.images, "**", "*.jpg"), recursive=True))
    if not files:
        sys.exit(f"no JPEG files under {args.images}")
    n = len(files)
    train = args.preset in data.TRAIN_PRESETS

    def ours():
        ds = tf.data.Dataset.from_tensor_slices(files).enumerate()

        def prepare(i, path):
            raw = tf.io.read_file(path)
            if train:
                return data.train_preprocess(raw, tf.stack([tf.constant(0, tf.int64), i]), args.preset, args.image_size)
            return data.eval_preprocess(raw, args.preset, args.image_size)

        return ds.map(prepare, num_parallel_calls=args.threads).batch(args.batch_size).prefetch(tf.data.AUTOTUNE)

    result = dict(preset=args.preset, images=n, image_size=args.image_size, batch_size=args.batch_size,
                  cores=os.cpu_count(), tensorflow=tf.__version__)
    pipelines = {"images_per_second": ours}
    if args.reference:
        sys.path.insert(0, args.reference)
        import input_pipeline as reference

        fn = reference.preprocess_for_train if train else reference.preprocess_for_eval

        def theirs():
            ds = tf.data.Dataset.from_tensor_slices(files)
            ds = ds.map(lambda p: fn(tf.io.read_file(p), tf.float32, args.image_size),
                        num_parallel_calls=args.threads)
            return ds.batch(args.batch_size).prefetch(tf.data.AUTOTUNE)

        pipelines["reference_images_per_second"] = theirs
    result.update(throughputs(pipelines, n, args.passes))
    if args.reference:
        result["speedup_vs_reference"] = result["images_per_second"] / result["reference_images_per_second"]
    result["images_per_second_per_core"] = result["images_per_second"] / result["cores"]
    print(f"{'preset':>10} {'images/s':>10} {'per core':>9} {'best':>8} {'reference':>10} {'ref best':>9}")
    print(f"{args.preset:>10} {result['images_per_second']:10.1f} {result['images_per_second_per_core']:9.1f} "
          f"{result['best_images_per_second']:8.1f} {result.get('reference_images_per_second', np.nan):10.1f} "
          f"{result.get('reference_best_images_per_second', np.nan):9.1f}")
    common.write(result, args.output)


if __name__ == "__main__":
    main()
