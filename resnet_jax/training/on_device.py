"""On-device data: a small train set kept on the accelerator, augmented inside the jitted step."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


@dataclasses.dataclass
class OnDeviceData:
    """A small train set kept on the accelerator as uint8, with the CIFAR augmentation (Sec. 4.2: 4-pixel zero
    padding, random crop, horizontal flip) done inside the jitted step, so small-image training is bound by
    compute, not by the host. Epoch order and augmentation are pure functions of (seed, step)."""

    images: jax.Array  # (N, H, W, 3) uint8, replicated
    labels: jax.Array  # (N,) int32
    batch_size: int
    seed: int

    @property
    def steps_per_epoch(self) -> int:
        return self.images.shape[0] // self.batch_size

    @property
    def arrays(self) -> dict[str, jax.Array]:
        return {"image": self.images, "label": self.labels}

    def draw(self, arrays: dict[str, jax.Array], step: jax.Array) -> dict[str, jax.Array]:
        """The augmented global batch of ``step`` from the whole train set ``arrays`` (inside jit)."""
        all_images, all_labels = arrays["image"], arrays["label"]
        n, h, w, _ = all_images.shape
        epoch, position = step // self.steps_per_epoch, step % self.steps_per_epoch
        key = jax.random.key(self.seed)
        order = jax.random.permutation(jax.random.fold_in(jax.random.fold_in(key, 0), epoch), n)
        index = jax.lax.dynamic_slice_in_dim(order, position * self.batch_size, self.batch_size)
        images = jnp.pad(all_images[index], ((0, 0), (4, 4), (4, 4), (0, 0)))
        k_crop, k_flip = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, 1), step))
        offsets = jax.random.randint(k_crop, (self.batch_size, 2), 0, 9)
        crops = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, 3)))(images, offsets)
        flip = jax.random.bernoulli(k_flip, 0.5, (self.batch_size,))
        crops = jnp.where(flip[:, None, None, None], crops[:, :, ::-1], crops)
        return {"image": crops, "label": all_labels[index]}


def on_device_data(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
                   mesh: jax.sharding.Mesh) -> OnDeviceData:
    """A decoded split (``data.load_arrays``) placed, replicated, on every device."""
    put = functools.partial(jax.device_put, device=NamedSharding(mesh, P()))
    return OnDeviceData(put(images), put(labels), batch_size, seed)
