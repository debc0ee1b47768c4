"""Figure 5 of the paper (Sec. 4.5) and ranked-list image grids.

* :func:`attention_matrices`: for one P x K batch of CNN features F (identity-major order, as in
  Sec. 4.5: six images of y_1, then six of y_2, ...), the dense matrix A∘C of Eq. 3 (the IR
  module's attention a_ij on the edges of the kNN graph C, zero elsewhere) and
  :math:`\\sum_n G^n` with :math:`G^n = [g^n_{ij}]` of Eq. 6 (the PR module's attention inside
  the complete graph of image n), computed by the model's own layers.
* :func:`plot_attention_heatmaps`: the two-panel heat map of Figure 5 (a) and (b), (b) as the
  deviation from uniform attention (:func:`uniform_deviation`), its magnitude in the title.
* :func:`ranked_list_grid`: query + top-k gallery images, green border = same identity,
  red = different (drawn with PIL only).
* :func:`visualize_batch`: both figures for a trained model and a dataset (``hrnet-pyg visualize``).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from hrnet_pyg.data import ImageDataset, build_transforms
from hrnet_pyg.evaluation import cosine_distance
from hrnet_pyg.rerank import relational_rerank
from hrnet_pyg.runtime import resolve_device, unwrap_model

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image as PILImage

    from hrnet_pyg.model import HRNetModule

PathLike = str | os.PathLike[str]

# Border colours of the ranked-list grid (RGB).
MATCH_COLOR = (0, 200, 0)  # gallery image of the query's identity
MISMATCH_COLOR = (220, 0, 0)  # another identity
QUERY_COLOR = (40, 40, 40)  # the query itself
BACKGROUND_COLOR = (255, 255, 255)


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


# ---------------------------------------------------------------------------- ranked lists
@dataclass
class RankedGrid:
    """What :func:`ranked_list_grid` drew: one row per query."""

    path: Path
    queries: list[int]  # query indices, one per row
    gallery: list[list[int]]  # shown gallery indices per row, best first
    matches: list[list[bool]]  # same identity as the query, per shown gallery image
    boxes: list[list[tuple[int, int, int, int]]]  # (x0, y0, x1, y1) of each cell incl. border; [0] = query
    labels: list[list[str]] = field(default_factory=list)  # text above each cell: "query", "1", "2", ...
    caption: str | None = None  # the line(s) at the top: which ranking the grid shows


def _ranking(ranking: Tensor | np.ndarray, num_q: int, num_g: int) -> np.ndarray:
    r = ranking.detach().cpu().numpy() if isinstance(ranking, Tensor) else np.asarray(ranking)
    if r.ndim != 2 or r.shape[0] != num_q:
        raise ValueError(f"ranked_list_grid: ranking must be (Q, G) = ({num_q}, ...), got shape {r.shape}")
    if np.issubdtype(r.dtype, np.integer):
        if r.size and (r.min() < 0 or r.max() >= num_g):
            raise ValueError(f"ranked_list_grid: ranking holds gallery indices outside [0, {num_g})")
        return r
    if r.shape[1] != num_g:
        raise ValueError(f"ranked_list_grid: distance matrix must be (Q, G) = ({num_q}, {num_g}), got {r.shape}")
    return np.argsort(r, axis=1, kind="stable")  # distances: lower = better


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1)
    except TypeError:
        return ImageFont.load_default()


def _wrap(draw: Any, text: str, font: Any, width: int) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` pixels (a longer word alone)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _load_cell(path: PathLike, size: tuple[int, int], border: int, color: tuple[int, int, int]) -> PILImage.Image:
    from PIL import Image

    h, w = size
    try:
        with Image.open(path) as im:
            img = im.convert("RGB").resize((w, h), Image.Resampling.BILINEAR)
    except FileNotFoundError:
        raise FileNotFoundError(f"ranked_list_grid: image {path} does not exist") from None
    except OSError as exc:
        raise ValueError(f"ranked_list_grid: image {path} could not be read ({exc})") from None
    cell = Image.new("RGB", (w + 2 * border, h + 2 * border), color)
    cell.paste(img, (border, border))
    return cell


def ranked_list_grid(
    query_paths: Sequence[PathLike],
    gallery_paths: Sequence[PathLike],
    ranking: Tensor | np.ndarray,
    q_pids: Tensor | Sequence[int] | Sequence[str],
    g_pids: Tensor | Sequence[int] | Sequence[str],
    path: PathLike,
    topk: int = 10,
    queries: Sequence[int] | None = None,
    *,
    q_camids: Tensor | Sequence[int] | None = None,
    g_camids: Tensor | Sequence[int] | None = None,
    size: tuple[int, int] = (128, 64),
    border: int = 4,
    gap: int = 4,
    query_gap: int = 16,
    caption: str | None = None,
    font_size: int = 11,
) -> RankedGrid:
    """Image grid: each row a query, then its top-``topk`` gallery images, best first.

    Gallery borders are green (:data:`MATCH_COLOR`) for the query's identity, red
    (:data:`MISMATCH_COLOR`) otherwise; the query's border is dark grey. Above each cell its
    rank (1 = best; "query" above the query), and above the grid ``caption`` when given: say
    there which ranking the grid shows (a figure alone cannot tell cosine from re-ranked lists).

    Args:
        query_paths, gallery_paths: image files of the query and gallery sets.
        ranking: (Q, G') integer gallery indices per query, best first, or a (Q, G) float
            distance matrix (lower = better, e.g. from :func:`~hrnet_pyg.rerank.relational_rerank`).
        q_pids, g_pids: identities of the query and gallery images.
        path: PNG to write.
        topk: gallery images per row (default: 10, as in re-ID papers' ranked lists).
        queries: query indices to draw (default: all queries, up to 8).
        q_camids, g_camids: when given, gallery images of the query's identity taken by the
            query's camera are skipped, as the Market-1501 protocol does when scoring.
        size: (height, width) of each image in pixels (default: (128, 64)).
        border, gap, query_gap: border width, space between cells, extra space after the query.
        caption: text drawn above the grid, wrapped to its width. (default: none)
        font_size: pixel size of the rank numbers and the caption. (default: ``11``)

    Returns:
        :class:`RankedGrid` with the indices, match flags and cell boxes drawn.
    """
    from PIL import Image

    num_q, num_g = len(query_paths), len(gallery_paths)
    order = _ranking(ranking, num_q, num_g)
    qp = np.asarray(q_pids.cpu() if isinstance(q_pids, Tensor) else q_pids).reshape(-1)
    gp = np.asarray(g_pids.cpu() if isinstance(g_pids, Tensor) else g_pids).reshape(-1)
    if qp.size != num_q or gp.size != num_g:
        raise ValueError(
            f"ranked_list_grid: {qp.size} query pids for {num_q} query images, {gp.size} gallery pids "
            f"for {num_g} gallery images"
        )
    if (q_camids is None) != (g_camids is None):
        raise ValueError("ranked_list_grid: give both q_camids and g_camids, or neither")
    qc = gc = None
    if q_camids is not None and g_camids is not None:
        qc = np.asarray(q_camids.cpu() if isinstance(q_camids, Tensor) else q_camids).reshape(-1)
        gc = np.asarray(g_camids.cpu() if isinstance(g_camids, Tensor) else g_camids).reshape(-1)
        if qc.size != num_q or gc.size != num_g:
            raise ValueError("ranked_list_grid: camids must match the numbers of query and gallery images")
    if topk < 1:
        raise ValueError(f"ranked_list_grid: topk must be >= 1, got {topk}")
    rows = list(range(min(num_q, 8))) if queries is None else [int(q) for q in queries]
    if not rows:
        raise ValueError("ranked_list_grid: no query to draw")
    for q in rows:
        if not 0 <= q < num_q:
            raise ValueError(f"ranked_list_grid: query index {q} outside [0, {num_q})")

    from PIL import ImageDraw

    h, w = size
    cell_w, cell_h = w + 2 * border, h + 2 * border
    width = gap + cell_w + query_gap + topk * (cell_w + gap)
    font = _font(font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = font_size + 3
    caption_lines = _wrap(measure, caption, font, width - 2 * gap) if caption else []
    top = gap + len(caption_lines) * line_h  # the caption's band
    label_h = line_h  # the rank numbers above each row
    height = top + len(rows) * (label_h + cell_h + gap)
    canvas = Image.new("RGB", (width, height), BACKGROUND_COLOR)
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(caption_lines):
        draw.text((gap, gap + i * line_h), line, fill=(0, 0, 0), font=font)

    def label(text: str, x0: int, y0: int) -> None:  # centred above the cell at (x0, y0)
        x = x0 + (cell_w - draw.textlength(text, font=font)) / 2
        draw.text((x, y0 - label_h + 1), text, fill=(0, 0, 0), font=font)

    shown: list[list[int]] = []
    matches: list[list[bool]] = []
    boxes: list[list[tuple[int, int, int, int]]] = []
    labels: list[list[str]] = []
    for r, q in enumerate(rows):
        y0 = top + r * (label_h + cell_h + gap) + label_h
        keep = order[q]
        if qc is not None and gc is not None:
            keep = keep[~((gp[keep] == qp[q]) & (gc[keep] == qc[q]))]
        keep = [int(j) for j in keep[:topk]]
        row_boxes = [(gap, y0, gap + cell_w, y0 + cell_h)]
        canvas.paste(_load_cell(query_paths[q], size, border, QUERY_COLOR), (gap, y0))
        label("query", gap, y0)
        row_match, row_labels = [], ["query"]
        for c, j in enumerate(keep):
            x0 = gap + cell_w + query_gap + c * (cell_w + gap)
            same = bool(gp[j] == qp[q])
            color = MATCH_COLOR if same else MISMATCH_COLOR
            canvas.paste(_load_cell(gallery_paths[j], size, border, color), (x0, y0))
            label(str(c + 1), x0, y0)
            row_boxes.append((x0, y0, x0 + cell_w, y0 + cell_h))
            row_match.append(same)
            row_labels.append(str(c + 1))
        shown.append(keep)
        matches.append(row_match)
        boxes.append(row_boxes)
        labels.append(row_labels)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return RankedGrid(
        path=path, queries=rows, gallery=shown, matches=matches, boxes=boxes, labels=labels,
        caption=caption,
    )


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
    model: HRNetModule, *, rerank: bool = True, given: bool = False, num_gallery: int | None = None
) -> str:
    """The caption of :func:`visualize_batch`'s ranked-list grid: which ranking it shows.

    ``given``: the caller passed the distance matrix; otherwise the relational re-ranking when
    ``rerank`` and the model has an IR or PR module, else the cosine distance of BN(F).
    """
    inner = unwrap_model(model)
    modules = [name for name, m in (("IR", inner.ir), ("PR", inner.pr)) if m is not None]
    if given:
        ranking = "the distance matrix passed in"
    elif rerank and modules:
        k = inner.config.top_k_rerank if num_gallery is None else min(inner.config.top_k_rerank, num_gallery)
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
        caption = ranking_caption(inner, rerank=rerank, given=distmat is not None, num_gallery=len(g_fields))
    if distmat is None:

        def loader(records: Any) -> DataLoader:
            return DataLoader(
                ImageDataset(records, test_tf), batch_size=batch_size, shuffle=False, num_workers=num_workers
            )

        qf, _, _ = extract(inner, loader(dataset.query), device=dev, progress=progress)
        gf, _, _ = extract(inner, loader(dataset.gallery), device=dev, progress=progress)
        if rerank and (inner.ir is not None or inner.pr is not None):
            ranked = relational_rerank(inner, qf, gf, top_k=cfg.top_k_rerank, device=dev, progress=progress)
            assert isinstance(ranked, Tensor)  # without return_scores: the distance matrix alone
            distmat = ranked
        else:
            with torch.no_grad():
                inner.to(dev).eval()
                distmat = cosine_distance(
                    inner.retrieval_features(qf.to(dev)).cpu(), inner.retrieval_features(gf.to(dev)).cpu()
                )
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
    "MATCH_COLOR",
    "MISMATCH_COLOR",
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
