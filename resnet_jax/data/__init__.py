"""Input pipelines: TFDS datasets and image folders, the paper's augmentations, evaluation views.

Every pipeline yields numpy batches ``{"image": uint8 NHWC, "label": int32, "mask": bool}`` for this JAX
process; ``to_global`` turns them into ``jax.Array``s sharded over all devices of all processes.
Normalisation happens on the accelerator (``normalize``), so the host ships uint8.

Determinism: the order of an epoch is a pure function of (seed, epoch), and every random augmentation of an
example a pure function of (seed, epoch, position), so ``train_batches(start_step=k)`` yields exactly the
batches an uninterrupted run would have seen from step k, without decoding the skipped examples.
Multi-host: global batch k holds positions [kB, (k+1)B) of the epoch; process p takes its contiguous
B/P slice of it, so the global batch does not depend on the number of processes.

TensorFlow is imported lazily: the models, and training and evaluation on CIFAR-style image folders (decoded
with PIL) run without it.

The package, by job: ``sources`` (image folders, TFDS, synthetic data), ``files`` (image files with PIL),
``preprocess`` (one image: augmentations and evaluation views in TensorFlow), ``pipelines`` (batches for training
and evaluation, whole splits in memory, the device-side pieces); below them ``geometry`` (where the evaluation
views lie), ``backend`` (TensorFlow, imported lazily, and its decode and resize ops) and ``errors``. Everything is
importable from here.
"""

from resnet_jax.data import backend
from resnet_jax.data.errors import DataError
from resnet_jax.data.files import (
    IMAGE_EXTENSIONS,
    decode_files,
    eval_views,
    image_problem,
    unreadable_files,
)
from resnet_jax.data.geometry import center_resize, ten_crop_boxes
from resnet_jax.data.pipelines import (
    array_batches,
    eval_batches,
    eval_view_shape,
    load_arrays,
    load_views,
    normalize,
    pixel_mean,
    to_global,
    train_batches,
)
from resnet_jax.data.preprocess import (
    EVAL_PRESETS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MULTISCALE_SIZES,
    PCA_EIGVAL,
    PCA_EIGVEC,
    TRAIN_PRESETS,
    decode_images,
    eval_preprocess,
    resize_shorter,
    train_preprocess,
)
from resnet_jax.data.sources import (
    SYNTHETIC_SPLITS,
    Source,
    folder_source,
    get_source,
    is_synthetic,
    synthetic_source,
    tfds_source,
)

__all__ = ["EVAL_PRESETS", "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTENSIONS", "MULTISCALE_SIZES", "PCA_EIGVAL",
           "PCA_EIGVEC", "SYNTHETIC_SPLITS", "TRAIN_PRESETS", "DataError", "Source", "array_batches", "backend",
           "center_resize", "decode_files", "decode_images", "eval_batches", "eval_preprocess", "eval_view_shape",
           "eval_views", "folder_source", "get_source", "image_problem", "is_synthetic", "load_arrays", "load_views",
           "normalize", "pixel_mean",
           "resize_shorter", "synthetic_source", "ten_crop_boxes", "tfds_source", "to_global", "train_batches",
           "train_preprocess", "unreadable_files"]
