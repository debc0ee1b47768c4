"""Gallery-graph relational re-ranking: HRNet's IR layer over the kNN graph of a whole gallery.

Beyond the paper. Sec. 4.2 re-ranks each query inside its own graph of 121 nodes (the query and its
cosine top-120; :mod:`hrnet_pyg.rerank`). Here the trained individual relationship layer (Eq. 2-3)
runs once over the kNN graph (Eq. 1) of the whole query + gallery set, built as training builds it
(Euclidean kNN of the CNN features F, the layer's input; ``k`` and ``ir_self_in_knn`` of the
config), and the gallery is ranked by the cosine of BN(V'), the IR module's BNNeck features (the
``ir_bn_cosine`` similarity of the paper's protocol). Like k-reciprocal re-ranking, it reads the
neighbourhoods of every image, not only those of a query's shortlist.

* :func:`gallery_rerank` -- the transductive protocol, queries and gallery in one graph, with its
  options: the test graph's ``k``; whether queries feed other nodes (``neighbours``); the layer's
  attention normalisation; one or two rounds of the layer; a re-score of each query's shortlist by
  the PR module with V' in the inter-graph propagation; k-reciprocal re-ranking of BN(V').
* :func:`relational_features` -- the pass itself: V' of every image.
* :func:`gallery_state`, :func:`attach_queries`, :func:`search_state` -- the inductive form for a
  gallery that grows: the gallery's V' from the gallery-only graph, computed once and kept; each
  query attaches to its k gallery neighbours through the layer's bipartite input, so only the
  query's own node is updated (equal to the transductive form with ``neighbours="gallery"``).
* :func:`source_scores`, :func:`attach_gathered` -- the same attachment from the rows of the
  query's k neighbours alone and the gallery's source scores (what a gallery index stores): no
  gallery node is projected at query time but the k neighbours.

Nothing of size (Q+G)^2 exists at any point: the kNN graph comes from
:func:`~hrnet_pyg.neighbours.knn_table` (square blocks, running top-k), the layer runs on blocks of
targets, and the ranking on blocks of queries. With ``output="topk"`` (the default) no (Q, G)
matrix exists either; ``output="distances"`` returns the (Q, G) float32 matrix that
:func:`~hrnet_pyg.evaluation.evaluate_rank` reads (exact mAP needs every gallery item's rank; 3.8
GB at MSMT17's 11,659 x 82,161).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as Fn
from torch import Tensor

from hrnet_pyg.kreciprocal import k_reciprocal_rerank_features
from hrnet_pyg.neighbours import DEFAULT_BLOCK, knn_table, table_edges
from hrnet_pyg.nn import IndividualProjection, IndividualRelationConv, PairProjection, gather_rows
from hrnet_pyg.nn.individual import NORMALIZE, all_node_logsumexp
from hrnet_pyg.protocol import RerankConfig
from hrnet_pyg.runtime import progress as progress_of
from hrnet_pyg.runtime import resolve_device
from hrnet_pyg.scoring import RERANK_SCORES, fuse_scores

if TYPE_CHECKING:  # pragma: no cover
    from hrnet_pyg.model import HRNetModule

NEIGHBOURS = RerankConfig.choices("gallery_neighbours")
OUTPUTS = ("topk", "distances")
# Scalars of one block of the layer's messages (targets x k x d'): 4M floats = 16 MiB in fp32, below
# glibc's mmap threshold, so the blocks' message tensors reuse freed memory instead of page-faulting.
_MESSAGE_BUDGET = 1 << 22
# Entries of one (queries, G) block of similarities in the ranking (16 MiB in fp32: below glibc's
# mmap threshold, so the blocks reuse freed memory instead of page-faulting).
_RANK_BUDGET = 1 << 22
# Gallery columns per product of the ranking on the CPU: a BLAS product whose output rows span a
# whole large gallery runs well below the speed of square-ish tiles (1.5x slower at Market size),
# and each entry is the same dot product either way.
_RANK_TILE = DEFAULT_BLOCK
# Bytes of one (queries, 1 + shortlist, d) tensor of a PR pass (as relational_rerank on the CPU).
_PASS_TENSOR_BYTES = 24 << 20


@dataclass
class GalleryRanking:
    """The top of each query's ranked gallery (``output="topk"``): row ``q`` lists gallery rows
    best first with the distances that ``output="distances"`` gives them (lower = better)."""

    index: Tensor  # (Q, K) int64 gallery rows, best first
    dist: Tensor  # (Q, K) float32 their distances


@dataclass
class GalleryState:
    """What the inductive form keeps of a gallery (:func:`gallery_state`), one entry per round of
    the layer: the round's input of the gallery nodes (F, then V' of the round before) and the
    layer's projection of it (:meth:`~hrnet_pyg.nn.IndividualRelationConv.project`: X W_s and Eq. 2's
    dot products), which every attached query reads; the gallery's final V' and its normalised
    BN(V') (the retrieval features). An index stores these at build time."""

    inputs: list[Tensor]  # per round (G, d)
    proj: list[IndividualProjection]  # per round: lin (G, d'), dots (G, 2)
    feats: Tensor  # (G, d') V' of the gallery after the last round
    retrieval: Tensor  # (G, d') BN(V') / ||BN(V')||
    k: int  # the options the state was built with; attach_queries uses the same
    normalize: str
    rounds: int
    reuse_graph: bool


# ------------------------------------------------------------------------------------ the protocol
def options_of(rerank_config: RerankConfig) -> dict:
    """The keyword arguments of :func:`gallery_rerank` that a test protocol names (its ``gallery_*``
    fields; its ``pr_score``, ``norm`` and ``pr_weight`` fuse the PR re-score)."""
    return dict(**state_options_of(rerank_config), neighbours=rerank_config.gallery_neighbours,
                kreciprocal=rerank_config.protocol == "gallery+kreciprocal",
                pr_top_k=rerank_config.gallery_pr_shortlist, pr_score=rerank_config.pr_score,
                pr_norm=rerank_config.norm, pr_weight=rerank_config.pr_weight)


def state_options_of(rerank_config: RerankConfig) -> dict:
    """The options of :func:`gallery_state` that a test protocol names: those that change the
    gallery's V' (``k``, ``normalize``, ``rounds``, ``reuse_graph``)."""
    return dict(k=rerank_config.gallery_k, normalize=rerank_config.gallery_normalize,
                rounds=rerank_config.gallery_rounds, reuse_graph=rerank_config.gallery_reuse_graph)


def unavailable(model: HRNetModule) -> str | None:
    """Why ``model`` cannot run the gallery-graph protocol (one line), or ``None`` when it can."""
    if model.ir is None:
        return ("the gallery-graph protocol needs the IR module (a Table 1 row with IR: CNN+IR, CNN+IR+CNC or "
                "HRNet); this model has none")
    if model.config.ir_graph != "knn":
        return ("the gallery-graph protocol builds a kNN graph (Eq. 1); this model's IR layer was trained on the "
                "fully-connected graph (ir_graph='full', Table 1's IR*)")
    return None


# ------------------------------------------------------------------------------------ the pass
def ir_layer(model: HRNetModule, normalize: str | None = None) -> IndividualRelationConv:
    """The model's IR layer, with Eq. 2's normalisation ``normalize`` instead of its own when given
    (a shallow copy sharing the weights); a clear error for a model without a usable one."""
    reason = unavailable(model)
    if reason is not None:
        raise ValueError(reason)
    ir = model.ir
    assert ir is not None
    if normalize is None or normalize == ir.normalize:
        return ir
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE} or None (the layer's own), got {normalize!r}")
    layer = copy.copy(ir)  # own __dict__, shared parameters
    layer.normalize = normalize
    return layer


def _rows(p: IndividualProjection, start: int, stop: int | None = None) -> IndividualProjection:
    return IndividualProjection(p.lin[start:stop], p.dots[start:stop])


def layer_pass(layer: IndividualRelationConv, x_src: Tensor, x_dst: Tensor, table: Tensor,
               proj_src: IndividualProjection, proj_dst: IndividualProjection) -> Tensor:
    """V' of the targets ``x_dst`` (T, d) whose neighbours are rows ``table`` (T, k) of ``x_src``:
    the layer's own bipartite forward (Eq. 2-3), block of targets by block of targets (the messages
    of one block stay within 16 MiB), from the projections computed once per node. Eq. 2's
    all-node denominator (``normalize="all"``) runs over every source node."""
    num, k = table.shape
    step = max(1, _MESSAGE_BUDGET // max(1, k * layer.out_channels))
    out = []
    for t0 in range(0, num, step):
        t1 = min(num, t0 + step)
        edge_index = table_edges(table[t0:t1])
        out.append(layer((x_src, x_dst[t0:t1]), edge_index, proj=(proj_src, _rows(proj_dst, t0, t1))))
    return torch.cat(out) if out else x_dst.new_zeros(0, layer.out_channels)


def _rounds(layer: IndividualRelationConv, feats: Tensor, k: int, loop: bool, sources_from: int, rounds: int,
            reuse_graph: bool, block_size: int, progress: bool, keep: bool = False):
    """``rounds`` passes of the layer over the kNN graph of its input, the sources being rows
    ``sources_from:``; returns (V', the inputs, their projections) (the last two only if ``keep``)."""
    x, inputs, projs = feats, [], []
    table = None
    for _ in range(rounds):
        if table is None or not reuse_graph:  # Eq. 1 on the layer's input, as in training
            table = knn_table(x, k, sources_from=sources_from, loop=loop, block_size=block_size,
                              progress=progress) - sources_from
        proj = layer.project(x)
        if keep:
            inputs.append(x)
            projs.append(proj)
        x = layer_pass(layer, x[sources_from:], x, table, _rows(proj, sources_from), proj)
    return x, inputs, projs


def _check_options(k: int, rounds: int, neighbours: str | None = None) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (neighbours per node of the test graph) must be a positive integer, got {k!r}")
    if rounds not in (1, 2):
        raise ValueError(f"rounds must be 1 or 2 (applications of the IR layer), got {rounds!r}")
    if neighbours is not None and neighbours not in NEIGHBOURS:
        raise ValueError(f"neighbours must be one of {NEIGHBOURS}, got {neighbours!r}")


@torch.no_grad()
def relational_features(
    model: HRNetModule,
    feats: Tensor,
    *,
    k: int | None = None,
    sources_from: int = 0,
    normalize: str | None = None,
    rounds: int = 1,
    reuse_graph: bool = False,
    block_size: int = DEFAULT_BLOCK,
    progress: bool = False,
) -> Tensor:
    r"""V' of every image: the model's IR layer over the kNN graph (Eq. 1) of ``feats``.

    .. math::
        \mathbf{V}' = \sigma\big((\mathbf{A} \circ \mathbf{C} + \mathbf{I})\,\mathbf{F}\,\mathbf{W}_s\big),
        \qquad c_{i,j} = 1 \iff j \text{ is among the } k \text{ nearest sources of } i .

    Args:
        model: a trained :class:`~hrnet_pyg.model.HRNetModule` with the IR module (in eval mode).
        feats: (N, d) CNN features F (queries first, then the gallery, for the protocols here).
        k: neighbours per node. (default: the config's ``k``, the training graph's; the test
            protocol ``rerank.protocol=gallery`` passes ``RerankConfig.gallery_k``, 5 measured)
        sources_from: only rows ``sources_from:`` are neighbours (of every node); the all-node
            denominator of ``normalize="all"`` also runs over them only. (default: 0, all rows)
        normalize: Eq. 2's normalisation, ``"all"`` or ``"neighbors"``. (default: the layer's own)
        rounds: 1, or 2: the same layer again on V', over the kNN graph of V'.
        reuse_graph: with ``rounds=2``, the second round reuses the first round's graph instead of
            the kNN graph of V'. (default: :obj:`False`)
        block_size: rows and columns per block of the kNN pass (:func:`~hrnet_pyg.neighbours.knn_table`).
        progress: progress of the kNN pass.

    Returns:
        (N, d') V'; with ``rounds=2`` the second round's.
    """
    k = model.config.k if k is None else k
    _check_options(k, rounds)
    layer = ir_layer(model, normalize)
    x = feats.detach().float()
    return _rounds(layer, x, k, model.config.ir_self_in_knn, sources_from, rounds, reuse_graph, block_size,
                   progress)[0]


def retrieval_of(model: HRNetModule, v: Tensor) -> Tensor:
    """Unit rows of BN(V') (the IR module's BNNeck, in eval mode), or of V' for a head without one."""
    return Fn.normalize(model.ir_neck.bn(v) if model.ir_neck is not None else v, dim=1)


# ------------------------------------------------------------------------------------ ranking
def _rank_blocks(query: Tensor, gallery: Tensor, depth: int, out: Tensor | None, progress: bool):
    """Per block of queries: ``(s, e, top_sims (B, depth), top_index (B, depth), cos (B, G))`` of
    unit-row features (cosine similarity), best first. With ``out`` (Q, G) on the features' device
    the block is written into its rows (no copy); otherwise ``cos`` is a buffer that the next block
    overwrites."""
    num_q, num_g = query.size(0), gallery.size(0)
    step = max(1, _RANK_BUDGET // max(1, num_g))
    in_place = out is not None and out.device == query.device and out.dtype == query.dtype
    width = min(num_g, _RANK_TILE) if query.device.type == "cpu" else num_g  # tiles of gallery columns
    tile = query.new_empty(min(step, num_q) * width) if width < num_g else None
    block = None if in_place else query.new_empty(min(step, num_q) * num_g)
    for s in progress_of(range(0, num_q, step), "gallery ranking", show=progress, unit="blocks"):
        e = min(num_q, s + step)
        if in_place and out is not None:
            cos = out[s:e]  # (B, G), the output's rows
        else:
            assert block is not None
            cos = block[:(e - s) * num_g].view(e - s, num_g)
        if tile is None:
            torch.mm(query[s:e], gallery.T, out=cos)
        else:
            for c0 in range(0, num_g, width):
                c1 = min(num_g, c0 + width)
                part = tile[:(e - s) * (c1 - c0)].view(e - s, c1 - c0)
                cos[:, c0:c1] = torch.mm(query[s:e], gallery[c0:c1].T, out=part)
        if depth == 0:  # the dense matrix alone: nothing to list
            yield s, e, cos.new_zeros(e - s, 0), torch.zeros(e - s, 0, dtype=torch.long), cos
            continue
        top_s, top_i = cos.topk(min(depth, num_g), dim=1)
        yield s, e, top_s, top_i, cos


class _PairScorer:
    """The PR module on each query's shortlist (Eq. 6-9, 13) with image nodes V' computed once per
    image: the pair terms of F and the IGP terms of V' projected once, gathered per query graph."""

    def __init__(self, model: HRNetModule, feats: Tensor, v: Tensor, num_q: int, shortlist: int) -> None:
        pr = model.pr
        if pr is None or model.verifier is None:
            raise ValueError("pr_top_k > 0 re-scores with the PR module; this model has none")
        base = pr.project(feats, nodes=False)
        self.proj = PairProjection(base.lin, base.dots, pr.project_nodes(v) if pr.igp else None)
        self.model, self.feats, self.num_q = model, feats, num_q
        self.per_pass = max(1, _PASS_TENSOR_BYTES // ((shortlist + 1) * feats.size(1) * 4))

    def __call__(self, s: int, top: Tensor) -> dict[str, Tensor]:
        """The PR terms of queries ``s, s+1, ...`` against their shortlists ``top`` (B, K) (gallery rows)."""
        query = torch.zeros(1, dtype=torch.long, device=top.device)
        parts: dict[str, list[Tensor]] = {}
        for b0 in range(0, top.size(0), self.per_pass):
            b1 = min(top.size(0), b0 + self.per_pass)
            q_ids = torch.arange(s + b0, s + b1, device=top.device).unsqueeze(1)
            index = torch.cat([q_ids, top[b0:b1] + self.num_q], dim=1)  # (b, 1 + K): the query graphs
            terms = self.model.head.pair_terms(gather_rows(self.feats, index), self.proj.gather(index, query))
            for name, value in terms.items():
                parts.setdefault(name, []).append(value)
        return {name: torch.cat(v) for name, v in parts.items()}


def _ranked(retrieval: Tensor, num_q: int, output: str, top_k: int, scorer: _PairScorer | None,
            pr_top_k: int, fusion: dict, progress: bool) -> GalleryRanking | Tensor:
    """Cosine ranking of the queries' BN(V') against the gallery's, the first ``pr_top_k`` of each
    re-scored by ``scorer`` (fused as ``fuse_scores(**fusion)``) and put first, encoded as
    :func:`~hrnet_pyg.rerank.relational_rerank` encodes them: ``min - score - 1`` (< 0) in the
    shortlist, ``1 - cos`` (>= 0) after it."""
    q, g = retrieval[:num_q], retrieval[num_q:]
    dense = output == "distances"
    depth = pr_top_k if dense else max(top_k, pr_top_k)
    dist = torch.empty(num_q, g.size(0), dtype=torch.float32) if dense else None
    rows_i, rows_d = [], []
    for s, e, top_s, top_i, cos in _rank_blocks(q, g, depth, dist, progress):
        d_top = 1.0 - top_s
        if scorer is not None:
            short = top_i[:, :pr_top_k]
            parts = scorer(s, short)
            parts[fusion["ir"]] = top_s[:, :pr_top_k]
            score = fuse_scores(parts, **fusion)
            d_short = score.amin(dim=1, keepdim=True) - score - 1.0
            if dense:
                cos.neg_().add_(1.0).scatter_(1, short, d_short)
            else:
                d_short, order = d_short.sort(dim=1, stable=True)
                top_i = torch.cat([short.gather(1, order), top_i[:, pr_top_k:]], dim=1)
                d_top = torch.cat([d_short, d_top[:, pr_top_k:]], dim=1)
        elif dense:
            cos.neg_().add_(1.0)
        if dist is not None:
            if cos.data_ptr() != dist[s:e].data_ptr():  # computed elsewhere (another device, dtype)
                dist[s:e] = cos.float().cpu()
        else:
            rows_i.append(top_i[:, :top_k].cpu())
            rows_d.append(d_top[:, :top_k].float().cpu())
    if dist is not None:
        return dist
    return GalleryRanking(torch.cat(rows_i), torch.cat(rows_d))


def _topk_of(dist: Tensor, top_k: int) -> GalleryRanking:
    d, i = dist.topk(min(top_k, dist.size(1)), dim=1, largest=False, sorted=True)
    return GalleryRanking(i, d)


def _check_features(query_feats: Tensor, gallery_feats: Tensor, feat_dim: int) -> None:
    for name, t in (("query_feats", query_feats), ("gallery_feats", gallery_feats)):
        if not isinstance(t, Tensor) or t.dim() != 2 or t.size(1) != feat_dim:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must be (N, {feat_dim}) CNN features F, got {shape}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} holds NaN or infinite values")
    if gallery_feats.size(0) == 0:
        raise ValueError("gallery_feats is empty: there is nothing to rank")


def _check_ranking(output: str, top_k: int, pr_top_k: int, kreciprocal: bool, fusion: dict) -> None:
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    if isinstance(pr_top_k, bool) or not isinstance(pr_top_k, int) or pr_top_k < 0:
        raise ValueError(f"pr_top_k must be an integer >= 0 (0: no PR re-score), got {pr_top_k!r}")
    if pr_top_k and kreciprocal:
        raise ValueError("pr_top_k and kreciprocal are two re-rankings of BN(V'); choose one of them")
    if fusion["pr"] not in RERANK_SCORES["pr"] or fusion["norm"] not in RERANK_SCORES["norm"]:
        raise ValueError(f"pr_score must be one of {RERANK_SCORES['pr']} and pr_norm one of "
                         f"{RERANK_SCORES['norm']}, got {fusion['pr']!r} and {fusion['norm']!r}")


@torch.no_grad()
def gallery_rerank(
    model: HRNetModule,
    query_feats: Tensor,
    gallery_feats: Tensor,
    *,
    k: int | None = None,
    neighbours: str = "all",
    normalize: str | None = None,
    rounds: int = 1,
    reuse_graph: bool = False,
    pr_top_k: int = 0,
    pr_score: str = "pr_prob",
    pr_norm: str = "zscore",
    pr_weight: float = 0.25,
    kreciprocal: bool = False,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    output: str = "topk",
    top_k: int = 100,
    block_size: int = DEFAULT_BLOCK,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> GalleryRanking | Tensor:
    """Gallery-graph relational re-ranking (transductive): the IR layer once over the kNN graph of
    all queries and gallery images, the gallery ranked by the cosine of BN(V').

    Args:
        model: a trained :class:`~hrnet_pyg.model.HRNetModule` with the IR module (CNN+IR,
            CNN+IR+CNC or HRNet).
        query_feats: (Q, d) CNN features F of the queries (``HRNet.extract``).
        gallery_feats: (G, d) CNN features F of the gallery.
        k: neighbours per node of the test graph. (default: the config's ``k``, the training graph's;
            ``rerank.protocol=gallery`` passes ``RerankConfig.gallery_k``, 5 measured in ``docs/efficacy.md``)
        neighbours: ``"all"``: each node's neighbours among all Q + G images (the setting of
            k-reciprocal re-ranking); ``"gallery"``: among the gallery images only, so no query
            feeds another node and each query's V' depends on the gallery alone (what
            :func:`attach_queries` computes). (default: ``"all"``)
        normalize: Eq. 2's normalisation ``"all"`` or ``"neighbors"``. (default: the layer's own,
            the one it was trained with)
        rounds: 1, or 2: the same layer again on V' (over the kNN graph of V'). (default: 1)
        reuse_graph: with ``rounds=2``, reuse the first round's graph. (default: :obj:`False`)
        pr_top_k: re-score each query's top ``pr_top_k`` by the PR module, its inter-graph
            propagation reading the whole-set V', fused with the BN(V') cosine as
            :func:`~hrnet_pyg.scoring.fuse_scores` fuses the paper protocol's terms
            (``pr_score``, ``pr_norm``, ``pr_weight``: the measured defaults of that protocol).
            0: no re-score. (default: 0)
        kreciprocal: rank by k-reciprocal re-ranking (``k1``, ``k2``, ``lambda_value``) of BN(V')
            instead of its cosine (Euclidean, as the study's k-reciprocal of BN(F)). Its result is
            a dense (Q, G) matrix internally, whatever ``output``. (default: :obj:`False`)
        output: ``"topk"``: a :class:`GalleryRanking` of each query's best ``top_k``, no (Q, G)
            matrix; ``"distances"``: the (Q, G) float32 matrix (for
            :func:`~hrnet_pyg.evaluation.evaluate_rank`). (default: ``"topk"``)
        top_k: length of each ranking with ``output="topk"``. (default: 100)
        block_size: rows and columns per block of the kNN pass.
        device: where to compute (default: the features'); the result is on the CPU.
        progress: progress of the long steps.

    Returns:
        :class:`GalleryRanking` or the (Q, G) distances (lower = better): ``1 - cos`` of BN(V');
        with ``pr_top_k`` the shortlist first (``min - score - 1``, as
        :func:`~hrnet_pyg.rerank.relational_rerank`); with ``kreciprocal`` its distances.
    """
    k = model.config.k if k is None else k
    _check_options(k, rounds, neighbours)
    fusion = dict(ir="ir_bn_cosine" if model.ir_neck is not None else "ir_cosine", pr=pr_score,
                  norm=pr_norm, pr_weight=pr_weight)
    _check_ranking(output, top_k, pr_top_k, kreciprocal, fusion)
    _check_features(query_feats, gallery_feats, model.feat_dim)
    layer = ir_layer(model, normalize)
    dev = resolve_device(device) if device is not None else query_feats.device
    model = model.to(dev).eval()
    num_q = query_feats.size(0)
    feats = torch.cat([query_feats, gallery_feats]).detach().float().to(dev)
    v = _rounds(layer, feats, k, model.config.ir_self_in_knn, 0 if neighbours == "all" else num_q, rounds,
                reuse_graph, block_size, progress)[0]
    if kreciprocal:
        bn = model.ir_neck.bn(v) if model.ir_neck is not None else v
        dist = k_reciprocal_rerank_features(bn[:num_q], bn[num_q:], k1=k1, k2=k2, lambda_value=lambda_value,
                                            progress=progress).cpu()
        return dist if output == "distances" else _topk_of(dist, top_k)
    pr_top_k = min(pr_top_k, gallery_feats.size(0))
    scorer = _PairScorer(model, feats, v, num_q, pr_top_k) if pr_top_k else None
    return _ranked(retrieval_of(model, v), num_q, output, top_k, scorer, pr_top_k, fusion, progress)


# ------------------------------------------------------------------------------------ inductive form
@torch.no_grad()
def gallery_state(
    model: HRNetModule,
    gallery_feats: Tensor,
    *,
    k: int | None = None,
    normalize: str | None = None,
    rounds: int = 1,
    reuse_graph: bool = False,
    block_size: int = DEFAULT_BLOCK,
    progress: bool = False,
) -> GalleryState:
    """What the inductive form keeps of a gallery: its V' over the gallery-only kNN graph and the
    per-round inputs and projections that queries attach to (:class:`GalleryState`; the options as
    in :func:`gallery_rerank`). Computed once, e.g. when an index is built."""
    k = model.config.k if k is None else k
    _check_options(k, rounds)
    layer = ir_layer(model, normalize)
    x = gallery_feats.detach().float()
    v, inputs, projs = _rounds(layer, x, k, model.config.ir_self_in_knn, 0, rounds, reuse_graph, block_size,
                               progress, keep=True)
    return GalleryState(inputs=inputs, proj=projs, feats=v, retrieval=retrieval_of(model, v), k=k,
                        normalize=layer.normalize, rounds=rounds, reuse_graph=reuse_graph)


@torch.no_grad()
def attach_queries(model: HRNetModule, state: GalleryState, query_feats: Tensor,
                   block_size: int = DEFAULT_BLOCK) -> Tensor:
    """V' of new queries (Q, d) attached to a kept gallery: each query's k nearest gallery nodes
    feed it through the layer's bipartite input ``(x_src, x_dst) = (gallery, queries)``; the
    gallery's nodes are not updated. Equals :func:`relational_features` of the queries stacked on
    the gallery with ``sources_from = Q`` (the transductive form with ``neighbours="gallery"``)."""
    layer = ir_layer(model, state.normalize)
    x = query_feats.detach().float().to(state.feats.device)
    table = None
    for r in range(state.rounds):
        if table is None or not state.reuse_graph:
            table = knn_table(x, state.k, state.inputs[r], block_size=block_size)
        x = layer_pass(layer, state.inputs[r], x, table, state.proj[r], layer.project(x))
    return x


def source_scores(state: GalleryState) -> Tensor:
    """(G,) the source half of Eq. 2's logit, ``F H_s[d:]``, of every gallery node in the first
    round: what the all-node denominator (``normalize="all"``) of an attached query sums over. An
    index stores them beside the retrieval features (:func:`attach_gathered` reads them)."""
    return state.proj[0].dots[:, 1]


@torch.no_grad()
def attach_gathered(model: HRNetModule, query_feats: Tensor, neighbour_feats: Tensor, scores: Tensor | None,
                    *, normalize: str | None = None) -> Tensor:
    """V' of queries (T, d) attached to a stored gallery from the rows of F of their neighbours
    alone, gathered as (T, k, d): one round of :func:`attach_queries` without the gallery in
    memory. Only the gathered rows are projected (the layer's own
    :meth:`~hrnet_pyg.nn.IndividualRelationConv.project`); Eq. 2's all-node denominator
    (``normalize="all"``) runs over ``scores`` (G,), every gallery node's
    :func:`source_scores`, through :func:`~hrnet_pyg.nn.individual.all_node_logsumexp`.

    Equals :func:`attach_queries` with ``rounds=1`` when ``neighbour_feats[i]`` are the rows of
    query ``i``'s k nearest gallery nodes (in any order) and ``scores`` the gallery's."""
    layer = ir_layer(model, normalize)
    if neighbour_feats.dim() != 3 or neighbour_feats.shape[0] != query_feats.size(0) \
            or neighbour_feats.shape[2] != query_feats.size(1):
        raise ValueError(f"neighbour_feats must be (T, k, d) = ({query_feats.size(0)}, k, {query_feats.size(1)}), "
                         f"got {tuple(neighbour_feats.shape)}")
    if layer.normalize == "all" and scores is None:
        raise ValueError("normalize='all' needs scores: every gallery node's source score (source_scores)")
    num, k, d = neighbour_feats.shape
    x_dst = query_feats.detach().float()
    step = max(1, _MESSAGE_BUDGET // max(1, k * max(layer.out_channels, d)))
    out = []
    for t0 in range(0, num, step):
        t1 = min(num, t0 + step)
        x_src = neighbour_feats[t0:t1].reshape(-1, d).to(x_dst)
        proj_dst = layer.project(x_dst[t0:t1])
        lse = None
        if layer.normalize == "all":
            assert scores is not None
            lse = all_node_logsumexp(proj_dst.dots[:, 0], scores.to(x_dst), negative_slope=layer.negative_slope)
        table = torch.arange(x_src.size(0), device=x_dst.device).view(t1 - t0, k)  # target i: rows i k ... i k + k - 1
        out.append(layer((x_src, x_dst[t0:t1]), table_edges(table), proj=(layer.project(x_src), proj_dst),
                         log_denominator=lse))
    return torch.cat(out) if out else x_dst.new_zeros(0, layer.out_channels)


@torch.no_grad()
def search_state(model: HRNetModule, state: GalleryState, query_feats: Tensor, top_k: int = 100) -> GalleryRanking:
    """The inductive protocol end to end: queries attached (:func:`attach_queries`), the gallery
    ranked by the cosine of BN(V'), each query's best ``top_k``."""
    q = retrieval_of(model, attach_queries(model, state, query_feats))
    ranking = _ranked(torch.cat([q, state.retrieval]), q.size(0), "topk", top_k, None, 0, {}, progress=False)
    assert isinstance(ranking, GalleryRanking)
    return ranking


__all__ = [
    "NEIGHBOURS",
    "OUTPUTS",
    "GalleryRanking",
    "GalleryState",
    "attach_gathered",
    "attach_queries",
    "gallery_rerank",
    "gallery_state",
    "ir_layer",
    "layer_pass",
    "options_of",
    "relational_features",
    "retrieval_of",
    "search_state",
    "source_scores",
    "state_options_of",
    "unavailable",
]
