"""The device mesh that training and evaluation share: one ``data`` axis over every device of every process."""

from __future__ import annotations

import jax

AXIS = "data"


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D ``data`` mesh over every device of every process (sharding propagated automatically)."""
    return jax.make_mesh((jax.device_count(),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
