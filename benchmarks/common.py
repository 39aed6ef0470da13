"""What every benchmark records beside its figures: the machine and the versions, and the JSON output."""

import datetime
import json
import os
import platform


def cpu_model() -> dict:
    """The CPU as ``lscpu`` names it: model name and family (25: AMD Zen 3/4, 26: Zen 5), from /proc/cpuinfo."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "cpu family") and key.strip() not in fields:
                    fields[key.strip()] = value.strip()
    except OSError:
        pass
    return dict(cpu_model=fields.get("model name", platform.processor() or platform.machine()),
                cpu_family=fields.get("cpu family"))


def environment() -> dict:
    """Device, versions and host of this run, with the CPU's model and family (imports JAX)."""
    import jax

    device = jax.devices()[0]
    return dict(device_kind=device.device_kind, platform=device.platform, num_devices=jax.device_count(),
                jax_version=jax.__version__, cores=os.cpu_count(), **cpu_model(),
                xla_flags=os.environ.get("XLA_FLAGS", ""), date=datetime.date.today().isoformat())


def write(result: dict, path: str | None) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
