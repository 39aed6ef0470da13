"""Training input from an image folder in a bucket against the same folder on the local disk, in one process:
the project's own training pipeline (``data.train_batches``), images/s, median of passes taken in turn.

    python benchmarks/bucket_input.py --local=DIR --bucket=gs://BUCKET/PREFIX [--upload] [--split=train] \
        [--preset=inception] [--image_size=56] [--batch_size=64] [--batches=20] [--passes=3]

``--upload`` first copies ``DIR/<split>`` to ``<bucket>/<split>``. A real bucket needs credentials; a local GCS
server (``python tests/gcs_server.py PORT BUCKET``) needs the variables of docs/training.md ("Runs in a bucket").
"""

import argparse
import os
import statistics
import time

import common

from resnet_jax import data, storage


def rate(source, args) -> float:
    """Images/s of ``batches`` training batches (after the first, which starts the pipeline)."""
    batches = data.train_batches(source, args.batch_size, args.preset, args.image_size, seed=0)
    next(batches)
    start = time.perf_counter()
    for _ in range(args.batches):
        next(batches)
    return args.batches * args.batch_size / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--local", required=True, help="an image folder <local>/<split>/<class>/<image>")
    p.add_argument("--bucket", required=True, help="the same folder in a bucket, gs://bucket/prefix")
    p.add_argument("--upload", action="store_true", help="copy <local>/<split> to <bucket>/<split> first")
    p.add_argument("--split", default="train")
    p.add_argument("--preset", default="inception", choices=sorted(data.TRAIN_PRESETS))
    p.add_argument("--image_size", type=int, default=56)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--output")
    args = p.parse_args()
    if args.upload:
        fs = storage.filesystem(args.bucket)
        start = time.perf_counter()
        fs.put(os.path.join(args.local, args.split) + "/", storage.join(args.bucket, args.split), recursive=True)
        print(f"uploaded {args.local}/{args.split} in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    remote = data.get_source(f"folder:{args.bucket}", args.split)
    listing = time.perf_counter() - start
    local = data.get_source(f"folder:{args.local}", args.split)
    assert remote.num_examples == local.num_examples, (remote.num_examples, local.num_examples)
    rates: dict[str, list[float]] = {"local": [], "bucket": []}
    for _ in range(args.passes):
        rates["local"].append(rate(local, args))
        rates["bucket"].append(rate(remote, args))
    result = dict(common.environment(), preset=args.preset, image_size=args.image_size, batch_size=args.batch_size,
                  images=local.num_examples, bucket=args.bucket, listing_seconds=listing,
                  local_images_per_second=statistics.median(rates["local"]),
                  bucket_images_per_second=statistics.median(rates["bucket"]))
    result["bucket_over_local"] = result["bucket_images_per_second"] / result["local_images_per_second"]
    print(f"listing and checking {local.num_examples} images in the bucket: {listing:.1f} s")
    print(f"local {result['local_images_per_second']:.0f} images/s, bucket {result['bucket_images_per_second']:.0f} "
          f"images/s ({result['bucket_over_local']:.2f}x)")
    common.write(result, args.output)


if __name__ == "__main__":
    main()
