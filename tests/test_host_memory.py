"""resnet_jax.host_memory: a CPU step reuses the memory the previous step freed, instead of page-faulting it in."""

import json
import os
import platform
import subprocess
import sys

import pytest

from resnet_jax import host_memory

# A jitted program whose temporary buffers (132 MiB: the running sums, before they are reduced) are allocated and
# freed on every call, as a train step's activations are; prints their size and the fewest minor page faults of a
# call after two warm-up calls (the heap grows over the first few calls, sooner or later by the machine's load).
PROGRAM = """
import json, resource, sys
from resnet_jax import host_memory
set_to = host_memory.keep_freed_memory() if sys.argv[1] == "keep" else None
import jax, jax.numpy as jnp
def sums(x):
    y = jnp.cumsum(x, axis=1)
    return (y[:, ::2] * y[:, 1::2]).sum() + y[:, 0].sum()
x = jnp.arange(16384 * 1024, dtype=jnp.float32).reshape(16384, 1024) % 977
f = jax.jit(sums).lower(x).compile()
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"set": set_to, "pages": f.memory_analysis().temp_size_in_bytes / 4096, "faults": min(faults[2:])}))
"""

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")


def faults_per_call(mode: str, **env: str) -> dict:
    environment = {**os.environ, "JAX_PLATFORMS": "cpu", **env}
    environment.pop("GLIBC_TUNABLES", None)
    done = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, env=environment,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc
def test_a_cpu_process_reuses_freed_memory_instead_of_faulting_it_in_on_every_call():
    kept = faults_per_call("keep")
    assert kept["set"] == "M_ARENA_MAX=1, M_MMAP_MAX=0, M_TRIM_THRESHOLD=-1"
    assert kept["pages"] > 16384 and kept["faults"] < kept["pages"] / 8, kept
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
        huge_pages_always = "[always]" in f.read()
    if not huge_pages_always:  # glibc's default: the temporary is mapped afresh, page by page, on every call
        default = faults_per_call("default")
        assert default["set"] is None and default["faults"] >= default["pages"] * 0.9, default


@glibc
def test_turned_off_by_the_environment_or_left_to_glibc_tunables(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("RESNET_JAX_MALLOC", "0")
    assert host_memory.keep_freed_memory() is None
    assert host_memory.left_as_is() == "turned off by RESNET_JAX_MALLOC=0"
    assert faults_per_call("keep", RESNET_JAX_MALLOC="0")["set"] is None
    monkeypatch.delenv("RESNET_JAX_MALLOC")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")
    assert host_memory.keep_freed_memory() is None and host_memory.left_as_is() == "GLIBC_TUNABLES sets it"


def test_only_processes_that_compute_on_the_cpu(monkeypatch):
    monkeypatch.delenv("JAX_PLATFORM_NAME", raising=False)
    for platforms, cpu in (("cpu", True), ("cpu,cuda", True), ("cuda", False), ("tpu,cpu", False)):
        monkeypatch.setenv("JAX_PLATFORMS", platforms)
        assert host_memory.computes_on_cpu() is cpu, platforms
    monkeypatch.delenv("JAX_PLATFORMS")
    assert host_memory.computes_on_cpu() is (not host_memory.accelerator_plugins())
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    assert host_memory.keep_freed_memory() is None and host_memory.left_as_is() == "JAX computes on an accelerator"
