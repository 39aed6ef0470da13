"""What every benchmark records beside its figures: the machine and the versions, and the JSON output."""

import datetime
import json
import os
import platform


def environment() -> dict:
    """Device, versions and host of this run (imports JAX)."""
    import jax

    device = jax.devices()[0]
    return dict(device_kind=device.device_kind, platform=device.platform, num_devices=jax.device_count(),
                jax_version=jax.__version__, cores=os.cpu_count(), cpu=platform.processor() or platform.machine(),
                xla_flags=os.environ.get("XLA_FLAGS", ""), date=datetime.date.today().isoformat())


def write(result: dict, path: str | None) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
