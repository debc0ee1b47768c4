"""Chunked distance matrices and nearest neighbours of feature sets (cosine, Euclidean).

:func:`cosine_distance` and :func:`euclidean_distance` give the full ``(len(a), len(b))`` float32
matrix; :func:`topk_neighbours` the ``k`` nearest rows without it. Each works ``chunk_size`` rows
of ``a`` at a time, so the memory beyond the output is one ``(chunk_size, len(b))`` block.
:mod:`hrnet_pyg.evaluation` re-exports them beside the ranking metrics.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F


def _as_features(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (num_items, dim), got shape {tuple(x.shape)}")
    x = x.detach()
    if not x.is_floating_point():
        x = x.to(torch.float32)
    elif x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if x.numel() and not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return x


def _check_pair(a: torch.Tensor, b: torch.Tensor, chunk_size: int) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"feature dims differ: a has {a.shape[1]} columns, b has {b.shape[1]}"
        )
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def _pairwise_chunks(
    a: torch.Tensor, b: torch.Tensor, metric: str, chunk_size: int, squared: bool = False
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(start, stop, block)`` with ``block`` = distances of ``a[start:stop]`` to ``b``.

    Blocks are in the promoted dtype of ``a`` and ``b`` (float32 or float64); at most one block
    lives at a time.
    """
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    dtype = torch.promote_types(a.dtype, b.dtype)
    b = b.to(device=a.device, dtype=dtype)
    if metric == "cosine":
        bn_t = F.normalize(b, dim=1).t()
        for s in range(0, a.shape[0], chunk_size):
            an = F.normalize(a[s : s + chunk_size].to(dtype), dim=1)
            # 1 - cos computed in place on the matmul output: one block of extra memory.
            yield s, s + an.shape[0], torch.mm(an, bn_t).neg_().add_(1.0)
    else:
        b_t = b.t()
        bb = b.pow(2).sum(1).unsqueeze(0)  # (1, G)
        for s in range(0, a.shape[0], chunk_size):
            ac = a[s : s + chunk_size].to(dtype)
            # |a|^2 + |b|^2 - 2 a.b ; clamp: rounding can make it slightly negative.
            blk = torch.addmm(bb, ac, b_t, beta=1.0, alpha=-2.0)
            blk.add_(ac.pow(2).sum(1, keepdim=True)).clamp_(min=0.0)
            if not squared:
                blk.sqrt_()
            yield s, s + ac.shape[0], blk


def _full_matrix(
    a: np.ndarray | torch.Tensor,
    b: np.ndarray | torch.Tensor,
    metric: str,
    chunk_size: int,
    squared: bool = False,
) -> torch.Tensor:
    a = _as_features(a, "a")
    b = _as_features(b, "b")
    _check_pair(a, b, chunk_size)
    out = torch.empty(a.shape[0], b.shape[0], dtype=torch.float32, device=a.device)
    for s, e, blk in _pairwise_chunks(a, b, metric, int(chunk_size), squared):
        out[s:e] = blk  # float64 blocks are rounded to float32 here
    return out


def cosine_distance(
    a: np.ndarray | torch.Tensor,
    b: np.ndarray | torch.Tensor,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """Cosine distance ``1 - <a_i, b_j> / (|a_i| |b_j|)`` as a ``(len(a), len(b))`` float32 tensor.

    Computed ``chunk_size`` rows of ``a`` at a time, so the memory beyond the output is one
    ``(chunk_size, len(b))`` block.  Rows of norm zero have distance 1 to everything.

    Args:
        a: ``(Q, d)`` features (tensor or numpy array).
        b: ``(G, d)`` features.
        chunk_size: rows of ``a`` per block (default: 4096).
    """
    return _full_matrix(a, b, "cosine", chunk_size)


def euclidean_distance(
    a: np.ndarray | torch.Tensor,
    b: np.ndarray | torch.Tensor,
    chunk_size: int = 4096,
    squared: bool = False,
) -> torch.Tensor:
    """Euclidean distance ``|a_i - b_j|`` (or its square) as a ``(len(a), len(b))`` float32 tensor.

    Uses ``|a|^2 + |b|^2 - 2 a.b`` per block of ``chunk_size`` rows of ``a`` (as torch.cdist does
    for large inputs), clamped at 0; memory beyond the output is one block.

    Args:
        a: ``(Q, d)`` features (tensor or numpy array).
        b: ``(G, d)`` features.
        chunk_size: rows of ``a`` per block (default: 4096).
        squared: return squared distances (default: False).
    """
    return _full_matrix(a, b, "euclidean", chunk_size, squared)


def topk_neighbours(
    a: np.ndarray | torch.Tensor,
    b: np.ndarray | torch.Tensor,
    k: int,
    metric: str = "cosine",
    chunk_size: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest rows of ``b`` for every row of ``a``, without the full distance matrix.

    Returns ``(distances, indices)``, both ``(len(a), k)``, sorted by increasing distance
    (float32 distances, int64 indices into ``b``).  Exactly equal distances come in an
    unspecified order (``torch.topk``).

    Args:
        a: ``(Q, d)`` query features.
        b: ``(G, d)`` gallery features.
        k: neighbours per row, ``1 <= k <= len(b)``.
        metric: ``"cosine"`` (default) or ``"euclidean"``.
        chunk_size: rows of ``a`` per block (default: 4096).
    """
    a = _as_features(a, "a")
    b = _as_features(b, "b")
    _check_pair(a, b, chunk_size)
    k = int(k)
    if not 1 <= k <= b.shape[0]:
        raise ValueError(f"k must lie in [1, len(b)={b.shape[0]}], got {k}")
    vals = torch.empty(a.shape[0], k, dtype=torch.float32, device=a.device)
    idx = torch.empty(a.shape[0], k, dtype=torch.long, device=a.device)
    for s, e, blk in _pairwise_chunks(a, b, metric, int(chunk_size)):
        v, i = torch.topk(blk, k, dim=1, largest=False, sorted=True)
        vals[s:e] = v
        idx[s:e] = i
    return vals, idx



__all__ = ["cosine_distance", "euclidean_distance", "topk_neighbours"]
