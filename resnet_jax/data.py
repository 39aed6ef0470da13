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
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
# ImageNet statistics in [0, 255] (per channel) and the PCA of its RGB pixels (AlexNet [21], Sec. 3.4).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))
TRAIN_PRESETS = ("cifar", "imagenet", "inception")
EVAL_PRESETS = ("cifar", "center", "10", "multiscale")
MULTISCALE_SIZES = (224, 256, 384, 480, 640)


def _tf():
    import tensorflow as tf  # lazily: only the pipelines need TensorFlow

    tf.config.set_visible_devices([], "GPU")  # keep TF off the accelerator JAX uses
    return tf


class DataError(ValueError):
    """A dataset that cannot be read as asked (missing split, empty class, unprepared TFDS dataset...)."""


# ----------------------------------------------------------------------------------------------- sources


@dataclasses.dataclass
class Source:
    """One split of a dataset: encoded images in a fixed order, their labels and the class names."""

    name: str
    split: str
    num_examples: int
    class_names: list[str]
    paths: np.ndarray | None = None  # image folders: one file per example
    labels: np.ndarray | None = None
    tfds_builder: Any = None  # TFDS: read as a stream of records
    tfds_split: str | None = None
    arrays: tuple[np.ndarray, np.ndarray] | None = None  # synthetic: uint8 images and labels, in memory

    def epoch(self, seed: int, epoch: int, shuffle: bool) -> Any:
        """tf.data of (encoded bytes, label) in this epoch's order (a pure function of seed and epoch)."""
        tf = _tf()
        if self.paths is not None:
            order = (np.random.default_rng([seed, epoch]).permutation(self.num_examples) if shuffle
                     else np.arange(self.num_examples))
            ds = tf.data.Dataset.from_tensor_slices((self.paths[order], self.labels[order]))
            return ds.map(lambda p, y: (tf.io.read_file(p), y), num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True)
        import tensorflow_datasets as tfds

        epoch_seed = seed * 100_003 + epoch
        read_config = tfds.ReadConfig(shuffle_seed=epoch_seed, interleave_cycle_length=16)
        ds = self.tfds_builder.as_dataset(split=self.tfds_split, shuffle_files=shuffle, read_config=read_config,
                                          decoders={"image": tfds.decode.SkipDecoding()})
        ds = ds.map(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32)))
        if shuffle:
            ds = ds.shuffle(min(self.num_examples, 20_000), seed=epoch_seed,
                            reshuffle_each_iteration=False)
        return ds


def image_problem(path: str, decode: bool = False) -> str | None:
    """What is wrong with an image file (None: nothing found): by its leading bytes, or (``decode``) by decoding
    it fully with PIL, which also finds truncated and corrupt files."""
    with open(path, "rb") as f:
        head = f.read(8)
    if not head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")):
        return "not an image file"
    if decode:
        try:
            _read_rgb(path)
        except DataError as e:
            return "truncated" if "truncated" in str(e).lower() else f"corrupt ({str(e).split(': ', 1)[-1]})"
    return None


def unreadable_files(paths: Sequence[str]) -> list[tuple[str, str]]:
    """(path, problem) of the files among ``paths`` that do not decode (each decoded fully, in threads)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        problems = list(pool.map(lambda p: image_problem(p, decode=True), paths))
    return [(p, problem) for p, problem in zip(paths, problems) if problem]


def folder_source(root: str, split: str, on_bad_file: str = "warn", verify: bool = False) -> Source:
    """``<root>/<split>/<class>/<image>``; labels follow the sorted class folders (as TFDS ImageFolder).

    A split may carry a slice, ``train[:45000]`` or ``train[45000:]``: it slices a fixed pseudo-random order of
    the files (seed 0), so that slices keep the classes balanced and complementary slices are disjoint.
    Files that are not images (by their leading bytes; with ``verify``, by decoding each once, which also finds
    truncated files) are skipped with a warning naming each, and a count; ``on_bad_file="raise"`` raises instead.
    """
    match = re.fullmatch(r"(\w+)\[(-?\d*):(-?\d*)\]", split)
    if match:
        whole = folder_source(root, match[1], on_bad_file, verify)
        order = np.random.default_rng(0).permutation(whole.num_examples)
        keep = np.sort(order[slice(int(match[2]) if match[2] else None, int(match[3]) if match[3] else None)])
        if not len(keep):
            raise DataError(f"split {split!r} of {root} is empty ({whole.num_examples} examples in {match[1]!r})")
        return dataclasses.replace(whole, split=split, num_examples=len(keep), paths=whole.paths[keep],
                                   labels=whole.labels[keep])
    directory = os.path.join(root, split)
    if not os.path.isdir(directory):
        available = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))) \
            if os.path.isdir(root) else []
        raise DataError(f"image folder {root!r} has no split {split!r} (expected {directory}/<class>/<image>); "
                        f"splits found: {available or 'none'}")
    classes = sorted(d for d in os.listdir(directory) if os.path.isdir(os.path.join(directory, d)))
    if not classes:
        raise DataError(f"{directory} has no class folders (expected {directory}/<class>/<image>)")
    paths, labels, bad = [], [], []
    for label, name in enumerate(classes):
        files = sorted(e.path for e in os.scandir(os.path.join(directory, name)) if e.is_file())
        problems = {p: image_problem(p, verify) if p.lower().endswith(IMAGE_EXTENSIONS) else "not an image file"
                    for p in files}
        good = [p for p in files if problems[p] is None]
        bad += [(p, problems[p]) for p in files if problems[p]]
        if not good:
            raise DataError(f"class folder {os.path.join(directory, name)} holds no images")
        paths += good
        labels += [label] * len(good)
    if bad:
        if on_bad_file == "raise":
            raise DataError(f"{len(bad)} file(s) in {directory} are not readable images, e.g. {bad[0][0]} "
                            f"({bad[0][1]})")
        for path, problem in bad:
            log.warning("skipping %s: %s", path, problem)
        log.warning("skipped %d unreadable file(s) in %s", len(bad), directory)
    return Source(f"folder:{root}", split, len(paths), classes, paths=np.array(paths),
                  labels=np.array(labels, np.int32))


def tfds_source(name: str, split: str, data_dir: str | None = None) -> Source:
    """A prepared TFDS dataset (e.g. ``cifar10``, ``imagenet2012``) with TFDS split syntax (``train[:45000]``)."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # DatasetNotFoundError and friends
        raise DataError(f"unknown TFDS dataset {name!r}: {e}") from e
    if not builder.is_prepared():
        from resnet_jax import prepare

        problem = prepare.unreachable(name) if name in prepare.AUTOMATIC else None
        if name in prepare.AUTOMATIC and problem is None:  # small and downloadable: prepare it now
            log.info("preparing TFDS dataset %s in %s (download and conversion, once)", name, builder.data_dir)
            try:
                prepare.prepare(name, data_dir)
            except prepare.PrepareError as e:
                raise DataError(str(e)) from e
            builder = tfds.builder(name, data_dir=data_dir)
        else:
            where = (f" It cannot be downloaded here ({problem}): prepare it on a connected machine with "
                     if problem else " Prepare it with ")
            raise DataError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir!r}.{where}"
                            f"`{prepare.command(name)}`, copy it here and pass --config.data_dir=DATA_DIR, or train "
                            f"on an image folder (--config.dataset=folder:/path/to/root)")
    try:
        num_examples = builder.info.splits[split].num_examples
    except Exception as e:
        raise DataError(f"TFDS dataset {name!r} has no split {split!r}; splits: {list(builder.info.splits)}") from e
    return Source(name, split, num_examples, list(builder.info.features["label"].names),
                  tfds_builder=builder, tfds_split=split)


SYNTHETIC_SPLITS = {"train": 8192, "validation": 1024, "test": 1024}


def synthetic_source(dataset: str, split: str, image_size: int) -> Source:
    """``synthetic`` (1000 classes) or ``synthetic:C``: random uint8 images of ``image_size`` and random labels,
    the same for every run, to measure training speed without a dataset (``on_device_data``)."""
    classes = dataset.split(":", 1)[1] if ":" in dataset else "1000"
    if not classes.isdigit() or int(classes) < 1:
        raise DataError(f"dataset {dataset!r}: the class count after 'synthetic:' must be a positive integer")
    if split not in SYNTHETIC_SPLITS:
        raise DataError(f"synthetic data has no split {split!r}; its splits are {', '.join(SYNTHETIC_SPLITS)} "
                        f"(no slices), e.g. --config.train_split=train --config.eval_split=test")
    n = SYNTHETIC_SPLITS[split]
    rng = np.random.default_rng(list(split.encode()))
    images = rng.integers(0, 256, (n, image_size, image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, int(classes), n).astype(np.int32)
    return Source(dataset, split, n, [f"class_{i}" for i in range(int(classes))], labels=labels,
                  arrays=(images, labels))


def get_source(dataset: str, split: str, data_dir: str | None = None, on_bad_file: str = "warn",
               verify: bool = False, image_size: int = 224) -> Source:
    """``dataset`` is ``"folder:/path/to/root"``, ``"synthetic[:CLASSES]"`` (images of ``image_size``) or a TFDS
    name (``on_bad_file`` and ``verify``: folders only)."""
    if dataset.startswith("folder:"):
        return folder_source(dataset[len("folder:"):], split, on_bad_file, verify)
    if dataset == "synthetic" or dataset.startswith("synthetic:"):
        return synthetic_source(dataset, split, image_size)
    return tfds_source(dataset, split, data_dir)


# ----------------------------------------------------------------------------------------- preprocessing


def _decode(tf, data, accurate: bool, crop=None):
    """Decode to uint8 RGB (grayscale, CMYK, palette images included), optionally only a crop window
    [y, x, h, w]; JPEG crops decode fused."""
    dct = "INTEGER_ACCURATE" if accurate else "INTEGER_FAST"

    def jpeg():
        if crop is None:
            return tf.io.decode_jpeg(data, channels=3, dct_method=dct)
        return tf.image.decode_and_crop_jpeg(data, crop, channels=3, dct_method=dct)

    def other():
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        return image if crop is None else image[crop[0]:crop[0] + crop[2], crop[1]:crop[1] + crop[3]]

    image = tf.cond(tf.io.is_jpeg(data), jpeg, other)
    image.set_shape([None, None, 3])
    return image


def _to_uint8(tf, image):
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _resize(tf, image, size):
    return _to_uint8(tf, tf.image.resize(image, size, method="bilinear", antialias=False))


def _shape(tf, data):
    shape = tf.cond(tf.io.is_jpeg(data), lambda: tf.image.extract_jpeg_shape(data),
                    lambda: tf.shape(tf.io.decode_image(data, channels=3, expand_animations=False)))
    return shape[0], shape[1]


def _uniform(tf, seed, lo, hi):
    return tf.random.stateless_uniform([], seed, lo, hi)


def _flip(tf, image, seed):
    return tf.cond(_uniform(tf, seed, 0.0, 1.0) < 0.5, lambda: tf.reverse(image, [1]), lambda: image)


def train_preprocess(data, seed, preset: str, image_size: int):
    """One training example: ``cifar`` [4.2], ``imagenet`` [3.4] or ``inception`` (modern option)."""
    tf = _tf()
    seeds = tf.random.experimental.stateless_split(seed, 5)
    if preset == "cifar":  # 4 zero pixels on each side, random crop, flip
        image = _decode(tf, data, accurate=False)
        image = tf.pad(image, [[4, 4], [4, 4], [0, 0]])
        image = tf.image.stateless_random_crop(image, [image_size, image_size, 3], seeds[0])
        return _flip(tf, image, seeds[1])
    h, w = _shape(tf, data)
    if preset == "imagenet":
        # Shorter side resized to s ~ U[256, 480], then a random 224 crop: equivalently, crop a window of
        # 224 / scale pixels of the original and resize only that (decoded fused for JPEGs). Other image sizes
        # scale the range with the crop (64: s ~ U[73, 137]).
        shorter = tf.cast(tf.minimum(h, w), tf.float32)
        scale = _uniform(tf, seeds[0], 256.0 * image_size / 224, 481.0 * image_size / 224) / shorter
        side = tf.minimum(tf.cast(tf.round(image_size / scale), tf.int32), tf.minimum(h, w))
        y = tf.random.stateless_uniform([], seeds[1], 0, h - side + 1, dtype=tf.int32)
        x = tf.random.stateless_uniform([], seeds[2], 0, w - side + 1, dtype=tf.int32)
        crop = tf.stack([y, x, side, side])
    elif preset == "inception":  # random-resized crop: 8-100 % of the area, aspect 3/4-4/3
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.stack([h, w, 3]), tf.zeros([1, 0, 4]), seeds[0], min_object_covered=0.1,
            aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
            use_image_if_no_bounding_boxes=True)
        crop = tf.stack([begin[0], begin[1], size[0], size[1]])
    else:
        raise ValueError(f"unknown train preset {preset!r}; valid: {TRAIN_PRESETS}")
    image = tf.image.resize(_decode(tf, data, accurate=False, crop=crop), [image_size, image_size])
    if preset == "imagenet":  # AlexNet PCA colour augmentation, alpha ~ N(0, 0.1)
        alpha = tf.random.stateless_normal([3], seeds[3], stddev=0.1)
        offset = tf.linalg.matvec(tf.constant(PCA_EIGVEC), alpha * tf.constant(PCA_EIGVAL)) * 255.0
        image = image + offset
    return _flip(tf, _to_uint8(tf, image), seeds[4])


def ten_crop_boxes(height: int, width: int, crop: int) -> list[tuple[int, int]]:
    """Top-left corners of the standard 10-crop views' five crops: four corners, then the centre."""
    return [(0, 0), (0, width - crop), (height - crop, 0), (height - crop, width - crop),
            ((height - crop) // 2, (width - crop) // 2)]


def eval_preprocess(data, preset: str, image_size: int, resize_size: int | None = None):
    """Deterministic evaluation views, decoded once with the accurate IDCT (bit-identical to PIL).

    ``cifar``: the image itself (centrally cropped or zero-padded if it is not ``image_size`` square).
    ``center``: shorter side ``resize_size`` (256), central ``image_size`` (224).
    ``10``: four corners and centre of the resized image, and their horizontal flips -> (10, S, S, 3).
    """
    tf = _tf()
    if preset == "cifar":
        return tf.image.resize_with_crop_or_pad(_decode(tf, data, accurate=True), image_size, image_size)
    resize_size = resize_size or round(image_size * 256 / 224)
    if preset == "center":  # crop first, resize the window: the same pixels as resize-then-crop, faster
        h, w = _shape(tf, data)
        side = tf.cast(tf.round(tf.cast(tf.minimum(h, w), tf.float32) * image_size / resize_size), tf.int32)
        crop = tf.stack([(h - side) // 2, (w - side) // 2, side, side])
        return _resize(tf, _decode(tf, data, accurate=True, crop=crop), [image_size, image_size])
    if preset == "10":
        image = resize_shorter(tf, _decode(tf, data, accurate=True), resize_size)
        h, w = tf.shape(image)[0], tf.shape(image)[1]
        crops = [image[y:y + image_size, x:x + image_size] for y, x in ten_crop_boxes(h, w, image_size)]
        crops = tf.stack(crops)
        return tf.concat([crops, tf.reverse(crops, [2])], axis=0)
    raise ValueError(f"unknown eval preset {preset!r}; valid: {EVAL_PRESETS[:3]}")


def resize_shorter(tf, image, size: int):
    """Resize so that the shorter side is ``size``, keeping the aspect ratio."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    scale = size / tf.cast(tf.minimum(h, w), tf.float32)
    new = [tf.cast(tf.round(tf.cast(h, tf.float32) * scale), tf.int32),
           tf.cast(tf.round(tf.cast(w, tf.float32) * scale), tf.int32)]
    return _resize(tf, image, tf.maximum(new, size))


# ---------------------------------------------------------------------------------------------- batching


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
    """Endless training batches from ``start_step`` on; each epoch drops its last partial batch."""
    tf = _tf()
    process_index, process_count = _processes(process_index, process_count)
    steps_per_epoch = source.num_examples // batch_size
    if steps_per_epoch == 0:
        raise DataError(f"{source.name}:{source.split} has {source.num_examples} examples, fewer than one "
                        f"batch of {batch_size}")
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


def eval_view_shape(preset: str, image_size: int) -> tuple[int, ...]:
    """Shape of one example's evaluation views."""
    return (10, image_size, image_size, 3) if preset == "10" else (image_size, image_size, 3)


def eval_batches(source: Source, batch_size: int, preset: str, image_size: int, resize_size: int | None = None,
                 process_index: int | None = None,
                 process_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """One pass in order; the last global batch is padded with ``mask=False`` examples (never dropped).
    Image folders with the ``cifar`` preset are decoded with PIL, without TensorFlow (the same pixels)."""
    process_index, process_count = _processes(process_index, process_count)
    if source.paths is not None and preset == "cifar":
        yield from _folder_eval_batches(source, batch_size, image_size, process_index, process_count)
        return
    if source.arrays is not None:
        if preset not in ("cifar", "center"):
            raise DataError(f"{source.name} images are served as they are: no {preset!r} views")
        yield from array_batches(*source.arrays, batch_size, process_index, process_count)
        return
    tf = _tf()
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


def _folder_eval_batches(source: Source, batch_size: int, image_size: int, process_index: int,
                         process_count: int) -> Iterator[dict[str, np.ndarray]]:
    """``eval_batches`` for image folders and the ``cifar`` preset: the same batches, decoded with PIL."""
    yield from _padded_batches(source.num_examples, source.labels, lambda i: decode_files(source.paths[i], image_size),
                               batch_size, process_index, process_count)


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


def decode_images(files: Sequence[str], preset: str, image_size: int, resize_size: int | None = None) -> np.ndarray:
    """Evaluation views of image files (for inference); an unreadable file raises naming it. The ``cifar`` view
    needs no TensorFlow."""
    if preset == "cifar":
        return decode_files(files, image_size)
    tf = _tf()
    out = []
    for path in files:
        try:
            out.append(eval_preprocess(tf.io.read_file(path), preset, image_size, resize_size).numpy())
        except Exception as e:
            raise DataError(f"cannot read image {path}: {e}") from e
    return np.stack(out)


def _read_rgb(path: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as e:
        raise DataError(f"cannot read image {path}: {e}") from e


def _crop_or_pad(image: np.ndarray, size: int) -> np.ndarray:
    """Central crop or zero padding to ``size`` x ``size`` (as ``tf.image.resize_with_crop_or_pad``)."""
    out = np.zeros((size, size, 3), np.uint8)
    h, w = min(image.shape[0], size), min(image.shape[1], size)
    y, x = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    oy, ox = (size - h) // 2, (size - w) // 2
    out[oy:oy + h, ox:ox + w] = image[y:y + h, x:x + w]
    return out


def decode_files(paths: Sequence[str], image_size: int | None = None) -> np.ndarray:
    """Image files decoded with PIL in threads into uint8 (N, H, W, 3) RGB; JPEGs with the accurate IDCT, the
    same pixels as the TensorFlow evaluation path (tested). With ``image_size`` each image is centrally cropped
    or zero-padded to it (the ``cifar`` view); without, all must have one size. Errors name the file."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        images = list(pool.map(_read_rgb, paths))
    if image_size is not None:
        images = [im if im.shape[:2] == (image_size, image_size) else _crop_or_pad(im, image_size) for im in images]
    for path, image in zip(paths, images):
        if image.shape != images[0].shape:
            raise DataError(f"{path} is {image.shape[1]}x{image.shape[0]} but {paths[0]} is "
                            f"{images[0].shape[1]}x{images[0].shape[0]}; images loaded into memory must share one "
                            f"size")
    return np.stack(images) if images else np.zeros((0, image_size or 0, image_size or 0, 3), np.uint8)


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
    tf = _tf()
    ds = source.epoch(0, 0, shuffle=False).map(lambda d, y: (_decode(tf, d, accurate=True), y),
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


# ------------------------------------------------------------------------------------ device-side pieces


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
