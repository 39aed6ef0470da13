"""How a training run stops short: a config that cannot run, a stop signal, and a lost process."""

from __future__ import annotations

import jax


class ConfigError(ValueError):
    """A training config that cannot run (found before anything compiles)."""


class Preempted(Exception):
    """Training stopped on SIGTERM or SIGINT after saving; ``exit_code`` is 128 + the signal number (143 for
    SIGTERM, 130 for Ctrl-C), so schedulers can tell a preempted run from a finished one (0)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


LOST_PROCESS_EXIT_CODE = 75  # sysexits.h EX_TEMPFAIL: rerun (all processes)


def lost_process(error: BaseException) -> bool:
    """Whether this multi-process run failed because another process died (a collective or the coordination
    service says so), not through an error of its own. Never in a run of one process."""
    if jax.process_count() == 1:
        return False
    text = str(error)
    return type(error).__name__ == "JaxRuntimeError" or any(
        s in text for s in ("heartbeat", "Gloo", "CoordinationService", "Connection reset", "DEADLINE_EXCEEDED",
                            "barrier", "Timed out"))
