"""Figure 5 of the paper (Sec. 4.5) and ranked-list image grids.

* :func:`attention_matrices`: for one P x K batch of CNN features F (identity-major order, as in
  Sec. 4.5: six images of y_1, then six of y_2, ...), the dense matrix A∘C of Eq. 3 (the IR
  module's attention a_ij on the edges of the kNN graph C, zero elsewhere) and
  :math:`\\sum_n G^n` with :math:`G^n = [g^n_{ij}]` of Eq. 6 (the PR module's attention inside
  the complete graph of image n), computed by the model's own layers.
* :func:`plot_attention_heatmaps`: the two-panel heat map of Figure 5 (a) and (b), (b) as the
  deviation from uniform attention (:func:`uniform_deviation`), its magnitude in the title.
* :func:`ranked_list_grid` (:mod:`hrnet_pyg.ranked_grid`, re-exported): query + top-k gallery
  images, green border = same identity, red = different (drawn with PIL only).
* :func:`visualize_batch`: both figures for a trained model and a dataset (``hrnet-pyg visualize``).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from hrnet_pyg.data import ImageDataset, build_transforms
from hrnet_pyg.distances import cosine_distance
from hrnet_pyg.protocol import RerankConfig
from hrnet_pyg.ranked_grid import (
    BACKGROUND_COLOR,
    MATCH_COLOR,
    MISMATCH_COLOR,
    QUERY_COLOR,
    RankedGrid,
    ranked_list_grid,
)
from hrnet_pyg.rerank import relational_rerank
from hrnet_pyg.runtime import resolve_device, unwrap_model
from hrnet_pyg.scoring import protocol_of

if TYPE_CHECKING:  # pragma: no cover
    from hrnet_pyg.model import HRNetModule

PathLike = str | os.PathLike[str]


# ---------------------------------------------------------------------------- attention matrices
class _EvalMode:
    """Run a module in eval mode and give it back in the mode it had (no BN/dropout side effects)."""

    def __init__(self, module: nn.Module) -> None:
        self.module, self.was_training = module, module.training

    def __enter__(self) -> nn.Module:
        self.module.eval()
        return self.module

    def __exit__(self, *exc: Any) -> None:
        self.module.train(self.was_training)


def _check_batch(feats: Tensor, pids: Tensor, dim: int) -> None:
    if not isinstance(feats, Tensor) or feats.dim() != 2:
        shape = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
        raise ValueError(f"attention_matrices: feats must be CNN features of shape (N, d), got {shape}")
    if feats.size(1) != dim:
        raise ValueError(
            f"attention_matrices: feats have d = {feats.size(1)} but the model's graph modules take "
            f"d = {dim}; pass the CNN features F (HRNet.extract_features), not images"
        )
    if not isinstance(pids, Tensor) or pids.dim() != 1 or pids.numel() != feats.size(0):
        shape = tuple(pids.shape) if isinstance(pids, Tensor) else type(pids).__name__
        raise ValueError(f"attention_matrices: pids must be a (N,) = ({feats.size(0)},) tensor, got {shape}")


def edge_attention_to_dense(edge_index: Tensor, alpha: Tensor, num_nodes: int) -> Tensor:
    """Dense (N, N) matrix with ``M[i, j] = a_ij`` for each edge j -> i, zero off the graph.

    Rows are centres (targets, ``edge_index[1]``), columns neighbours (sources, ``edge_index[0]``),
    so row i holds the weights node i aggregates with (Eq. 3: row i of A∘C).
    """
    a = alpha.detach().float()
    if a.dim() == 2:  # (E, heads): one head in this library; average if a user passes several
        a = a.mean(dim=1)
    if a.dim() != 1 or a.numel() != edge_index.size(1):
        raise ValueError(
            f"edge attention must have one weight per edge ({edge_index.size(1)}), got shape {tuple(alpha.shape)}"
        )
    from torch_geometric.utils import to_dense_adj

    # to_dense_adj sums repeated edges, as propagate adds a repeated edge's messages; the flipped
    # edge_index puts targets on the rows.
    return to_dense_adj(edge_index.flip(0), edge_attr=a, max_num_nodes=num_nodes)[0]


@torch.no_grad()
def attention_matrices(model: HRNetModule, feats: Tensor, pids: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """A∘C (Eq. 3) and :math:`\\sum_n G^n` (Eq. 6) of one batch, as in Figure 5.

    The graphs are built exactly as in :meth:`HRNetModule.forward` (kNN graph C of Eq. 1 or the
    complete graph of the IR* row; PR pair graphs complete or masked to ``pr_edges``; IGP inputs
    V' when IGP is on), with the model in eval mode so no BatchNorm statistics change.

    Args:
        model: an :class:`~hrnet_pyg.model.HRNetModule`.
        feats: (N, d) CNN features F of one P x K batch, ordered identity-major (for readable
            block-diagonal heat maps; the function itself does not reorder).
        pids: (N,) identities of the rows of ``feats`` (checked only for shape: the matrices
            do not depend on labels, the argument exists so callers keep them together).

    Returns:
        ``(AC, G_sum)``: AC (N, N) with ``AC[i, j] = a_ij`` (centre i, neighbour j; zero where
        C has no edge), or ``None`` without the IR module; G_sum (N, N) with
        ``G_sum[i, j] = sum_n g^n_ij`` (each row sums to N), or ``None`` without the PR module.
        Both on the CPU, float32.
    """
    inner = unwrap_model(model)
    _check_batch(feats, pids, inner.feat_dim)
    cfg = inner.config
    ac: Tensor | None = None
    g_sum: Tensor | None = None
    with _EvalMode(inner):
        f = feats.detach().float().to(next(inner.parameters()).device)
        n = f.size(0)
        v = None
        if inner.ir is not None:
            if cfg.ir_graph == "knn" and n < cfg.k + 1:
                raise ValueError(
                    f"attention_matrices: a batch of {n} features is smaller than k+1 = {cfg.k + 1}"
                )
            edge_index = inner.individual_edges(f)
            one_graph = torch.zeros(n, dtype=torch.long, device=f.device)  # Eq. 2 spans the batch, as in training
            v, (att_index, alpha) = inner.ir(f, edge_index, batch=one_graph, return_attention_weights=True)
            ac = edge_attention_to_dense(att_index, alpha, n).cpu()
        if inner.pr is not None:
            head = inner.head  # the graphs and the IGP input as in training
            _, g, _ = inner.pr.forward_dense(f, head.image_nodes(f, v), mask=head.pair_mask(f), return_attention=True)
            if g.shape != (n, n, n):
                raise RuntimeError(
                    f"PairwiseRelationConv returned attention of shape {tuple(g.shape)}, expected {(n, n, n)}"
                )
            g_sum = g.float().sum(dim=0).cpu()  # (N, N): sum over the N pair graphs
    return ac, g_sum


# ---------------------------------------------------------------------------- heat maps
def _identity_boundaries(pids: Tensor | Sequence[int] | None) -> list[int]:
    """Indices i where pids[i] != pids[i - 1]: the identity block edges drawn on the maps."""
    if pids is None:
        return []
    p = np.asarray(pids.cpu() if isinstance(pids, Tensor) else pids).reshape(-1)
    return [int(i) for i in np.nonzero(p[1:] != p[:-1])[0] + 1]


def uniform_deviation(g_sum: Tensor) -> Tensor:
    """:math:`\\sum_n G^n` as the deviation from uniform attention, in percent.

    Uniform attention in every pair graph gives row i the value ``r_i / m_i`` on each of its
    ``m_i`` attended entries (``r_i`` = the row's sum, N; ``m_i`` = N on the complete graph, fewer
    with ``pr_edges``). Returns ``100 * (G_sum[i, j] / (r_i / m_i) - 1)`` there and NaN on the
    entries the graphs do not attend (zero in ``g_sum``).
    """
    g = g_sum.detach().float().cpu()
    attended = g != 0
    uniform = g.sum(1, keepdim=True) / attended.sum(1, keepdim=True).clamp(min=1)
    dev = 100.0 * (g / uniform - 1.0)
    return dev.masked_fill(~attended, float("nan"))


def attention_figure(
    ac: Tensor | None,
    g_sum: Tensor | None,
    pids: Tensor | Sequence[int] | None = None,
    *,
    figsize: tuple[float, float] = (12.0, 5.5),
    dpi: int = 100,
    cmap: str = "Blues",
    deviation_cmap: str = "RdBu_r",
) -> Any:
    """Figure 5 as a matplotlib ``Figure`` (Agg canvas): (a) A∘C, (b) :math:`\\sum_n G^n`.

    (a) is drawn as it is, deeper colour = larger weight, from 0. (b) is drawn as
    :func:`uniform_deviation`: trained PR attention can be close to uniform (entries within
    about 1% of 1 on the synthetic data), and a colour scale fitted to such values (say
    0.996-1.008) turns 1% differences into strong stripes. The map shows the deviation in percent
    on a scale symmetric about 0, and the title states its largest magnitude. A panel whose
    matrix is ``None`` (the model lacks that module) says so instead of a map.
    """
    # A bare Figure on the Agg canvas: no pyplot, so a user's interactive backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    mats = [m for m in (ac, g_sum) if m is not None]
    if not mats:
        raise ValueError("plot_attention_heatmaps: both matrices are None (the model has neither IR nor PR)")
    n = mats[0].shape[0]
    for m in mats:
        if m.dim() != 2 or m.shape != (n, n):
            raise ValueError(f"plot_attention_heatmaps: matrices must be square (N, N), got {tuple(m.shape)}")
    bounds = _identity_boundaries(pids)
    if pids is not None and len(pids) != n:
        raise ValueError(f"plot_attention_heatmaps: {len(pids)} pids for {n} x {n} matrices")
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, which in zip(axes, ("a", "b"), strict=False):
        mat = ac if which == "a" else g_sum
        if mat is None:
            ax.set_title(
                "(a) A∘C (Eq. 3, IR attention on the kNN graph)" if which == "a"
                else "(b) Σ_n G^n (Eq. 6, PR attention summed over graphs)", fontsize=10,
            )
            missing = f"no {'IR' if which == 'a' else 'PR'} module in this model"
            ax.text(0.5, 0.5, missing, ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        if which == "a":
            ax.set_title("(a) A∘C (Eq. 3, IR attention on the kNN graph)", fontsize=10)
            values = mat.detach().float().cpu().numpy()
            im = ax.imshow(values, cmap=cmap, interpolation="nearest", vmin=0.0, vmax=max(float(values.max()), 1e-12))
            label = "attention weight a_ij"
        else:
            dev = uniform_deviation(mat).numpy()
            spread = float(np.nanmax(np.abs(dev))) if np.isfinite(dev).any() else 0.0
            ax.set_title(
                "(b) Σ_n G^n (Eq. 6, PR attention summed over graphs):\n"
                f"deviation from uniform attention, at most ±{spread:.2g}%",
                fontsize=10,
            )
            limit = max(spread, 1e-9)
            im = ax.imshow(dev, cmap=deviation_cmap, interpolation="nearest", vmin=-limit, vmax=limit)
            label = "deviation from uniform, % (0 = uniform)"
        for b in bounds:
            ax.axhline(b - 0.5, color="orange", linewidth=0.6)
            ax.axvline(b - 0.5, color="orange", linewidth=0.6)
        ax.set_xlabel("node j")
        ax.set_ylabel("node i")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=label)
    fig.tight_layout()
    return fig


def plot_attention_heatmaps(
    ac: Tensor | None,
    g_sum: Tensor | None,
    path: PathLike,
    pids: Tensor | Sequence[int] | None = None,
    *,
    figsize: tuple[float, float] = (12.0, 5.5),
    dpi: int = 100,
    cmap: str = "Blues",
) -> Path:
    """Write Figure 5 (:func:`attention_figure`): (a) A∘C and (b) :math:`\\sum_n G^n` as its
    deviation from uniform attention, identity blocks outlined. The PNG is ``figsize * dpi``
    pixels."""
    fig = attention_figure(ac, g_sum, pids, figsize=figsize, dpi=dpi, cmap=cmap)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)  # no bbox_inches="tight": the size stays figsize * dpi
    return path


# ---------------------------------------------------------------------------- one call for the CLI
def _record_fields(record: Any) -> tuple[str, int, int]:
    """(path, pid, camid) of a dataset record (attribute or tuple style)."""
    if all(hasattr(record, a) for a in ("path", "pid", "camid")):
        return str(record.path), int(record.pid), int(record.camid)
    if isinstance(record, (tuple, list)) and len(record) >= 3:
        return str(record[0]), int(record[1]), int(record[2])
    raise TypeError(f"dataset records must have path, pid and camid; got {type(record).__name__}")


def sample_pk_batch(records: Sequence[Any], num_identities: int, num_instances: int, seed: int = 0) -> list[int]:
    """Indices of one P x K batch, identity-major (Sec. 4.5: K images of y_1, then of y_2, ...).

    P identities with at least K images are drawn at random (all of them when fewer than P
    qualify), and K images of each without replacement.
    """
    pids = np.asarray([_record_fields(r)[1] for r in records])
    rng = np.random.default_rng(seed)
    by_pid: dict = {}
    for i, p in enumerate(pids):
        by_pid.setdefault(int(p), []).append(i)
    eligible = sorted(p for p, idx in by_pid.items() if len(idx) >= num_instances)
    if not eligible:
        raise ValueError(f"no training identity has K = {num_instances} images; cannot draw a P x K batch")
    chosen = rng.choice(eligible, size=min(num_identities, len(eligible)), replace=False)
    out: list[int] = []
    for p in chosen:
        out.extend(int(i) for i in rng.choice(by_pid[int(p)], size=num_instances, replace=False))
    return out


def ranking_caption(
    model: HRNetModule, *, rerank: bool = True, given: bool = False, num_gallery: int | None = None,
    rerank_config: RerankConfig | None = None,
) -> str:
    """The caption of :func:`visualize_batch`'s ranked-list grid: which ranking it shows.

    ``given``: the caller passed the distance matrix; otherwise the relational re-ranking when
    ``rerank`` and the model has an IR or PR module (its shortlist that of ``rerank_config``,
    ``None``: the model's protocol), else the cosine distance of BN(F).
    """
    inner = unwrap_model(model)
    modules = [name for name, m in (("IR", inner.ir), ("PR", inner.pr)) if m is not None]
    if given:
        ranking = "the distance matrix passed in"
    elif rerank and modules:
        shortlist = protocol_of(inner, rerank_config).shortlist
        k = shortlist if num_gallery is None else min(shortlist, num_gallery)
        ranking = (
            f"the relational re-ranking (Sec. 4.2): each query's top {k} by cosine re-scored by the "
            f"{' and '.join(modules)} module{'s' if len(modules) > 1 else ''}"
        )
    else:
        why = "re-ranking off" if modules else "this model has no relational modules"
        ranking = f"cosine distance of BN(F), the CNN features ({why})"
    return (
        f"Ranked by {ranking}. Rank 1 = best; green border: same identity, red: another; images "
        "of the query's identity from the query's camera are skipped (Market-1501 protocol)."
    )


def _test_distances(
    model: HRNetModule, dataset: Any, transform: Any, *, rerank: bool, device: torch.device, batch_size: int,
    num_workers: int, progress: bool, rerank_config: RerankConfig | None = None,
) -> Tensor:
    """The (Q, G) distances of ``dataset``'s test split: the relational re-ranking (under
    ``rerank_config``, ``None``: the model's protocol) when ``rerank`` and the model has an IR or
    PR module, else the cosine distance of BN(F)."""
    from torch.utils.data import DataLoader

    from hrnet_pyg.engine import extract  # the engine imports the model and torch_geometric

    def loader(records: Any) -> DataLoader:
        return DataLoader(
            ImageDataset(records, transform), batch_size=batch_size, shuffle=False, num_workers=num_workers
        )

    qf, _, _ = extract(model, loader(dataset.query), device=device, progress=progress)
    gf, _, _ = extract(model, loader(dataset.gallery), device=device, progress=progress)
    if rerank and (model.ir is not None or model.pr is not None):
        ranked = relational_rerank(model, qf, gf, rerank_config, device=device, progress=progress)
        assert isinstance(ranked, Tensor)  # without return_scores: the distance matrix alone
        return ranked
    with torch.no_grad():
        model.to(device).eval()
        return cosine_distance(
            model.retrieval_features(qf.to(device)).cpu(), model.retrieval_features(gf.to(device)).cpu()
        )


def visualize_batch(
    model: HRNetModule,
    dataset: Any,
    out_dir: PathLike,
    *,
    num_queries: int = 4,
    query_indices: Sequence[int] | None = None,
    topk: int = 10,
    distmat: Tensor | np.ndarray | None = None,
    rerank: bool = True,
    rerank_config: RerankConfig | None = None,
    seed: int = 0,
    device: str | torch.device | None = "auto",
    batch_size: int = 128,
    num_workers: int = 0,
    progress: bool = True,
    caption: str | None = None,
) -> list[Path]:
    """Figure 5 heat maps for one P x K training batch and a ranked-list grid; returns the PNG paths.

    Args:
        model: a trained :class:`~hrnet_pyg.model.HRNetModule` with a backbone (images in).
        dataset: a dataset of :func:`hrnet_pyg.data.build_dataset` (``train``, ``query``,
            ``gallery`` lists of records with ``path``, ``pid``, ``camid``).
        out_dir: folder for ``fig5_attention.png`` and ``ranked_list.png``.
        num_queries: queries in the grid, drawn at random (seeded) unless ``query_indices``.
        topk: gallery images per query (default: 10).
        distmat: a precomputed (Q, G) distance matrix (e.g. from the evaluation just run);
            without it, query and gallery features are extracted and ranked here.
        rerank: rank with the paper's relational re-ranking (Sec. 4.2) when the model has a
            relationship module; otherwise (or ``False``) by cosine distance of BN(F).
        rerank_config: the re-ranking's test protocol (:class:`~hrnet_pyg.protocol.RerankConfig`);
            ``None``: the model's.
        seed: seeds the batch and query draws.
        device, batch_size, num_workers, progress: feature extraction settings.
        caption: the ranked-list grid's caption; by default it names the ranking drawn (the
            relational re-ranking, cosine, or "the distance matrix passed in").
    """
    from torch.utils.data import DataLoader

    from hrnet_pyg.engine import extract  # the engine imports the model and torch_geometric

    inner = unwrap_model(model)
    if getattr(inner, "backbone", None) is None:
        raise ValueError(
            "visualize_batch needs a model with a backbone (it reads images); for a feature-level "
            "model call attention_matrices(model, feats, pids) and plot_attention_heatmaps directly"
        )
    cfg = inner.config
    dev = resolve_device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    h, w = cfg.image_size
    test_tf = build_transforms(h, w, is_train=False)

    # (1) Figure 5 on one P x K training batch, identity-major as in Sec. 4.5.
    idx = sample_pk_batch(dataset.train, cfg.num_identities, cfg.num_instances, seed=seed)
    batch_ds = ImageDataset([dataset.train[i] for i in idx], test_tf)
    feats, pids, _ = extract(
        inner, DataLoader(batch_ds, batch_size=len(idx), shuffle=False), device=dev, progress=False
    )
    ac, g_sum = attention_matrices(inner, feats, pids)
    paths: list[Path] = []
    if ac is not None or g_sum is not None:
        paths.append(plot_attention_heatmaps(ac, g_sum, out / "fig5_attention.png", pids=pids))

    # (2) Ranked lists of chosen queries.
    q_fields = [_record_fields(r) for r in dataset.query]
    g_fields = [_record_fields(r) for r in dataset.gallery]
    if caption is None:
        caption = ranking_caption(inner, rerank=rerank, given=distmat is not None, num_gallery=len(g_fields),
                                  rerank_config=rerank_config)
    if distmat is None:
        distmat = _test_distances(inner, dataset, test_tf, rerank=rerank, device=dev, batch_size=batch_size,
                                  num_workers=num_workers, progress=progress, rerank_config=rerank_config)
    if query_indices is None:
        rng = np.random.default_rng(seed)
        query_indices = sorted(
            int(i) for i in rng.choice(len(q_fields), size=min(num_queries, len(q_fields)), replace=False)
        )
    grid = ranked_list_grid(
        [f[0] for f in q_fields],
        [f[0] for f in g_fields],
        distmat,
        [f[1] for f in q_fields],
        [f[1] for f in g_fields],
        out / "ranked_list.png",
        topk=topk,
        queries=query_indices,
        q_camids=[f[2] for f in q_fields],
        g_camids=[f[2] for f in g_fields],
        caption=caption,
    )
    paths.append(grid.path)
    return paths


__all__ = [
    "BACKGROUND_COLOR",
    "MATCH_COLOR",
    "MISMATCH_COLOR",
    "QUERY_COLOR",
    "RankedGrid",
    "attention_figure",
    "attention_matrices",
    "edge_attention_to_dense",
    "plot_attention_heatmaps",
    "ranked_list_grid",
    "ranking_caption",
    "sample_pk_batch",
    "uniform_deviation",
    "visualize_batch",
]
