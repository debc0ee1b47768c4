"""Ranked-list image grids: each row a query, then its top-k gallery images, best first.

Borders say whether a gallery image shows the query's identity (green) or not (red); the rank
numbers sit above the cells and a caption above the grid says which ranking it shows. Drawn with
PIL only. :mod:`hrnet_pyg.visualize` (Figure 5) and :mod:`hrnet_pyg.search` re-use it.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image as PILImage

PathLike = str | os.PathLike[str]

# Border colours of the ranked-list grid (RGB).
MATCH_COLOR = (0, 200, 0)  # gallery image of the query's identity
MISMATCH_COLOR = (220, 0, 0)  # another identity
QUERY_COLOR = (40, 40, 40)  # the query itself
BACKGROUND_COLOR = (255, 255, 255)

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


def _labels_of(
    q_pids: Tensor | Sequence[int] | Sequence[str],
    g_pids: Tensor | Sequence[int] | Sequence[str],
    q_camids: Tensor | Sequence[int] | None,
    g_camids: Tensor | Sequence[int] | None,
    num_q: int,
    num_g: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The identities (and cameras, when given) of the grid's images as flat arrays, checked."""
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
    return qp, gp, qc, gc


class _Canvas:
    """The grid's image: a caption band on top, then per row a band of rank numbers and the cells."""

    def __init__(
        self, num_rows: int, topk: int, size: tuple[int, int], border: int, gap: int, query_gap: int,
        caption: str | None, font_size: int,
    ) -> None:
        from PIL import Image, ImageDraw

        h, w = size
        self.size, self.border, self.gap = size, border, gap
        self.cell_w, self.cell_h = w + 2 * border, h + 2 * border
        width = gap + self.cell_w + query_gap + topk * (self.cell_w + gap)
        self.font = _font(font_size)
        measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        line_h = font_size + 3
        caption_lines = _wrap(measure, caption, self.font, width - 2 * gap) if caption else []
        self.top = gap + len(caption_lines) * line_h  # the caption's band
        self.label_h = line_h  # the rank numbers above each row
        height = self.top + num_rows * (self.label_h + self.cell_h + gap)
        self.image = Image.new("RGB", (width, height), BACKGROUND_COLOR)
        self.draw = ImageDraw.Draw(self.image)
        for i, line in enumerate(caption_lines):
            self.draw.text((gap, gap + i * line_h), line, fill=(0, 0, 0), font=self.font)

    def row_y(self, r: int) -> int:
        """The top of row ``r``'s cells."""
        return self.top + r * (self.label_h + self.cell_h + self.gap) + self.label_h

    def put(
        self, path: PathLike, color: tuple[int, int, int], text: str, x0: int, y0: int
    ) -> tuple[int, int, int, int]:
        """Image ``path`` in a ``color`` border at (x0, y0), ``text`` centred above it; its box."""
        self.image.paste(_load_cell(path, self.size, self.border, color), (x0, y0))
        x = x0 + (self.cell_w - self.draw.textlength(text, font=self.font)) / 2
        self.draw.text((x, y0 - self.label_h + 1), text, fill=(0, 0, 0), font=self.font)
        return (x0, y0, x0 + self.cell_w, y0 + self.cell_h)


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
    num_q, num_g = len(query_paths), len(gallery_paths)
    order = _ranking(ranking, num_q, num_g)
    qp, gp, qc, gc = _labels_of(q_pids, g_pids, q_camids, g_camids, num_q, num_g)
    if topk < 1:
        raise ValueError(f"ranked_list_grid: topk must be >= 1, got {topk}")
    rows = list(range(min(num_q, 8))) if queries is None else [int(q) for q in queries]
    if not rows:
        raise ValueError("ranked_list_grid: no query to draw")
    for q in rows:
        if not 0 <= q < num_q:
            raise ValueError(f"ranked_list_grid: query index {q} outside [0, {num_q})")

    canvas = _Canvas(len(rows), topk, size, border, gap, query_gap, caption, font_size)
    shown: list[list[int]] = []
    matches: list[list[bool]] = []
    boxes: list[list[tuple[int, int, int, int]]] = []
    labels: list[list[str]] = []
    for r, q in enumerate(rows):
        y0 = canvas.row_y(r)
        keep = order[q]
        if qc is not None and gc is not None:
            keep = keep[~((gp[keep] == qp[q]) & (gc[keep] == qc[q]))]
        keep = [int(j) for j in keep[:topk]]
        row_boxes = [canvas.put(query_paths[q], QUERY_COLOR, "query", gap, y0)]
        row_match = [bool(gp[j] == qp[q]) for j in keep]
        for c, (j, same) in enumerate(zip(keep, row_match, strict=True)):
            x0 = gap + canvas.cell_w + query_gap + c * (canvas.cell_w + gap)
            row_boxes.append(canvas.put(gallery_paths[j], MATCH_COLOR if same else MISMATCH_COLOR, str(c + 1), x0, y0))
        shown.append(keep)
        matches.append(row_match)
        boxes.append(row_boxes)
        labels.append(["query", *(str(c + 1) for c in range(len(keep)))])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.image.save(path)
    return RankedGrid(
        path=path, queries=rows, gallery=shown, matches=matches, boxes=boxes, labels=labels,
        caption=caption,
    )


__all__ = [
    "BACKGROUND_COLOR",
    "MATCH_COLOR",
    "MISMATCH_COLOR",
    "QUERY_COLOR",
    "RankedGrid",
    "ranked_list_grid",
]
