"""One run per workdir: ``<workdir>/run.lock``, held by process 0 for as long as the run lives.

The lock is an ``flock`` on that file, so the kernel releases it when its holder dies in any way (kill -9, a crash,
a rebooted VM): a requeued run never waits for a dead one. The file's content names the holder (host, pid, start
time) for the message of a second run, which refuses before anything compiles. A file left behind by a dead run is
taken over with a warning naming it. On filesystems without ``flock`` (some network and FUSE filesystems) the
holder's pid is checked instead where it is on this host; docs/faults.md says what holds where.

In a gs:// bucket (no flock there) the lock is a lease: the object ``run.lock`` names its holder and the time it
last renewed it, every ``LEASE_RENEW`` seconds from a thread; a lease not renewed for ``LEASE_SECONDS`` is
taken over, and so is one whose holder is a dead process of this host. Each write carries a generation
precondition, so of two runs taking the lease at the same moment one gets it and the other is refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import logging
import os
import socket
import threading
import time

from resnet_jax import storage
from resnet_jax.training.errors import ConfigError

log = logging.getLogger(__name__)
LOCK_FILE = "run.lock"
LEASE_SECONDS = 90.0  # a bucket lease not renewed for this long belongs to a run that is gone
LEASE_RENEW = 20.0


class WorkdirLocked(ConfigError):
    """Another live run holds the workdir."""


def describe(holder: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {started}"


def _read(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        return {}


def alive_here(holder: dict) -> bool:
    """Whether ``holder`` is a live process of this host (only checkable here)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkdirLock:
    """``with WorkdirLock(workdir):`` holds the workdir's run lock, or raises WorkdirLocked naming the holder."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self.fd: int | None = None

    def acquire(self) -> WorkdirLock:
        """Hold the lock; WorkdirLocked if a live run holds it, ConfigError if the workdir cannot be written."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"cannot write to the workdir {os.path.dirname(self.path)}: {e.strerror}") from None
        holder = _read(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WorkdirLocked(f"{os.path.dirname(self.path)} is in use by another run ({describe(holder)}); "
                                f"stop it or use another --workdir") from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            if holder and holder.get("pid") != os.getpid() and alive_here(holder):  # no flock: the pid check
                os.close(fd)
                raise WorkdirLocked(f"{os.path.dirname(self.path)} is in use by another run ({describe(holder)}); "
                                    f"stop it or use another --workdir") from None
            log.warning("%s: this filesystem has no file locks; only runs on this host are kept off this workdir",
                        self.path)
        if holder and holder.get("pid") != os.getpid():
            log.warning("taking over %s from a run that is gone (%s)", self.path, describe(holder))
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                     "started": time.time()}).encode())
            os.fsync(fd)
        except OSError as e:
            os.close(fd)
            raise ConfigError(f"cannot write to the workdir {os.path.dirname(self.path)}: {e.strerror}") from None
        self.fd = fd
        return self

    def release(self) -> None:
        """Unlock and empty the file (an empty file is a lock nobody holds)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):  # a full disk does not keep the lock held
            os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holder_record() -> dict:
    now = time.time()
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": now, "renewed": now}


class BucketLease:
    """``with BucketLease(url):`` holds the lease ``<url>/run.lock`` in a gs:// bucket, or raises WorkdirLocked
    naming the live holder."""

    def __init__(self, workdir: str):
        self.workdir, self.url = workdir, storage.join(workdir, LOCK_FILE)
        self.generation: int | None = None
        self.record: dict = {}
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    @functools.cached_property
    def blob(self):
        """The lease object (one client for the take, every renewal and the release)."""
        from google.cloud import storage as gcs

        bucket, _, key = self.url.split("://", 1)[1].partition("/")
        return gcs.Client().bucket(bucket).blob(key)

    def acquire(self) -> BucketLease:
        from google.api_core import exceptions

        blob = self.blob
        with storage.errors(self.url, "cannot take the run lock"):
            try:
                holder, generation = json.loads(blob.download_as_bytes() or b"{}"), blob.generation
            except exceptions.NotFound:
                holder, generation = {}, 0
            except ValueError:
                holder, generation = {}, blob.generation
        age = time.time() - holder.get("renewed", 0)
        if holder and age < LEASE_SECONDS and not (holder.get("host") == socket.gethostname()
                                                   and not alive_here(holder)):
            raise WorkdirLocked(f"{self.workdir} is in use by another run "
                                f"({describe(holder)}, lease renewed {age:.0f} s ago; a lease not renewed for "
                                f"{LEASE_SECONDS:.0f} s is taken over); stop it or use another --workdir")
        if holder:
            log.warning("taking over %s from a run that is gone (%s)", self.url, describe(holder))
        self.record = holder_record()
        self._write(generation, what="take")
        self.thread = threading.Thread(target=self._renew, name="resnet_jax lease", daemon=True)
        self.thread.start()
        return self

    def _write(self, generation: int, what: str) -> None:
        from google.api_core import exceptions

        blob = self.blob
        try:
            with storage.errors(self.url, f"cannot {what} the run lock"):
                blob.upload_from_string(json.dumps(self.record), content_type="application/json",
                                        if_generation_match=generation)
        except storage.StorageError as e:
            if isinstance(e.__cause__, exceptions.PreconditionFailed):
                raise WorkdirLocked(f"{self.url} was taken by another run at the same moment; stop it or use "
                                    f"another --workdir") from None
            raise
        self.generation = blob.generation

    def _renew(self) -> None:
        while not self.stopped.wait(LEASE_RENEW):
            self.record["renewed"] = time.time()
            try:
                self._write(self.generation, what="renew")
            except WorkdirLocked:
                log.error("%s: another run took this run's lease; stop one of them", self.url)
                return
            except storage.StorageError as e:  # a passing network error: the next renewal tries again
                log.warning("%s", e)

    def release(self) -> None:
        """Stop renewing and delete the lease (only if it is still ours)."""
        if self.generation is None:
            return
        self.stopped.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
        with contextlib.suppress(Exception):
            self.blob.delete(if_generation_match=self.generation)
        self.generation = None

    def __enter__(self) -> BucketLease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def run_lock(workdir: str) -> WorkdirLock | BucketLease:
    """The workdir's run lock, not yet held: a file lock, or a lease object in a bucket."""
    return BucketLease(workdir) if storage.is_remote(workdir) else WorkdirLock(workdir)
