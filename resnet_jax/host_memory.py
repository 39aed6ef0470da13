"""Host memory for CPU training: keep the memory a train step frees, so that the next step reuses it.

XLA:CPU allocates each execution's temporary buffer (all of a train step's activations and gradients, 288 MiB for
cifar_resnet20 at batch 128) with ``malloc`` on one of its worker threads. glibc serves an allocation that large
from a fresh ``mmap`` and hands it back with ``munmap`` when the step ends, so every step page-faults the whole
buffer in again and the kernel zeroes it: 73,617 page faults and 213 ms of system time per cifar_resnet20 step,
a third of the step (docs/performance.md). PyTorch's large tensors pay the same toll.

:func:`keep_freed_memory` sets glibc's allocator (``mallopt``) to one arena, no ``mmap`` and no trimming: large
blocks come from the heap, and freed ones stay there for the next step. The process keeps its peak heap for its
lifetime (cifar_resnet20: 1.3 GB instead of 0.75 GB), which suits a training or evaluation process. It must run
before JAX starts its threads; the commands call it first thing. It does nothing:

- off glibc;
- on accelerators: their buffers are device memory, and an input pipeline's threads would contend for the one arena;
- where ``GLIBC_TUNABLES`` already sets the allocator;
- with ``RESNET_JAX_MALLOC=0``.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import logging
import os
import pkgutil
import platform

log = logging.getLogger(__name__)

# mallopt's parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
KEEP = -1  # mallopt takes an int; glibc reads this one as a size_t: (size_t) -1, never give memory back


def accelerator_plugins() -> list[str]:
    """The accelerator backends JAX would find in this environment (its ``jax_plugins`` and libtpu), without
    starting any: JAX computes on the CPU when there are none, or when ``JAX_PLATFORMS`` puts ``cpu`` first."""
    names = [entry.name for entry in importlib.metadata.entry_points(group="jax_plugins")]
    try:
        import jax_plugins

        names += [module.name for module in pkgutil.iter_modules(jax_plugins.__path__)]
    except ImportError:
        pass
    if importlib.util.find_spec("libtpu") is not None:
        names.append("libtpu")
    return sorted(set(names))


def computes_on_cpu() -> bool:
    """Whether this process's JAX computations will run on the CPU (decided before JAX starts a backend)."""
    platforms = os.environ.get("JAX_PLATFORMS", "") or os.environ.get("JAX_PLATFORM_NAME", "")
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    return not accelerator_plugins()


SETTINGS = {"M_ARENA_MAX": (M_ARENA_MAX, 1), "M_MMAP_MAX": (M_MMAP_MAX, 0),
            "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, KEEP)}


def left_as_is() -> str | None:
    """Why :func:`keep_freed_memory` leaves this process's allocator as it is (None: it sets it)."""
    if os.environ.get("RESNET_JAX_MALLOC", "1") == "0":
        return "turned off by RESNET_JAX_MALLOC=0"
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES sets it"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "not glibc"
    if not computes_on_cpu():
        return "JAX computes on an accelerator"
    return None


def keep_freed_memory() -> str | None:
    """Sets glibc's allocator to keep freed memory for reuse (one arena, no ``mmap``, no trimming) when this
    process computes on the CPU; returns what was set, or None (:func:`left_as_is` says why)."""
    if left_as_is() is not None:
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    done = [name for name, (param, value) in SETTINGS.items() if mallopt(param, value) == 1]
    log.debug("glibc malloc: %s", ", ".join(done))
    return ", ".join(f"{name}={SETTINGS[name][1]}" for name in done) or None
