"""The one error every input problem raises: a message that names the dataset, split or file."""

from __future__ import annotations


class DataError(ValueError):
    """A dataset that cannot be read as asked (missing split, empty class, unprepared TFDS dataset...)."""
