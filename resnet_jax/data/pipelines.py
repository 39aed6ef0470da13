"""Batches: shuffled training epochs and padded evaluation passes for this JAX process, whole splits in
memory, and the device-side pieces (``normalize``, ``to_global``)."""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from resnet_jax.data.backend import decode, has_tensorflow, tensorflow
from resnet_jax.data.errors import DataError
from resnet_jax.data.files import cifar_augment, decode_files, eval_views
from resnet_jax.data.preprocess import eval_preprocess, train_preprocess
from resnet_jax.data.sources import Source


def _local_batch(batch_size: int, process_count: int) -> int:
    if batch_size % process_count:
        raise ValueError(f"global batch {batch_size} is not divisible by {process_count} processes")
    return batch_size // process_count


def _process_slice(tf, ds, batch_size: int, process_index: int, process_count: int):
    """Keep this process's contiguous slice of every global batch (before any decoding)."""
    local = _local_batch(batch_size, process_count)
    ds = ds.enumerate()
    if process_count > 1:
        ds = ds.filter(lambda i, _: (i // local) % process_count == process_index)
    return ds, local


def train_batches(source: Source, batch_size: int, preset: str, image_size: int, seed: int = 0,
                  start_step: int = 0, process_index: int | None = None,
                  process_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Endless training batches from ``start_step`` on; each epoch drops its last partial batch. Image folders
    with the ``cifar`` preset are decoded with PIL, without TensorFlow (``_folder_cifar_batches``)."""
    process_index, process_count = _processes(process_index, process_count)
    steps_per_epoch = source.num_examples // batch_size
    if steps_per_epoch == 0:
        raise DataError(f"{source.name}:{source.split} has {source.num_examples} examples, fewer than one "
                        f"batch of {batch_size}")
    if source.paths is not None and preset == "cifar":
        yield from _folder_cifar_batches(source, batch_size, image_size, seed, start_step, process_index,
                                         process_count)
        return
    tf = tensorflow()
    epoch, step_in_epoch = divmod(start_step, steps_per_epoch)
    while True:
        ds = source.epoch(seed, epoch, shuffle=True).take(steps_per_epoch * batch_size)
        ds, local = _process_slice(tf, ds, batch_size, process_index, process_count)
        ds = ds.skip(step_in_epoch * local)  # records are skipped, never decoded
        offset = epoch * source.num_examples

        def prepare(i, example, offset=offset):
            data, label = example
            seed_ = tf.stack([tf.constant(seed, tf.int64), offset + i])
            image = train_preprocess(data, seed_, preset, image_size)
            return {"image": image, "label": label, "mask": tf.constant(True)}

        ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        yield from ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
        epoch, step_in_epoch = epoch + 1, 0


PREFETCH = 2  # host batches made ahead, in a thread, while the device trains


def _folder_cifar_batches(source: Source, batch_size: int, image_size: int, seed: int, start_step: int,
                          process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
    """``train_batches`` of the ``cifar`` preset on an image folder, without TensorFlow: each epoch in the order
    ``Source.order`` gives, this process's slice of each global batch decoded with PIL (``decode_files``), and
    ``cifar_augment`` drawn for the whole global batch from (seed, step), so a batch is a pure function of its
    step whatever the number of processes. Batches are made ``PREFETCH`` ahead in a thread."""
    from concurrent.futures import ThreadPoolExecutor

    local = _local_batch(batch_size, process_count)

    def make(step: int) -> dict[str, np.ndarray]:  # runs in the one thread of the pool
        index = source.batch_indices(seed, step, batch_size)
        mine = slice(process_index * local, (process_index + 1) * local)
        draws = np.random.default_rng([seed, step]).random((batch_size, 3))[mine]
        # one thread: small images decode twice as fast without a pool (1,280 CIFAR JPEGs, 2 cores: 0.33 s, 0.60 s)
        images = cifar_augment(decode_files(source.paths[index[mine]], image_size, threads=1), draws, image_size)
        return {"image": images, "label": source.labels[index[mine]], "mask": np.ones(local, bool)}

    with ThreadPoolExecutor(1, thread_name_prefix="resnet_jax-batches") as pool:
        ahead = collections.deque(pool.submit(make, s) for s in range(start_step, start_step + PREFETCH))
        try:
            for step in itertools.count(start_step + PREFETCH):
                batch = ahead.popleft().result()
                ahead.append(pool.submit(make, step))
                yield batch
        finally:
            for future in ahead:
                future.cancel()


def eval_view_shape(preset: str, image_size: int) -> tuple[int, ...]:
    """Shape of one example's evaluation views."""
    return (10, image_size, image_size, 3) if preset == "10" else (image_size, image_size, 3)


def eval_batches(source: Source, batch_size: int, preset: str, image_size: int, resize_size: int | None = None,
                 process_index: int | None = None,
                 process_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """One pass in order; the last global batch is padded with ``mask=False`` examples (never dropped).
    Image folders with the ``cifar`` preset are decoded with PIL, without TensorFlow (the same pixels)."""
    process_index, process_count = _processes(process_index, process_count)
    if source.paths is not None and (preset == "cifar" or (preset in ("center", "10") and not has_tensorflow())):
        yield from _folder_eval_batches(source, batch_size, preset, image_size, resize_size, process_index,
                                        process_count)
        return
    if source.arrays is not None:
        if preset not in ("cifar", "center"):
            raise DataError(f"{source.name} images are served as they are: no {preset!r} views")
        yield from array_batches(*source.arrays, batch_size, process_index, process_count)
        return
    tf = tensorflow()
    n = source.num_examples
    pad = math.ceil(n / batch_size) * batch_size - n
    ds = source.epoch(0, 0, shuffle=False).map(lambda data, label: (data, label, tf.constant(True)))
    ds = ds.concatenate(tf.data.Dataset.from_tensors((tf.constant(b""), -1, False)).repeat(pad))
    ds, local = _process_slice(tf, ds, batch_size, process_index, process_count)
    shape = eval_view_shape(preset, image_size)

    def prepare(i, example):
        data, label, mask = example
        image = tf.cond(mask, lambda: tf.ensure_shape(eval_preprocess(data, preset, image_size, resize_size), shape),
                        lambda: tf.zeros(shape, tf.uint8))
        return {"image": image, "label": label, "mask": mask}

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    yield from ds.batch(local).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def _folder_eval_batches(source: Source, batch_size: int, preset: str, image_size: int, resize_size: int | None,
                         process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
    """``eval_batches`` for image folders without TensorFlow: the ``cifar`` preset's batches (the same pixels),
    or the ``center`` and ``10`` views computed with PIL and numpy (within one level of TensorFlow's)."""
    if preset == "cifar":
        def decode(index):
            return decode_files(source.paths[index], image_size)
    else:
        def decode(index):
            return eval_views(source.paths[index], preset, image_size, resize_size)
    yield from _padded_batches(source.num_examples, source.labels, decode, batch_size, process_index, process_count)


def array_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, process_index: int | None = None,
                  process_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """``eval_batches`` over a split already in memory (``load_arrays``): padded and masked the same way."""
    process_index, process_count = _processes(process_index, process_count)
    yield from _padded_batches(len(images), labels, lambda i: images[i], batch_size, process_index, process_count)


def _padded_batches(n: int, labels: np.ndarray, images_at, batch_size: int, process_index: int,
                    process_count: int) -> Iterator[dict[str, np.ndarray]]:
    """This process's slices of the global batches over ``n`` examples in order, the last padded (mask False,
    label -1) as the TensorFlow path pads it; ``images_at(indices)`` decodes or looks up the images."""
    local = _local_batch(batch_size, process_count)
    for start in range(0, n, batch_size):
        index = np.arange(start + process_index * local, start + (process_index + 1) * local)
        real = index[index < n]
        first = images_at(real)
        images = np.zeros((local, *first.shape[1:]), np.uint8)
        images[:len(real)] = first
        padded_labels = np.full(local, -1, np.int32)
        padded_labels[:len(real)] = labels[real]
        yield {"image": images, "label": padded_labels, "mask": np.arange(local) < len(real)}


def _chunks(source: Source, size: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A whole split in order, decoded (accurate IDCT) in chunks of (uint8 images, labels); TensorFlow only
    for TFDS datasets."""
    if source.arrays is not None:
        yield source.arrays
        return
    if source.paths is not None:
        for start in range(0, source.num_examples, size):
            yield decode_files(source.paths[start:start + size]), source.labels[start:start + size]
        return
    tf = tensorflow()
    ds = source.epoch(0, 0, shuffle=False).map(lambda d, y: (decode(tf, d, accurate=True), y),
                                               num_parallel_calls=tf.data.AUTOTUNE)
    try:
        yield from ds.batch(size).as_numpy_iterator()
    except Exception as e:
        raise DataError(f"cannot load {source.name}:{source.split} into memory (images of different sizes?): "
                        f"{e}") from e


def load_arrays(source: Source) -> tuple[np.ndarray, np.ndarray]:
    """A whole split decoded into memory: uint8 images (N, H, W, 3) and int32 labels. For small-image
    datasets (CIFAR); the images must share one size. Image folders need no TensorFlow."""
    images, labels = zip(*_chunks(source))
    return np.concatenate(images), np.concatenate(labels).astype(np.int32)


def load_views(source: Source, preset: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A whole split's evaluation views in memory (``preset`` ``cifar`` or ``center``): the pixels
    :func:`eval_batches` serves, without its padding; uint8 (N, S, S, 3) and int32 labels."""
    batches = list(eval_batches(source, 1024, preset, image_size, process_index=0, process_count=1))
    mask = np.concatenate([b["mask"] for b in batches])
    return (np.concatenate([b["image"] for b in batches])[mask],
            np.concatenate([b["label"] for b in batches])[mask].astype(np.int32))


def pixel_mean(source: Source, max_examples: int | None = None) -> np.ndarray:
    """Per-pixel mean image of a split (the paper's CIFAR normalisation, Sec. 4.2), float32 (H, W, 3)."""
    total, count = 0.0, 0
    for images, _ in _chunks(source):
        images = images[:max_examples - count] if max_examples else images
        total = total + images.sum(axis=0, dtype=np.float64)
        count += len(images)
        if max_examples and count >= max_examples:
            break
    return (total / count).astype(np.float32)


def _processes(index: int | None, count: int | None) -> tuple[int, int]:
    if index is None or count is None:
        import jax

        return jax.process_index(), jax.process_count()
    return index, count


def normalize(images: Any, mean: Any, std: Any) -> Any:
    """uint8 images to float: (x - mean) / std, with per-channel (3,) or per-pixel (H, W, 3) statistics."""
    import jax.numpy as jnp

    return (jnp.asarray(images, jnp.float32) - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def to_global(batch: dict[str, np.ndarray], mesh: Any, axis: str = "data") -> dict[str, Any]:
    """This process's slice of a batch -> global ``jax.Array``s sharded along the batch axis over ``mesh``."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    sharding = NamedSharding(mesh, PartitionSpec(axis))
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
