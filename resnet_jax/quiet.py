"""A quiet terminal: a run shows the project's own log lines and progress bars, not TensorFlow's, absl's or
TFDS's start-up chatter. ``RESNET_JAX_VERBOSE=1`` brings all of it back for debugging."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

VERBOSE = os.environ.get("RESNET_JAX_VERBOSE", "").lower() not in ("", "0", "false", "no")


def quiet_native_logs() -> None:
    """Before TensorFlow is imported (it is imported lazily, by the input pipelines): its C++ INFO lines off, and
    its oneDNN ops off, whose notice TensorFlow prints before any log level applies (the pipelines use
    TensorFlow only for decoding and augmentation). Variables the user set are left alone."""
    if not VERBOSE:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


@contextlib.contextmanager
def library_warnings() -> Iterator[None]:
    """Hold back the Python warnings of absl-logging libraries (TFDS's "Variant folder ... has no
    dataset_info.json") inside the block, so that the project's own one-line error is what a user reads."""
    if VERBOSE:
        yield
        return
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class _NotFrom(logging.Filter):
    """Drops the records logged from inside a library (by the path of the file that logged them)."""

    def __init__(self, package: str):
        super().__init__()
        self.marker = f"{os.sep}{package}{os.sep}"

    def filter(self, record: logging.LogRecord) -> bool:
        return self.marker not in record.pathname


def cli_logging() -> None:
    """For the command-line tools, which turn a failed save into one line of their own: Orbax's background-thread
    errors and asyncio's "exception was never retrieved" tracebacks about the same failure are not printed."""
    if VERBOSE:
        return
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    logging.getLogger("absl").addFilter(_NotFrom("orbax"))
