"""The relational part of a gallery index: the gallery protocol's inductive form, stored.

Beyond the paper (:mod:`hrnet_pyg.gallery`). At ``index build`` (or ``hrnet-pyg index relational``)
the trained IR layer runs once over the gallery-only kNN graph (Eq. 1, exact, in blocks:
:func:`~hrnet_pyg.gallery.gallery_state`), and each shard stores BN(V') / ||BN(V')||
(``relational_*.npy``, the index's dtype) and, per image, what attaching to it reads (``graph_*.npy``,
(N_s, 2) float32): its source score ``F H_s[d:]`` of Eq. 2, which the all-node denominator of an
attached image sums over, and ``||F||^2`` of Eq. 1's distance, so the kNN pass of a query reads F once.
``meta.json`` records the options (``k``, ``normalize``, ``rounds`` = 1, ``reuse_graph``) and a
fingerprint of the IR layer and its BNNeck; a search under other options, or with another IR layer,
is refused in one line.

A query, or an image that ``add`` appends, attaches to its k nearest indexed images by Euclidean
distance of F (exact, streaming the memory-mapped F): only those k rows of F are read and projected
(:func:`~hrnet_pyg.gallery.attach_gathered`), the stored images are not updated. Images of one
``add`` attach to the index as it stood before it, not to each other: an added image then holds the
V' a query would get, whatever the order or the batches of the adds.

One round of the layer only: a second round would need every stored image's V' of the first round
as its input (another G x d' array) and its kNN graph.
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from hrnet_pyg import gallery
from hrnet_pyg.index.layout import GalleryIndexError
from hrnet_pyg.neighbours import DEFAULT_BLOCK, knn_table_blocks, squared_norms
from hrnet_pyg.protocol import RerankConfig
from hrnet_pyg.runtime import resolve_device, unwrap_model

if TYPE_CHECKING:  # pragma: no cover
    from hrnet_pyg.model import HRNetModule as HRNet

# A hrnet_pyg.index.store.GalleryIndex, whose methods call the functions here (no import back).
GalleryIndex = Any


def check_part(index: GalleryIndex, model: HRNet, rerank_config: RerankConfig | None, what: str = "search",
               compare_options: bool = True) -> dict[str, Any]:
    """The relational part's options, or one line saying why it cannot serve ``model`` under
    ``rerank_config``'s gallery options (``None``: the model's): none stored, another IR
    layer, other options (unless not ``compare_options``: an ``add`` attaches with the
    index's own)."""
    inner = unwrap_model(model)
    reason = relational_unavailable(inner, rerank_config) if compare_options else gallery.unavailable(inner)
    if reason is not None:
        raise GalleryIndexError(reason)
    part = index.relational
    fix = f"hrnet-pyg index relational --index {index.path} --checkpoint CKPT"
    if part is None:
        raise GalleryIndexError(
            f"index {index.path} has no relational features (built without them, or before they existed), which "
            f"the gallery protocol searches; add them with {fix}, or {what} with --protocol paper")
    if part.get("ir_fingerprint") != relational_fingerprint(inner):
        raise GalleryIndexError(
            f"index {index.path} holds relational features of another IR layer (fingerprint "
            f"{part.get('ir_fingerprint')}, this checkpoint's {relational_fingerprint(inner)}); recompute them "
            f"with {fix}")
    want = relational_options(inner, rerank_config)
    have = {key: part.get(key) for key in want}
    if compare_options and have != want:
        raise GalleryIndexError(
            f"index {index.path} holds relational features computed with {describe(have)}, the gallery protocol "
            f"asks {describe(want)} (rerank.gallery_*); {what} with the index's options, or recompute them "
            f"with {fix}")
    return part


def build_part(
    index: GalleryIndex, model: HRNet, rerank_config: RerankConfig | None = None, *,
    device: str | torch.device | None = None, block_size: int = DEFAULT_BLOCK, progress: bool = False,
) -> None:
    """(Re)compute the relational part: the gallery's V' over its own kNN graph (Eq. 1, exact,
    in blocks; :func:`~hrnet_pyg.gallery.gallery_state`) under ``rerank_config``'s gallery
    options (``None``: the model's), stored per shard as BN(V') / ||BN(V')|| (``relational``)
    and each image's source score of Eq. 2 and ``||F||^2`` (``graph``). Reads the whole of F into memory
    (G x d float32) for the kNN graph. A former part is dropped from ``meta.json`` first, so an
    interrupted run leaves an index without one, never a mixed one."""
    index.check_model(model)
    inner = unwrap_model(model)
    reason = relational_unavailable(inner, rerank_config)
    if reason is not None:
        raise GalleryIndexError(reason)
    opts = relational_options(inner, rerank_config)
    if len(index) <= least_images(inner, opts["k"]):
        raise GalleryIndexError(f"the index holds {len(index)} images: too few for the gallery protocol's "
                                f"k={opts['k']} neighbours per image (rerank.gallery_k)")
    dev = resolve_device(device)
    inner.to(dev).eval()
    feats = torch.from_numpy(index.whole("feats"))
    state = gallery.gallery_state(inner, feats.to(dev), **opts, block_size=block_size, progress=progress)
    retrieval = state.retrieval.cpu().numpy().astype(np.dtype(index.dtype))
    terms = torch.stack([gallery.source_scores(state).float(), squared_norms(feats.to(dev))], dim=1).cpu().numpy()
    del state, feats
    if index.meta.get("relational"):
        index.write_meta({**index.meta, "relational": None})
    for s, shard in enumerate(index.shards):
        a, b = int(index.offsets[s]), int(index.offsets[s + 1])
        for kind, arr in (("relational", retrieval[a:b]), ("graph", terms[a:b])):
            with open(index.path / f"{kind}_{shard.name}.npy", "wb") as fh:
                np.save(fh, arr)
    part = {**opts, "dim": int(retrieval.shape[1]), "self_in_knn": bool(inner.config.ir_self_in_knn),
            "ir_fingerprint": relational_fingerprint(inner)}
    index.write_meta({**index.meta, "relational": part})


@torch.no_grad()
def attach(index: GalleryIndex, model: HRNet, feats: Tensor, *, device: str | torch.device | None = None,
           per_pass: int = 256, block: int = 32768) -> Tensor:
    """V' (T, d') of images ``feats`` (T, d) attached to the indexed gallery (the inductive form
    of the gallery protocol, :func:`~hrnet_pyg.gallery.attach_gathered`): each image's k nearest
    indexed images by Euclidean distance of F (Eq. 1; exact, blocks of the memory-mapped F)
    feed it through the IR layer's bipartite input; only those k rows of F are read and
    projected. The stored images are not updated."""
    part = index.relational
    if part is None:
        raise GalleryIndexError(f"index {index.path} has no relational features")
    if int(part["k"]) > len(index):
        raise GalleryIndexError(f"index {index.path} holds {len(index)} images, fewer than the gallery protocol's "
                                f"k={part['k']} neighbours")
    inner = unwrap_model(model)
    dev = resolve_device(device) if device is not None else feats.device
    terms = torch.from_numpy(index.whole("graph"))  # (G, 2): source scores, ||F||^2
    scores = terms[:, 0].to(dev) if part["normalize"] == "all" else None  # Eq. 2's all-node denominator
    out = []
    for t0 in range(0, feats.size(0), per_pass):
        x = feats[t0 : t0 + per_pass].float().to(dev)
        blocks = ((o, torch.from_numpy(np.ascontiguousarray(r)), terms[o : o + len(r), 1])
                  for o, r in index.blocks("feats", block))
        table = knn_table_blocks(x, int(part["k"]), blocks)  # (T, k) indexed rows
        nbr = torch.from_numpy(index.rows(table.cpu().numpy(), "feats")).to(dev)  # (T, k, d): those rows only
        out.append(gallery.attach_gathered(inner, x, nbr, scores, normalize=part["normalize"]))
    return torch.cat(out) if out else feats.new_zeros(0, int(part["dim"]))


def graph_terms(model: HRNet, feats: Tensor) -> np.ndarray:
    """(N, 2) float32 what attaching to each image reads: its source score of Eq. 2 (the layer's own
    projection) and ``||F||^2`` (:func:`~hrnet_pyg.neighbours.squared_norms`)."""
    layer = gallery.ir_layer(unwrap_model(model))
    x = feats.float()
    return torch.stack([layer.project(x).dots[:, 1], squared_norms(x)], dim=1).cpu().numpy()


def relational_unavailable(model: HRNet, rerank_config: RerankConfig | None = None) -> str | None:
    """Why a gallery index cannot hold or serve the relational part for ``model`` under
    ``rerank_config`` (``None``: the model's), in one line; ``None`` when it can."""
    inner = unwrap_model(model)
    reason = gallery.unavailable(inner)
    if reason is not None:
        return reason
    protocol = rerank_config or getattr(inner, "rerank_config", None) or RerankConfig()
    if protocol.gallery_rounds != 1:
        return (f"rerank.gallery_rounds={protocol.gallery_rounds}: a gallery index serves the gallery protocol with "
                "one round of the IR layer; set gallery_rounds=1, or search the gallery's features "
                "(--gallery FEATS.npz)")
    return None


def relational_options(model: HRNet, rerank_config: RerankConfig | None = None) -> dict[str, Any]:
    """The gallery protocol's options that change the stored V' (``k``, ``normalize``, ``rounds``,
    ``reuse_graph``), with the defaults resolved (the model's ``k`` and Eq. 2 normalisation)."""
    inner = unwrap_model(model)
    protocol = rerank_config or getattr(inner, "rerank_config", None) or RerankConfig()
    opts = gallery.state_options_of(protocol)
    opts["k"] = int(inner.config.k if opts["k"] is None else opts["k"])
    opts["normalize"] = gallery.ir_layer(inner, opts["normalize"]).normalize
    opts["reuse_graph"] = bool(opts["reuse_graph"]) and opts["rounds"] > 1  # no second round: nothing to reuse
    return opts


def relational_fingerprint(model: HRNet) -> str:
    """A short hash of the weights that determine V' and BN(V') (the IR layer and its BNNeck)."""
    inner = unwrap_model(model)
    h = hashlib.sha1()
    for prefix, module in (("ir.", inner.ir), ("ir_neck.", inner.ir_neck)):
        if module is None:
            continue
        state = module.state_dict()
        for key in sorted(state):
            h.update((prefix + key).encode())
            h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    h.update(str(bool(inner.config.ir_self_in_knn)).encode())
    return h.hexdigest()[:16]


def least_images(model: HRNet, k: int) -> int:
    """The gallery's kNN graph needs more images than this (k others per image, or k with itself)."""
    return k - 1 if model.config.ir_self_in_knn else k


def describe(options: dict[str, Any]) -> str:
    return ", ".join(f"{key}={options[key]!r}" for key in ("k", "normalize", "rounds", "reuse_graph") if key in options)


__all__ = [
    "attach",
    "build_part",
    "check_part",
    "describe",
    "graph_terms",
    "least_images",
    "relational_fingerprint",
    "relational_options",
    "relational_unavailable",
]
