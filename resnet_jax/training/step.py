"""The train step: one jit-compiled, donated step sharded over every device, and a loop of steps on the device.

The global batch is split along a ``data`` mesh axis over all devices of all processes; parameters and
optimizer state are replicated. Inside the step (a ``shard_map``), each device normalises its local batch on
the accelerator and runs the network with batch-norm statistics over its local batch (the paper's multi-GPU
setting), or over the global batch with ``sync_batch_stats``; gradients and running statistics are averaged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax import data, models
from resnet_jax.mesh import AXIS

if TYPE_CHECKING:
    from resnet_jax.training.on_device import OnDeviceData


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any

    @property
    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


def create_train_state(model: models.ResNet, tx: optax.GradientTransformation, image_size: int, seed: int,
                       mesh: jax.sharding.Mesh) -> TrainState:
    """Initialise (He init, Sec. 3.4) directly as replicated arrays on the mesh."""

    def init():
        variables = model.init(jax.random.key(seed), jnp.zeros((1, image_size, image_size, 3)), train=False)
        return TrainState(jnp.zeros((), jnp.int32), variables["params"], variables["batch_stats"],
                          tx.init(variables["params"]))

    return jax.jit(init, out_shardings=NamedSharding(mesh, P()))()


def make_train_step(model: models.ResNet, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh, mean: Any,
                    std: Any, num_classes: int, label_smoothing: float = 0.0, schedule: optax.Schedule | None = None,
                    dataset: OnDeviceData | None = None):
    """One jit-compiled, donated step ``(state, batch) -> (state, metrics)`` over a batch sharded on ``mesh``.

    ``model.bn_axis_name`` decides whether BN statistics are per device (None) or global (``"data"``).
    Metrics stay on device: loss, number of training errors, and the learning rate used.
    With ``dataset`` (on-device data), ``batch`` is the whole device-resident train set
    (``dataset.arrays``) and the step draws its own augmented batch from it.
    """
    return jax.jit(_step(model, tx, mesh, mean, std, num_classes, label_smoothing, schedule, dataset),
                   donate_argnums=0)


def make_train_loop(model: models.ResNet, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh, mean: Any,
                    std: Any, num_classes: int, label_smoothing: float = 0.0, schedule: optax.Schedule | None = None,
                    dataset: OnDeviceData | None = None, steps_per_loop: int = 1):
    """Up to ``steps_per_loop`` (K) train steps in one jit-compiled, donated call ``(state, batches, n) -> (state,
    metrics)``, which runs the first ``n`` (1 <= n <= K) steps of ``make_train_step`` in a loop on the device.

    ``batches`` holds K batches stacked on a leading axis (``stack_batches``), or is the train set with ``dataset``;
    every metric comes back as a (K,) array, the first ``n`` entries filled. ``n`` is an argument, not a constant,
    so one compiled program serves loops of every length (cut short at the steps that log, evaluate or save). On
    CPUs the parameters come out bitwise the same as from single steps (tested; see ``conv`` for what that needs).
    """
    step = _step(model, tx, mesh, mean, std, num_classes, label_smoothing, schedule, dataset)

    def loop(state, batches, n):
        def batch(i):  # the train set itself with on-device data (the step draws), else the i-th stacked batch
            return batches if dataset is not None else jax.tree.map(lambda a: a[i], batches)

        def one(i, carry):
            state, metrics = carry
            state, values = step(state, batch(i))
            return state, jax.tree.map(lambda buffer, value: buffer.at[i].set(value), metrics, values)

        shapes = jax.eval_shape(step, state, batch(0))[1]
        metrics = jax.tree.map(lambda s: jnp.zeros((steps_per_loop, *s.shape), s.dtype), shapes)
        return jax.lax.fori_loop(0, n, one, (state, metrics))

    return jax.jit(loop, donate_argnums=0)


def _step(model, tx, mesh, mean, std, num_classes, label_smoothing, schedule, dataset):
    """The train step of ``make_train_step``, not yet jit-compiled."""

    def local_step(state: TrainState, images, labels):
        def loss_fn(params):
            logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                          data.normalize(images, mean, std), train=True, mutable=["batch_stats"])
            targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
            return optax.softmax_cross_entropy(logits, targets).mean(), (logits, updates["batch_stats"])

        # Each device differentiates its own loss (parameters cast to device-varying; otherwise the transpose of
        # their implicit broadcast would already sum the gradients over devices), then the mean is taken.
        local_params = jax.lax.pcast(state.params, AXIS, to="varying")
        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(local_params)
        grads, loss, batch_stats = jax.lax.pmean((grads, loss, batch_stats), AXIS)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        errors = jax.lax.psum(jnp.sum(jnp.argmax(logits, -1) != labels), AXIS)
        metrics = {"loss": loss, "errors": errors, "count": jax.lax.psum(labels.shape[0], AXIS)}
        if schedule is not None:
            metrics["learning_rate"] = schedule(state.step)
        return TrainState(state.step + 1, params, batch_stats, opt_state), metrics

    sharded = jax.shard_map(local_step, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS)), out_specs=(P(), P()))
    batch_sharding = NamedSharding(mesh, P(AXIS))

    def step(state, batch):
        if dataset is not None:
            batch = jax.lax.with_sharding_constraint(dataset.draw(batch, state.step), batch_sharding)
        return sharded(state, batch["image"], batch["label"])

    return step


def stack_batches(batches: list[dict[str, np.ndarray]], mesh: jax.sharding.Mesh, length: int) -> dict[str, jax.Array]:
    """This process's slices of up to ``length`` consecutive batches -> global arrays of shape (length, global
    batch, ...) for ``make_train_loop``, sharded along the batch axis (one transfer per field). Fewer batches are
    padded with copies of the last one, which the loop does not use."""
    sharding = NamedSharding(mesh, P(None, AXIS))
    padded = batches + batches[-1:] * (length - len(batches))
    return {k: jax.make_array_from_process_local_data(sharding, np.stack([b[k] for b in padded]))
            for k in batches[0]}
