"""One run per workdir: ``<workdir>/run.lock``, held by process 0 for as long as the run lives.

The lock is an ``flock`` on that file, so the kernel releases it when its holder dies in any way (kill -9, a crash,
a rebooted VM): a requeued run never waits for a dead one. The file's content names the holder (host, pid, start
time) for the message of a second run, which refuses before anything compiles. A file left behind by a dead run is
taken over with a warning naming it. On filesystems without ``flock`` (some network and FUSE filesystems) the
holder's pid is checked instead where it is on this host; docs/faults.md says what holds where.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time

from resnet_jax.training.errors import ConfigError

log = logging.getLogger(__name__)
LOCK_FILE = "run.lock"


class WorkdirLocked(ConfigError):
    """Another live run holds the workdir."""


def _describe(holder: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {started}"


def _read(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _alive_here(holder: dict) -> bool:
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
            raise WorkdirLocked(f"{os.path.dirname(self.path)} is in use by another run ({_describe(holder)}); "
                                f"stop it or use another --workdir") from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            if holder and holder.get("pid") != os.getpid() and _alive_here(holder):  # no flock: the pid check
                os.close(fd)
                raise WorkdirLocked(f"{os.path.dirname(self.path)} is in use by another run ({_describe(holder)}); "
                                    f"stop it or use another --workdir") from None
            log.warning("%s: this filesystem has no file locks; only runs on this host are kept off this workdir",
                        self.path)
        if holder and holder.get("pid") != os.getpid():
            log.warning("taking over %s from a run that is gone (%s)", self.path, _describe(holder))
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
