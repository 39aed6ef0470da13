"""oneDNN's convolutions inside XLA:CPU programs, through one XLA FFI custom call (``onednn_conv.cc``).

PyTorch's CPU convolutions are oneDNN's; XLA:CPU's are 2-10x slower per pass on the networks' shapes
(docs/performance.md). The handler is compiled on first use with the system's C++ compiler against the oneDNN
found in this environment (``pip install onednn-cpu-gomp onednn-devel-cpu-gomp``, the ``cpu`` extra, or a
system ``libdnnl-dev``; ``$ONEDNN_ROOT`` points elsewhere) and cached under ``<cache_dir>/native``, keyed by the
source, jaxlib and oneDNN. Without a compiler or oneDNN, :func:`unavailable` says why and callers use XLA.
``RESNET_JAX_ONEDNN=0`` turns it off.

:func:`forward`, :func:`input_grad` and :func:`kernel_grad` have the signatures of ``resnet_jax.conv``'s XLA
forms: NHWC activations, HWIO kernels, explicit padding, square strides; fp32, or bf16 where :func:`bf16_unavailable`
finds oneDNN's bf16 convolutions on this CPU (AVX512-BF16 or AMX).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.cache import cache_dir

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("onednn_conv.cc")
TARGET = "resnet_jax_onednn_conv"
SYMBOL = "ResnetJaxOnednnConv"
BF16_SYMBOL = "ResnetJaxOnednnBf16"
Padding = tuple[tuple[int, int], tuple[int, int]]


def _roots() -> list[str]:
    roots = [os.environ.get("ONEDNN_ROOT", ""), sys.prefix, sys.base_prefix, "/usr/local", "/usr"]
    return [r for r in dict.fromkeys(roots) if r]


def find_onednn() -> tuple[str, str] | None:
    """(include folder, library folder) of the first oneDNN with headers and ``libdnnl.so``."""
    for root in _roots():
        include = os.path.join(root, "include")
        if not os.path.isfile(os.path.join(include, "oneapi", "dnnl", "dnnl.hpp")):
            continue
        for lib in ("lib", "lib64", "lib/x86_64-linux-gnu", "lib/aarch64-linux-gnu"):
            if os.path.isfile(os.path.join(root, lib, "libdnnl.so")):
                return include, os.path.join(root, lib)
    return None


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def _build(compiler: str, include: str, lib: str) -> str:
    """The handler's shared library, compiled once per (source, jaxlib, oneDNN, compiler) into the cache."""
    dnnl = os.stat(os.path.join(lib, "libdnnl.so"))
    key = "|".join([SOURCE.read_text(), importlib.metadata.version("jaxlib"), os.path.realpath(lib),
                    str(dnnl.st_size), str(dnnl.st_mtime_ns), compiler])
    folder = os.path.join(cache_dir(), "native")
    target = os.path.join(folder, f"onednn_conv-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so")
    if os.path.isfile(target):
        return target
    os.makedirs(folder, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=".building-", suffix=".so", dir=folder)
    os.close(fd)
    command = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{jax.ffi.include_dir()}", f"-I{include}",
               str(SOURCE), f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}", "-o", staging]
    log.info("compiling oneDNN convolutions: %s", " ".join(command))
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode:
            lines = [line for line in done.stderr.splitlines() if "error" in line] or done.stderr.splitlines()
            raise RuntimeError(f"{compiler} failed: {(lines or ['no output'])[0].strip()}")
        os.replace(staging, target)  # whole or not at all, also with several processes building at once
    finally:
        if os.path.exists(staging):
            os.remove(staging)
    return target


@functools.cache
def _load() -> str | None:
    """Builds, loads and registers the handler once per process; the reason it is unavailable, or None."""
    if os.environ.get("RESNET_JAX_ONEDNN", "1") == "0":
        return "turned off by RESNET_JAX_ONEDNN=0"
    found = find_onednn()
    if found is None:
        return ("oneDNN not found (pip install onednn-cpu-gomp onednn-devel-cpu-gomp, or set ONEDNN_ROOT); "
                f"looked in {', '.join(_roots())}")
    compiler = _compiler()
    if compiler is None:
        return "no C++ compiler (c++, g++ or $CXX) to build the oneDNN convolutions with"
    try:
        library = ctypes.CDLL(_build(compiler, *found))
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(getattr(library, SYMBOL)), platform="cpu")
    except (OSError, RuntimeError, subprocess.TimeoutExpired, AttributeError) as e:
        return f"building the oneDNN convolutions failed: {e}"
    _libraries.append(library)
    return None


_libraries: list[ctypes.CDLL] = []  # loaded handlers stay loaded


def unavailable() -> str | None:
    """Why oneDNN's convolutions cannot be used in this process (None: they can; the first call builds them)."""
    return _load()


@functools.cache
def bf16_unavailable() -> str | None:
    """Why oneDNN's bf16 convolutions cannot be used here (None: they can): oneDNN is asked once per process
    whether it has all three passes in bf16 on this CPU, and not only its reference implementation."""
    reason = _load()
    if reason is not None:
        return reason
    answer = getattr(_libraries[-1], BF16_SYMBOL)()
    return {0: "oneDNN has no bf16 convolutions on this CPU",
            2: "oneDNN has only its reference bf16 convolutions on this CPU (slower than fp32)"}.get(answer)


def _call(which: int, a: jax.Array, b: jax.Array, out_shape: Sequence[int], stride: int, padding: Padding,
          dtype: Any) -> jax.Array:
    reason = _load()
    if reason is not None:
        raise RuntimeError(f"conv_impl='onednn': {reason}")
    (top, bottom), (left, right) = padding
    # the result is typed like ``a`` (the operand with the batch), so it is per-device inside shard_map as well
    result = jax.typeof(a).update(shape=tuple(out_shape), dtype=dtype)
    call = jax.ffi.ffi_call(TARGET, result, vmap_method="sequential")
    attrs = dict(sh=stride, sw=stride, pt=top, pb=bottom, pl=left, pr=right)
    return call(a, b, **{"pass": np.int64(which)}, **{k: np.int64(v) for k, v in attrs.items()})


def output_shape(x_shape: Sequence[int], kernel_shape: Sequence[int], stride: int, padding: Padding) -> tuple:
    (top, bottom), (left, right) = padding
    kh, kw, _, cout = kernel_shape
    return (x_shape[0], (x_shape[1] + top + bottom - kh) // stride + 1, (x_shape[2] + left + right - kw) // stride + 1,
            cout)


def forward(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    """The convolution (oneDNN's forward pass), in the operands' type."""
    return _call(0, x, kernel, output_shape(x.shape, kernel.shape, stride, padding), stride, padding, x.dtype)


def input_grad(g: jax.Array, kernel: jax.Array, stride: int, padding: Padding, x_shape: Sequence[int]) -> jax.Array:
    """The input gradient (oneDNN's backward-data pass), in the operands' type."""
    return _call(1, g, kernel, x_shape, stride, padding, g.dtype)


def kernel_grad(x: jax.Array, g: jax.Array, stride: int, padding: Padding, kernel_shape: Sequence[int]) -> jax.Array:
    """The kernel gradient (oneDNN's backward-weights pass), accumulated in fp32 and rounded once to the
    operands' type."""
    return _call(2, x, g, kernel_shape, stride, padding, jnp.float32).astype(x.dtype)
