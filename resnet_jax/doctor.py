"""Check an installation before a long run: versions, devices, and the mismatches that make JAX fall back to the
CPU without an error.

    python -m resnet_jax.doctor [--expect=gpu|tpu|cpu]

Exits non-zero, with one line per problem, when a JAX accelerator plugin does not match the installed jaxlib
(JAX then ignores the plugin and only logs a warning), or when ``--expect`` names a platform that JAX did not
find.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
from collections.abc import Sequence
from importlib import metadata

from resnet_jax import host_memory

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "tensorflow-cpu", "tensorflow",
            "tensorflow-datasets", "torch", "onednn-cpu-gomp")
PLUGINS = ("jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-cuda13-plugin", "jax-cuda13-pjrt", "jax-rocm-plugin")


def installed(names: Sequence[str]) -> dict[str, str]:
    """{distribution: version} of those installed."""
    found = {}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def plugin_problems(versions: dict[str, str]) -> list[str]:
    """Accelerator plugins whose version differs from jaxlib's: JAX will not load them."""
    jaxlib = versions.get("jaxlib")
    return [f"{name} {version} does not match jaxlib {jaxlib}: JAX will ignore it and run on the CPU. Reinstall "
            f"with one pinned step, e.g. pip install -r requirements-cuda12.txt"
            for name, version in versions.items() if name in PLUGINS and jaxlib and version != jaxlib]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--expect", choices=["cpu", "gpu", "tpu"], help="fail unless JAX's default backend is this")
    args = p.parse_args(argv)
    versions = installed(PACKAGES + PLUGINS)
    print(f"python {platform.python_version()} on {platform.machine()}")
    for name, version in versions.items():
        print(f"{name:<20} {version}")
    problems = plugin_problems(versions)
    try:
        import jax

        backend = jax.default_backend()
        devices = jax.devices()
        print(f"backend {backend}: {len(devices)} device(s), {devices[0].device_kind}; "
              f"{jax.process_count()} process(es)")
        if backend == "cpu":  # builds the oneDNN convolutions now if they are not cached yet
            from resnet_jax import conv

            reason = conv.onednn.unavailable()
            print(f"convolutions: {'oneDNN (conv_impl=auto)' if reason is None else 'XLA/im2col: ' + reason}")
            reason = conv.onednn_bf16_unavailable()
            print(f"dtype=bfloat16 convolutions: {'oneDNN' if reason is None else 'XLA: ' + reason}")
            kept = host_memory.left_as_is()
            print(f"host memory: {'freed memory kept for the next step' if kept is None else 'glibc default: ' + kept}")
    except Exception as e:  # a broken install: say so rather than a traceback
        problems.append(f"JAX does not start: {type(e).__name__}: {e}")
        backend = None
    if args.expect and backend != args.expect:
        problems.append(f"expected a {args.expect} backend, JAX found {backend}")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
