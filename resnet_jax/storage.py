"""Where a run's files live: a local folder or a bucket (``gs://``; ``s3://`` where Orbax can write it).

Every path the project reads or writes goes through here, as a string: a local path (made absolute) or a URL.
URLs go through ``etils.epath``, the path layer Orbax and TFDS use, on its fsspec backend (gcsfs, s3fs), also
where TensorFlow is installed: the same code, credentials and environment variables then serve every machine,
with or without TensorFlow (``EPATH_USE_TF=true`` chooses TensorFlow's gfile instead).

Object stores have no append, no atomic rename and no file locks. What keeps each file whole there:
- a write (``write_text``, ``write_bytes``) is one object upload, which replaces the object at once, so a reader
  sees the old or the new object, never half of one (locally: a temporary file, then a rename);
- ``append_text`` rewrites the whole object (``metrics.jsonl`` is small next to a checkpoint);
- checkpoints are Orbax's (a step counts once its commit marker is written);
- the run lock is a lease object (``training.lock``).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import tempfile
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("EPATH_USE_TF", "false")  # before etils first chooses a backend: fsspec on every machine

SCHEMES = ("gs", "s3")
CHECKPOINT_SCHEMES = ("gs",)  # Orbax 0.12's TensorStore spec writes local paths and gs:// only
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class StorageError(ValueError):
    """A path that cannot be used: an unsupported URL, a missing bucket, missing credentials, a failed read or
    write. The message is one line naming the URL."""


def one_line(error: BaseException | str, limit: int = 300) -> str:
    """An error's text on one line, at most ``limit`` characters (HTTP clients' errors span many lines)."""
    return " ".join(str(error).split())[:limit]


def scheme(path: str) -> str | None:
    """``"gs"`` for ``gs://b/x``, None for a local path."""
    m = _URL.match(str(path))
    return m.group(1).lower() if m else None


def is_remote(path: str) -> bool:
    return scheme(path) is not None


def resolve(path: str, what: str = "path") -> str:
    """A local path made absolute, or a supported URL as given (without a trailing slash); StorageError for an
    unsupported scheme or a URL without a bucket. Never a local stand-in for a URL."""
    path = os.fspath(path)
    s = scheme(path)
    if s is None:
        return os.path.abspath(os.path.expanduser(path))
    if s not in SCHEMES:
        raise StorageError(f"{what} {path}: {s}:// is not supported (use a local path, gs:// or s3://)")
    if not bucket(path):
        raise StorageError(f"{what} {path} names no bucket")
    return path.rstrip("/")


def for_checkpoints(path: str, what: str = "workdir") -> str:
    """``resolve``, refusing (before anything starts) a bucket that Orbax cannot write checkpoints to."""
    path = resolve(path, what)
    s = scheme(path)
    if s is not None and s not in CHECKPOINT_SCHEMES:
        raise StorageError(f"{what} {path}: checkpoints cannot be kept in {s}:// (Orbax 0.12 writes local paths "
                           f"and gs:// only); use a gs:// bucket or a local path")
    return path


def bucket(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


def join(path: str, *parts: str) -> str:
    return posixpath.join(path, *parts) if is_remote(path) else os.path.join(path, *parts)


def basename(path: str) -> str:
    return os.path.basename(str(path).rstrip("/"))


def epath(path: str) -> Any:
    """The ``etils.epath.Path`` of a path or URL."""
    from etils import epath as ep

    return ep.Path(path)


def filesystem(url: str) -> Any:
    """The fsspec filesystem of a URL (gcsfs, s3fs)."""
    import fsspec

    try:
        return fsspec.filesystem(scheme(url))
    except ImportError as e:
        package = {"gs": "gcsfs", "s3": "s3fs"}.get(scheme(url), e.name)
        raise StorageError(f"{url}: reading and writing {scheme(url)}:// needs the {package} package "
                           f"(pip install {package})") from None


def credentials_problem(url: str) -> str | None:
    """Why a gs:// URL cannot be written from here for want of credentials, or None (an emulator needs none)."""
    if scheme(url) != "gs" or os.environ.get("STORAGE_EMULATOR_HOST"):
        return None
    try:
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError
    except ImportError:
        return "reading and writing gs:// needs the gcsfs package (pip install gcsfs)"
    try:
        google.auth.default()
    except DefaultCredentialsError:
        return ("no Google Cloud credentials were found (run `gcloud auth application-default login`, or set "
                "GOOGLE_APPLICATION_CREDENTIALS to a service account's key file)")
    return None


def check_writable(url: str, what: str = "workdir") -> None:
    """Before a run writes anything to a bucket: its credentials are there and its bucket exists, else one line
    naming the URL. Local paths are checked where they are written."""
    if not is_remote(url):
        return
    problem = credentials_problem(url)
    if problem:
        raise StorageError(f"cannot write the {what} {url}: {problem}")
    with errors(url, f"cannot write the {what}"):
        found = filesystem(url).exists(bucket(url))
    if not found:
        raise StorageError(f"cannot write the {what} {url}: the bucket {scheme(url)}://{bucket(url)} does not "
                           f"exist (create it first; runs never create buckets)")


def missing_bucket(url: str) -> str:
    """`` (the bucket gs://b does not exist)`` for a URL in a missing bucket, else "" (to end a message)."""
    if not is_remote(url):
        return ""
    with contextlib.suppress(Exception):
        if not filesystem(url).exists(bucket(url)):
            return f" (the bucket {scheme(url)}://{bucket(url)} does not exist)"
    return ""


@contextlib.contextmanager
def errors(path: str, doing: str) -> Iterator[None]:
    """Turn a failed bucket request (no such object aside) into a StorageError: ``"<doing> <path>: <why>"``."""
    if not is_remote(path):
        yield
        return
    try:
        yield
    except (FileNotFoundError, StorageError):
        raise
    except Exception as e:  # gcsfs/s3fs/aiohttp/google-auth errors: name the URL in one line
        why = one_line(e) or type(e).__name__
        raise StorageError(f"{doing} {path}: {why}") from e


def exists(path: str) -> bool:
    if not is_remote(path):
        return os.path.exists(path)
    with errors(path, "cannot read"):
        return epath(path).exists()


def isdir(path: str) -> bool:
    """A local directory, or a URL prefix that holds objects (buckets have no empty directories)."""
    if not is_remote(path):
        return os.path.isdir(path)
    with errors(path, "cannot read"):
        return epath(path).is_dir()


def listdir(path: str) -> list[str]:
    """The names directly under a directory (or URL prefix); [] where there is none."""
    if not is_remote(path):
        return os.listdir(path) if os.path.isdir(path) else []
    with errors(path, "cannot list"):
        p = epath(path)
        return sorted(c.name for c in p.iterdir()) if p.is_dir() else []


def makedirs(path: str) -> None:
    """Create a local directory; nothing for a URL (an object store needs no directories, and a bucket is never
    created here)."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def read_bytes(path: str) -> bytes:
    if not is_remote(path):
        with open(path, "rb") as f:
            return f.read()
    with errors(path, "cannot read"):
        return epath(path).read_bytes()


def read_many(paths: list[str], end: int | None = None) -> list[bytes | Exception]:
    """The contents (or the first ``end`` bytes) of many files, in order; a file that cannot be read gives its
    exception in its place. Bucket objects are fetched concurrently (fsspec's async batches), so a batch of images
    costs about one round trip, not one per image."""
    paths = [str(p) for p in paths]
    remote = [p for p in paths if is_remote(p)]
    fetched: dict[str, bytes | Exception] = {}
    if remote:
        with errors(remote[0], "cannot read"):
            contents = filesystem(remote[0]).cat_ranges(remote, 0, end, on_error="return")
        fetched = dict(zip(remote, contents))
    out: list[bytes | Exception] = []
    for p in paths:
        if p in fetched:
            out.append(fetched[p])
            continue
        try:
            with open(p, "rb") as f:
                out.append(f.read() if end is None else f.read(end))
        except OSError as e:
            out.append(e)
    return out


def find_files(url: str) -> list[str]:
    """Every file under a URL prefix, as URLs, in one listing (for image folders in a bucket)."""
    with errors(url, "cannot list"):
        fs = filesystem(url)
        return sorted(f"{scheme(url)}://{p}" for p in fs.find(url))


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file at once: a reader never sees half of it (locally a temporary file renamed over it,
    in a bucket one upload)."""
    if is_remote(path):
        with errors(path, "cannot write"):
            epath(path).write_bytes(data)
        return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def append_text(path: str, text: str) -> None:
    """Append to a file; in a bucket (no appends there) the whole object is rewritten with the text added."""
    if not is_remote(path):
        with open(path, "a") as f:
            f.write(text)
        return
    try:
        old = read_text(path)
    except FileNotFoundError:
        old = ""
    write_text(path, old + text)


def remove(path: str) -> None:
    """Remove a file or a whole directory (prefix); nothing if it is not there."""
    if not is_remote(path):
        if os.path.isdir(path) and not os.path.islink(path):
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)
        return
    with errors(path, "cannot remove"):
        fs = filesystem(path)
        if fs.exists(path):
            fs.rm(path, recursive=True)


def move(source: str, target: str) -> None:
    """Rename a file or directory (in a bucket: copy, then delete, object by object)."""
    if not is_remote(source):
        os.replace(source, target)
        return
    with errors(source, "cannot move"):
        filesystem(source).mv(source, target, recursive=True)
