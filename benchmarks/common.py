"""What every benchmark records beside its figures: the machine and the versions, and the JSON output."""

import datetime
import json
import os
import platform

from resnet_jax import host_memory

# Every benchmark's process sets the allocator as train.py and evaluate.py do (before JAX starts its threads), for
# every framework it times: RESNET_JAX_MALLOC=0 measures with glibc's defaults instead.
MALLOC = host_memory.keep_freed_memory()


def cpu_model() -> dict:
    """The CPU as ``lscpu`` names it: model name, family and model (AMD family 25 is Zen 3 at model 0-15 and Zen 4
    at 16-31 and above, family 26 Zen 5; a virtual machine's model name alone, "AMD EPYC", does not tell them
    apart), and whether it has AVX-512 and its bf16 instructions."""
    from resnet_jax import conv  # imports JAX

    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = (part.strip() for part in line.partition(":"))
                if key in ("model name", "cpu family", "model") and key not in fields:
                    fields[key] = value
    except OSError:
        pass
    flags = conv.cpu_flags()
    return dict(cpu_model=fields.get("model name", platform.processor() or platform.machine()),
                cpu_family=fields.get("cpu family"), cpu_model_number=fields.get("model"),
                avx512=conv.cpu_avx512(), avx512_bf16="avx512_bf16" in flags, amx="amx_tile" in flags)


def environment() -> dict:
    """Device, versions and host of this run, with the CPU's model and family (imports JAX)."""
    import jax

    device = jax.devices()[0]
    return dict(device_kind=device.device_kind, platform=device.platform, num_devices=jax.device_count(),
                jax_version=jax.__version__, cores=os.cpu_count(), **cpu_model(),
                xla_flags=os.environ.get("XLA_FLAGS", ""), malloc=MALLOC or "glibc default",
                date=datetime.date.today().isoformat())


def write(result: dict, path: str | None) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
