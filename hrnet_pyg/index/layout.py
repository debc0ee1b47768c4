"""What a gallery index folder holds: the format's names, its error, and safe writes into it."""
from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hrnet_pyg.runtime import atomic_write

INDEX_FORMAT = "hrnet_pyg.index.v1"
DTYPES = ("float32", "float16")
#: faiss index types: ``flat`` (exact inner product), ``ivf`` (IVF-Flat, inverted lists over
#: k-means cells), ``hnsw`` (HNSW-Flat graph); ``none``: no faiss part (exact blocked product).
FAISS_TYPES = ("flat", "ivf", "hnsw", "none")
FAISS_FILE = "faiss.index"
#: The ``.npy`` kinds of a shard: F, BN(F) / ||BN(F)||, and the relational part: BN(V') / ||BN(V')||
#: of the gallery protocol's inductive form, and per image what attaching to it reads, the source
#: score F H_s[d:] of Eq. 2 and ||F||^2 of Eq. 1's distance (``graph``).
KINDS = ("feats", "retrieval", "relational", "graph")


class GalleryIndexError(ValueError):
    """A gallery index that cannot be used as asked (wrong checkpoint, damaged files, ...)."""


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """Re-raise an ``OSError`` of the block with ``path`` (the index) as its file name: the
    temporary names the block writes mean nothing to the user."""
    try:
        yield
    except OSError as exc:
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as JSON at ``path``, atomically (``meta.json`` is the index's commit point)."""
    text = json.dumps(obj, indent=1)
    atomic_write(path, lambda fh: fh.write(text), mode="w")


__all__ = ["DTYPES", "FAISS_FILE", "KINDS", "FAISS_TYPES", "INDEX_FORMAT", "GalleryIndexError", "naming", "write_json"]
