"""How a training run stops short: a config that cannot run, and a stop signal."""

from __future__ import annotations


class ConfigError(ValueError):
    """A training config that cannot run (found before anything compiles)."""


class Preempted(Exception):
    """Training stopped on SIGTERM or SIGINT after saving; ``exit_code`` is 128 + the signal number (143 for
    SIGTERM, 130 for Ctrl-C), so schedulers can tell a preempted run from a finished one (0)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
