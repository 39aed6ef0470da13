"""Shared fixtures. Four CPU devices let the sharding tests run on a laptop-sized machine."""

import fcntl
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# JAX's persistent compilation cache, shared by the test processes and the runs they start: the suite compiles the
# same small networks dozens of times (a CLI run takes ~27 s cold, ~12 s with the cache). The key covers the
# program, the flags and jaxlib, so a changed network compiles afresh; results are those of the same executable.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "resnet_jax-tests-xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shared_file(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} is absent (real data lives in ../shared)")
    return path


def once_per_session(tmp_path_factory, name: str, make) -> Path:
    """``<session folder>/<name>``, made by ``make(path)`` once per test session: the xdist workers share the
    session's folder; the first to need ``name`` makes it while the others wait for it (a file lock), and a
    ``make`` cut short by a failure is redone by the next one."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path, done = shared / name, shared / f"{name}.done"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            make(path)
            done.touch()
    return path


def extract(tmp_path_factory, archive: str, folder: str) -> Path:
    """``../shared/<archive>`` extracted once per test session (read-only for the tests); returns its ``folder``."""
    source = shared_file(archive)

    def make(target: Path) -> None:
        with tarfile.open(source) as tar:
            tar.extractall(target, filter="data")

    return once_per_session(tmp_path_factory, f"extracted-{folder}", make) / folder


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory) -> Path:
    """The real CIFAR-10 JPEG folders from ../shared."""
    return extract(tmp_path_factory, "data/cifar10-jpeg.tar.gz", "cifar10")


@pytest.fixture(scope="session")
def tiny_imagenet_root(tmp_path_factory) -> Path:
    """Tiny ImageNet from ../shared (200 ILSVRC classes, 64x64 photographs), extracted once per session."""
    return extract(tmp_path_factory, "data/tiny-imagenet-200.tar.gz", "tiny-imagenet-200")


def pytest_collection_modifyitems(config, items):
    """The slow tests first (a stable sort: each tier keeps its order). With ``-n 2`` the workers start on the
    long runs and the short tests fill in at the end, instead of one long test running alone last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
