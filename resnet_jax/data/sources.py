"""Where examples come from: one split of an image folder, a prepared TFDS dataset or synthetic data, as a
``Source`` (encoded images in a fixed order, their labels and the class names)."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any

import numpy as np

from resnet_jax import quiet, storage
from resnet_jax.data.backend import tensorflow
from resnet_jax.data.errors import DataError
from resnet_jax.data.files import IMAGE_EXTENSIONS, image_problems

log = logging.getLogger(__name__)
REMOTE_READ_GROUP = 64  # files of a bucket fetched together (one round trip's worth of concurrent requests)


def read_group(paths: np.ndarray) -> np.ndarray:
    """The bytes of files in a bucket, fetched together; an unreadable one raises naming it."""
    names = [p.decode() for p in paths]
    contents = storage.read_many(names)
    for name, content in zip(names, contents):
        if isinstance(content, Exception):
            raise DataError(f"cannot read image {name}: {storage.one_line(content)}")
    return np.array(contents, dtype=object)


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
    _last_order: tuple = dataclasses.field(default=(), init=False, repr=False, compare=False)

    def order(self, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
        """An image folder's example indices in this epoch's order: a pure function of seed and epoch (the last
        epoch's is kept, since each batch of an epoch asks for it)."""
        if not shuffle:
            return np.arange(self.num_examples)
        last = self._last_order
        if last[:2] != (seed, epoch):
            last = self._last_order = (seed, epoch, np.random.default_rng([seed, epoch]).permutation(self.num_examples))
        return last[2]

    def batch_indices(self, seed: int, step: int, batch_size: int) -> np.ndarray:
        """The example indices of global training batch ``step``: epochs in ``order``, each cut into whole batches
        (its last partial batch dropped)."""
        epoch, position = divmod(step, self.num_examples // batch_size)
        return self.order(seed, epoch)[position * batch_size:(position + 1) * batch_size]

    def epoch(self, seed: int, epoch: int, shuffle: bool) -> Any:
        """tf.data of (encoded bytes, label) in this epoch's order (a pure function of seed and epoch)."""
        tf = tensorflow()
        if self.paths is not None:
            order = self.order(seed, epoch, shuffle)
            ds = tf.data.Dataset.from_tensor_slices((self.paths[order], self.labels[order]))
            if storage.is_remote(str(self.paths[0])):  # fetched in groups of concurrent requests (gcsfs)
                return ds.batch(REMOTE_READ_GROUP).map(
                    lambda p, y: (tf.ensure_shape(tf.numpy_function(read_group, [p], tf.string, stateful=False),
                                                  [None]), y),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
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
    directory = storage.join(root, split)
    files_of = class_files(root, directory)
    paths, labels, bad = [], [], []
    classes = sorted(files_of)
    for label, name in enumerate(classes):
        files = files_of[name]
        images = [p for p in files if p.lower().endswith(IMAGE_EXTENSIONS)]
        problems = dict(zip(images, image_problems(images, verify)))
        problems.update({p: "not an image file" for p in files if p not in problems})
        good = [p for p in files if problems[p] is None]
        bad += [(p, problems[p]) for p in files if problems[p]]
        if not good:
            raise DataError(f"class folder {storage.join(directory, name)} holds no images")
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


def class_files(root: str, directory: str) -> dict[str, list[str]]:
    """``{class: sorted file paths}`` of a split folder ``<directory>/<class>/<file>``, local or in a bucket (one
    listing of the whole prefix there); DataError if the split or its classes are missing."""
    if storage.is_remote(directory):
        found: dict[str, list[str]] = {}
        for url in storage.find_files(directory):
            parts = url[len(directory) + 1:].split("/")
            if len(parts) == 2:
                found.setdefault(parts[0], []).append(url)
        exists = bool(found) or storage.isdir(directory)
    else:
        exists = os.path.isdir(directory)
        found = {d: sorted(e.path for e in os.scandir(os.path.join(directory, d)) if e.is_file())
                 for d in os.listdir(directory) if os.path.isdir(os.path.join(directory, d))} if exists else {}
    if not exists:
        available = [d for d in storage.listdir(root) if storage.isdir(storage.join(root, d))]
        raise DataError(f"image folder {root!r} has no split {storage.basename(directory)!r} (expected "
                        f"{directory}/<class>/<image>); splits found: {available or 'none'}"
                        f"{storage.missing_bucket(root)}")
    if not found:
        raise DataError(f"{directory} has no class folders (expected {directory}/<class>/<image>)")
    return found


def tfds_source(name: str, split: str, data_dir: str | None = None) -> Source:
    """A prepared TFDS dataset (e.g. ``cifar10``, ``imagenet2012``) with TFDS split syntax (``train[:45000]``)."""
    import tensorflow_datasets as tfds

    try:
        with quiet.library_warnings():
            builder = tfds.builder(name, data_dir=data_dir)
            prepared = builder.is_prepared()
    except Exception as e:  # DatasetNotFoundError and friends
        raise DataError(f"unknown TFDS dataset {name!r}: {e}") from e
    if not prepared:
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


def is_synthetic(dataset: str) -> bool:
    """``synthetic`` or ``synthetic:C``."""
    return dataset == "synthetic" or dataset.startswith("synthetic:")


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
    if is_synthetic(dataset):
        return synthetic_source(dataset, split, image_size)
    return tfds_source(dataset, split, data_dir)
