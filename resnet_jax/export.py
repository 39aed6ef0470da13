"""Export a saved run for serving: uint8 NHWC images in, class probabilities out, the checkpoint's
normalisation inside, any batch size from one file.

    python -m resnet_jax.export --workdir=runs/r50 [--step=best] --format=stablehlo --output=r50.jax
    python -m resnet_jax.export --workdir=runs/r50 --format=saved_model --output=r50_savedmodel/

``stablehlo``: a serialized ``jax.export`` function with a symbolic batch dimension, loadable without this
package (``jax.export.deserialize(bytearray(open(path, "rb").read())).call(images)``). ``saved_model``: a
TensorFlow SavedModel (through jax2tf) whose ``serve`` signature takes ``images`` (uint8, [None, H, W, 3]) and
returns ``probabilities``, for TF Serving.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

FORMATS = ("stablehlo", "saved_model")


def inference_fn(workdir: str, step: int | str = "latest") -> tuple[Callable, int, dict]:
    """``fn(uint8 images (N, S, S, 3)) -> probabilities (N, classes)`` of a saved run, its image size ``S`` and the
    checkpoint's description. The variables are constants of ``fn``."""
    from resnet_jax import checkpoint, evaluation

    model, variables, info = checkpoint.load_checkpoint(workdir, step)
    pre = info["preprocessing"]
    mean, std = np.asarray(pre["mean"], np.float32), np.asarray(pre["std"], np.float32)
    variables = jax.tree.map(jnp.asarray, variables)

    def fn(images):
        return evaluation.predict_probs(model, variables, images, mean, std)

    return fn, pre["image_size"], info


def export_stablehlo(fn: Callable, image_size: int) -> bytes:
    """``fn`` serialized with a symbolic batch dimension (for CPU, CUDA and TPU)."""
    (batch,) = jax.export.symbolic_shape("batch")
    spec = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.uint8)
    exported = jax.export.export(jax.jit(fn), platforms=("cpu", "cuda", "tpu"))(spec)
    return exported.serialize()


def export_saved_model(fn: Callable, image_size: int, output: str) -> None:
    import tensorflow as tf
    from jax.experimental import jax2tf

    converted = jax2tf.convert(fn, polymorphic_shapes=[f"(b, {image_size}, {image_size}, 3)"])
    module = tf.Module()
    module.serve = tf.function(lambda images: {"probabilities": converted(images)}, autograph=False,
                               input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.uint8,
                                                              name="images")])
    tf.saved_model.save(module, output, signatures={"serving_default": module.serve})


def export(workdir: str, output: str, fmt: str = "stablehlo", step: int | str = "latest") -> dict:
    """Write the export at ``output`` (written beside it and moved into place: never half a file); returns the
    checkpoint's description."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    fn, image_size, info = inference_fn(workdir, step)
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    if fmt == "stablehlo":
        payload = export_stablehlo(fn, image_size)
        with tempfile.NamedTemporaryFile(dir=parent, delete=False) as f:
            f.write(payload)
        os.replace(f.name, output)
    else:
        staging = tempfile.mkdtemp(dir=parent)
        try:
            export_saved_model(fn, image_size, staging)
            if os.path.exists(output):
                shutil.rmtree(output)
            os.replace(staging, output)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return info


def main(argv: Sequence[str] | None = None) -> int:
    from resnet_jax import checkpoint

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="a training workdir, or one written by resnet_jax.convert")
    p.add_argument("--step", default="latest", help="latest, best or a step number")
    p.add_argument("--format", default="stablehlo", choices=FORMATS)
    p.add_argument("--output", required=True, help="the file (stablehlo) or directory (saved_model) to write")
    args = p.parse_args(argv)
    try:
        info = export(args.workdir, args.output, args.format, args.step)
    except checkpoint.CheckpointError as e:
        sys.exit(f"error: {e}")
    size = info["preprocessing"]["image_size"]
    print(f"wrote {info['model']} step {info['step']} as {args.format} to {args.output}: uint8 [batch, {size}, {size}, "
          f"3] -> probabilities [batch, {info['num_classes']}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
