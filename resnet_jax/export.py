"""Export a saved run for serving: uint8 NHWC images in, class probabilities out, the checkpoint's
normalisation inside, any batch size from one file.

    python -m resnet_jax.export --workdir=runs/r50 [--step=best] --format=stablehlo --output=r50.jax
    python -m resnet_jax.export --workdir=runs/r50 --format=saved_model --output=r50_savedmodel/
    python -m resnet_jax.export --workdir=runs/r50 --format=onnx --output=r50.onnx

``stablehlo``: a serialized ``jax.export`` function with a symbolic batch dimension, loadable without this
package (``jax.export.deserialize(bytearray(open(path, "rb").read())).call(images)``). ``saved_model``: a
TensorFlow SavedModel (through jax2tf) whose ``serve`` signature takes ``images`` (uint8, [None, H, W, 3]) and
returns ``probabilities``, for TF Serving. ``onnx``: an ONNX model (through jax2onnx, from the JAX function) with
input ``images`` (uint8, [batch, H, W, 3]) and output ``probabilities``, for onnxruntime, TensorRT or OpenVINO.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import quiet, storage

FORMATS = ("stablehlo", "saved_model", "onnx")
ONNX_INSTALL = "pip install onnx onnx-ir onnxruntime && pip install --no-deps jax2onnx==0.17.1"


class ExportError(Exception):
    """An export that cannot be made here (a converter that is not installed)."""


def inference_fn(workdir: str, step: int | str = "latest", conv_impl: str | None = None) -> tuple[Callable, int, dict]:
    """``fn(uint8 images (N, S, S, 3)) -> probabilities (N, classes)`` of a saved run, its image size ``S`` and the
    checkpoint's description. The variables are constants of ``fn``; its convolutions are plain XLA operations
    (``conv.portable``)."""
    from resnet_jax import checkpoint, conv, evaluation

    model, variables, info = checkpoint.load_checkpoint(workdir, step)
    if conv_impl:
        model = model.clone(conv_impl=conv_impl)
    pre = info["preprocessing"]
    mean, std = np.asarray(pre["mean"], np.float32), np.asarray(pre["std"], np.float32)
    variables = jax.tree.map(jnp.asarray, variables)

    def fn(images):
        with conv.portable():  # a serialized program must not need this package's native code
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


def export_onnx(fn: Callable, image_size: int) -> bytes:
    """``fn`` as an ONNX model with a dynamic batch dimension, converted from its JAX program by jax2onnx.

    jax2onnx rather than tf2onnx on the SavedModel: measured on this network (jax2onnx 0.17.1, tf2onnx 1.17.0 with
    TensorFlow 2.21), tf2onnx fails to convert the jax2tf graph ("Could not infer the attribute type"), while
    jax2onnx's model matches ``predict`` to 1e-7 given two workarounds: the stem's max-pooling is padded apart
    from the pooling (jax2onnx's max_pool drops a pooling's own padding; same result in JAX), and its intermediate
    shape annotations are dropped (below). Opset 18, the first whose ReduceMean jax2onnx's output is valid in."""
    try:
        from jax2onnx import to_onnx
    except ImportError:
        raise ExportError(f"--format=onnx needs jax2onnx and onnx: {ONNX_INSTALL} (--no-deps: jax2onnx pins an older "
                          f"orbax-checkpoint than resnet_jax, and needs none of its other dependencies to convert)") \
            from None
    spec = jax.ShapeDtypeStruct(("batch", image_size, image_size, 3), jnp.uint8)
    if not quiet.VERBOSE:  # its plugin loader warns about every optional library (equinox, dm_pix) not installed
        logging.getLogger("jax2onnx").setLevel(logging.ERROR)
    proto = to_onnx(fn, [spec], model_name="resnet_jax", opset=18, input_names=["images"],
                    output_names=["probabilities"])
    # jax2onnx annotates some intermediate tensors with NCHW shapes of NHWC values, which onnxruntime's shape
    # inference rejects on deeper networks ("Incompatible dimensions"): leave the shapes for the runtime to infer
    del proto.graph.value_info[:]
    return proto.SerializeToString()


def export(workdir: str, output: str, fmt: str = "stablehlo", step: int | str = "latest") -> dict:
    """Write the export at ``output`` (written beside it and moved into place: never half a file); returns the
    checkpoint's description."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    # ONNX: XLA's convolution (not the CPU im2col kernels of conv_impl="auto"), which converts to Conv nodes
    fn, image_size, info = inference_fn(workdir, step, conv_impl="xla" if fmt == "onnx" else None)
    output = storage.resolve(output, "--output")
    if fmt in ("stablehlo", "onnx"):
        payload = export_stablehlo(fn, image_size) if fmt == "stablehlo" else export_onnx(fn, image_size)
        storage.write_bytes(output, payload)
        return info
    if storage.is_remote(output):  # built in a temporary folder here, then uploaded over the old one
        with tempfile.TemporaryDirectory() as staging:
            export_saved_model(fn, image_size, staging)
            storage.remove(output)
            with storage.errors(output, "cannot write"):
                storage.filesystem(output).put(staging + "/", output, recursive=True)
        return info
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
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
    p.add_argument("--output", required=True, help="the file (stablehlo, onnx) or directory (saved_model) to write")
    args = p.parse_args(argv)
    try:
        info = export(args.workdir, args.output, args.format, args.step)
    except (checkpoint.CheckpointError, ExportError, storage.StorageError) as e:
        sys.exit(f"error: {e}")
    size = info["preprocessing"]["image_size"]
    print(f"wrote {info['model']} step {info['step']} as {args.format} to {args.output}: uint8 [batch, {size}, {size}, "
          f"3] -> probabilities [batch, {info['num_classes']}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
