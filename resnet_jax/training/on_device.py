"""On-device data: a small train set kept on the accelerator, augmented inside the jitted step."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax import data

PRESETS = ("cifar", "imagenet")  # the train presets (``data.TRAIN_PRESETS``) the device can augment with


@dataclasses.dataclass
class OnDeviceData:
    """A small train set kept on the accelerator as uint8, augmented inside the jitted step, so small-image
    training is bound by compute, not by the host. Epoch order and augmentation are pure functions of
    (seed, step). ``preset``: ``cifar`` (Sec. 4.2: 4-pixel zero padding, random crop, flip; the stored images are
    ``image_size`` square) or ``imagenet`` (Sec. 3.4's scale augmentation: the host preset of that name, see
    :func:`scale_augment`)."""

    images: jax.Array  # (N, H, W, 3) uint8, replicated
    labels: jax.Array  # (N,) int32
    batch_size: int
    seed: int
    preset: str = "cifar"
    image_size: int | None = None  # of the drawn images (imagenet preset); the stored size with cifar

    @property
    def steps_per_epoch(self) -> int:
        return self.images.shape[0] // self.batch_size

    @property
    def arrays(self) -> dict[str, jax.Array]:
        return {"image": self.images, "label": self.labels}

    def draw(self, arrays: dict[str, jax.Array], step: jax.Array) -> dict[str, jax.Array]:
        """The augmented global batch of ``step`` from the whole train set ``arrays`` (inside jit)."""
        all_images, all_labels = arrays["image"], arrays["label"]
        n = all_images.shape[0]
        epoch, position = step // self.steps_per_epoch, step % self.steps_per_epoch
        key = jax.random.key(self.seed)
        order = jax.random.permutation(jax.random.fold_in(jax.random.fold_in(key, 0), epoch), n)
        index = jax.lax.dynamic_slice_in_dim(order, position * self.batch_size, self.batch_size)
        key = jax.random.fold_in(jax.random.fold_in(key, 1), step)
        if self.preset == "imagenet":
            images = scale_augment(all_images[index], key, self.image_size or all_images.shape[1])
        else:
            images = pad_crop_flip(all_images[index], key)
        return {"image": images, "label": all_labels[index]}


def pad_crop_flip(images: jax.Array, key: jax.Array) -> jax.Array:
    """Sec. 4.2's augmentation of a uint8 batch: 4 zero pixels on each side, a random crop of the stored size,
    a horizontal flip with probability 1/2."""
    b, h, w, _ = images.shape
    images = jnp.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    k_crop, k_flip = jax.random.split(key)
    offsets = jax.random.randint(k_crop, (b, 2), 0, 9)
    crops = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, 3)))(images, offsets)
    return _flip(crops, k_flip)


def scale_augment(images: jax.Array, key: jax.Array, size: int) -> jax.Array:
    """Sec. 3.4's augmentation of a uint8 batch, as the host's ``imagenet`` preset does it: the shorter side
    resized to s ~ U[256, 480] scaled with the crop (64 px: U[73, 137]), a random ``size`` crop (here a window of
    size / scale stored pixels anywhere in the image, resized bilinearly), AlexNet's PCA colour shift
    (alpha ~ N(0, 0.1)), a horizontal flip with probability 1/2. Windows are placed at sub-pixel positions,
    where the host rounds them to whole pixels."""
    b, h, w, _ = images.shape
    k_scale, k_y, k_x, k_pca, k_flip = jax.random.split(key, 5)
    shorter = min(h, w)
    scale = jax.random.uniform(k_scale, (b,), minval=256 * size / 224, maxval=481 * size / 224) / shorter
    scale = jnp.maximum(scale, size / shorter)  # the window fits in the image, as on the host
    side = size / scale
    y = jax.random.uniform(k_y, (b,)) * (h - side)
    x = jax.random.uniform(k_x, (b,)) * (w - side)

    def window(image, scale, y, x):  # output pixel i samples stored pixel y + (i + 0.5) / scale - 0.5
        return jax.image.scale_and_translate(image.astype(jnp.float32), (size, size, 3), (0, 1),
                                             jnp.stack([scale, scale]), jnp.stack([-y * scale, -x * scale]),
                                             method="linear", antialias=False)

    crops = jax.vmap(window)(images, scale, y, x)
    alpha = jax.random.normal(k_pca, (b, 3)) * 0.1
    offset = (alpha * jnp.asarray(data.PCA_EIGVAL)) @ jnp.asarray(data.PCA_EIGVEC).T * 255.0
    crops = jnp.clip(jnp.round(crops + offset[:, None, None, :]), 0, 255).astype(jnp.uint8)
    return _flip(crops, k_flip)


def _flip(images: jax.Array, key: jax.Array) -> jax.Array:
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


def on_device_data(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, mesh: jax.sharding.Mesh,
                   preset: str = "cifar", image_size: int | None = None) -> OnDeviceData:
    """A decoded split (``data.load_arrays``) placed, replicated, on every device."""
    put = functools.partial(jax.device_put, device=NamedSharding(mesh, P()))
    return OnDeviceData(put(images), put(labels), batch_size, seed, preset, image_size)
