"""Readable class names for datasets labelled by WordNet ids (ImageNet, Tiny ImageNet, folders named by wnid).

The 1,000 ILSVRC-2012 classes ship with the package (``imagenet_classes.tsv``: ``wnid <TAB> synonyms`` in
the usual label order, WordNet facts). A class shows as its first synonym (``n01443537`` -> ``goldfish``);
the wnid stays in the checkpoint's ``class_ids``.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from importlib import resources

WNID = re.compile(r"n\d{8}")


def read_tsv(path_or_text: str) -> dict[str, str]:
    """``wnid <TAB> synonyms`` lines -> {wnid: first synonym}."""
    text = path_or_text
    if "\t" not in path_or_text and os.path.isfile(path_or_text):
        with open(path_or_text, encoding="utf-8") as f:
            text = f.read()
    names = {}
    for line in text.splitlines():
        if "\t" in line:
            wnid, synonyms = line.split("\t", 1)
            names[wnid.strip()] = synonyms.split(",")[0].strip()
    return names


@functools.cache
def imagenet_names() -> dict[str, str]:
    """{wnid: name} for the 1,000 ILSVRC-2012 classes."""
    return read_tsv(resources.files("resnet_jax").joinpath("imagenet_classes.tsv").read_text(encoding="utf-8"))


def imagenet_class_names() -> list[str]:
    """The 1,000 ILSVRC-2012 names in label order (sorted wnids), as torchvision's and TFDS's labels."""
    names = imagenet_names()
    return [names[w] for w in sorted(names)]


def readable(class_ids: Sequence[str], root: str | None = None) -> list[str]:
    """Names for ``class_ids``: wnids become their first WordNet synonym, from ``<root>/classes.tsv`` where a
    dataset folder has one (Tiny ImageNet), else from the ILSVRC table; anything else is kept as it is."""
    table = dict(imagenet_names())
    if root and os.path.isfile(os.path.join(root, "classes.tsv")):
        table.update(read_tsv(os.path.join(root, "classes.tsv")))
    return [table.get(c, c) if WNID.fullmatch(c) else c for c in class_ids]
