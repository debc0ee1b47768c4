"""The shortlist of a gallery index: an exact blocked product, or a faiss part (flat, IVF, HNSW).

Both take the normalised retrieval features BN(F) / ||BN(F)||, so an inner product is a cosine.
faiss is optional (``pip install hrnet_pyg[search]``); this module imports it only when asked.
"""
from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hrnet_pyg.index.layout import FAISS_FILE, GalleryIndexError
from hrnet_pyg.topk import merge_topk


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def import_faiss() -> Any:
    """The faiss module, or a :class:`GalleryIndexError` that says how to install it."""
    try:
        import faiss
    except ImportError as err:
        raise GalleryIndexError(
            "this needs faiss: pip install faiss-cpu (or pip install hrnet_pyg[search])"
        ) from err
    return faiss


def exact_shortlist(
    queries: Tensor, blocks: Iterator[tuple[int, np.ndarray]], k: int
) -> tuple[Tensor, Tensor]:
    """Top-``k`` inner products of ``queries`` (Q, d) over gallery ``blocks`` of rows.

    ``blocks`` yields ``(offset, rows)`` with ``rows`` (B, d) (any float dtype, memory-mapped or
    not); the memory beyond the output is one (Q, B) block. Returns ``(sims, index)``, both
    (Q, k'), ``k' = min(k, G)``, best first.
    """
    q = queries.float()
    best_s = q.new_empty(q.size(0), 0)
    best_i = torch.empty(q.size(0), 0, dtype=torch.long)
    for offset, rows in blocks:
        g = torch.from_numpy(np.ascontiguousarray(rows)).float()  # float16 rows: converted by torch's threads
        s = q @ g.T  # (Q, B)
        kk = min(k, s.size(1))
        ts, ti = s.topk(kk, dim=1)
        best_s, best_i = merge_topk(best_s, best_i, ts, ti + offset, k, largest=True)
    return best_s, best_i


def faiss_search(
    index: Any, queries: Tensor, k: int, *, nprobe: int | None = None, ef_search: int | None = None
) -> tuple[Tensor, Tensor]:
    """Top-``k`` of ``queries`` (Q, d) in a faiss ``index``: ``(sims, rows)``, best first;
    ``nprobe`` / ``ef_search`` override an IVF / HNSW index's own."""
    if nprobe is not None and hasattr(index, "nprobe"):
        index.nprobe = int(nprobe)
    if ef_search is not None and hasattr(index, "hnsw"):
        index.hnsw.efSearch = int(ef_search)
    if hasattr(index, "hnsw") and index.hnsw.efSearch < k:
        index.hnsw.efSearch = k  # HNSW returns at most efSearch neighbours
    d, i = index.search(np.ascontiguousarray(queries.float().numpy()), k)
    return torch.from_numpy(d).float(), torch.from_numpy(i).long()


def new_faiss_index(part: dict[str, Any], d: int, n: int, sample: Callable[[int], np.ndarray]) -> Any:
    """An empty faiss index of ``part["type"]`` for ``n`` vectors of dimension ``d``.

    An IVF index is trained here on ``sample(m)`` (``m`` rows of the retrieval features). The
    defaults it chooses (``nlist``, ``nprobe``, ``ef_search``) are written into ``part``.
    """
    faiss = import_faiss()
    if part["type"] == "flat":
        return faiss.IndexFlatIP(d)
    if part["type"] == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        # Recall at a fixed efSearch falls as the graph grows: benchmarks/bench_index.py measures
        # recall@120 0.97 at 384 for 200,000 images, and 0.90 at 384 / 0.96 at 768 for 1,000,000.
        part.setdefault("ef_search", 384 if n <= 200_000 else 768)
        return index
    # ivf: trained once, on the first images
    nlist = int(part.get("nlist") or max(1, round(math.sqrt(n))))
    nlist = max(1, min(nlist, n))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(sample(min(n, 64 * nlist)))
    part["nlist"] = nlist
    # half the cells: what recall@120 >= 0.95 needed on benchmarks/bench_index.py's features
    part.setdefault("nprobe", max(1, nlist // 2))
    return index


def write_faiss_index(index: Any, folder: Path, target: Path) -> None:
    """Write ``index`` to ``target`` through a temporary file in ``folder``: never a torn file."""
    faiss = import_faiss()
    fd, tmp = tempfile.mkstemp(prefix=FAISS_FILE + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        faiss.write_index(index, tmp)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


__all__ = [
    "exact_shortlist",
    "faiss_available",
    "faiss_search",
    "import_faiss",
    "new_faiss_index",
    "write_faiss_index",
]
