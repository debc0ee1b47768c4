"""Users' own data: split tables (CSV) and identity folders."""
from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import (
    Any,
)

import numpy as np

from hrnet_pyg.data.base import (
    IMG_EXTENSIONS,
    DatasetError,
    DatasetNotFoundError,
    PathLike,
    Records,
    ReIDDataset,
    ReIDRecord,
    _check_root,
    _list_images,
    _relabel,
)


def _labels_to_int(values: Sequence[Any]) -> tuple[list[int], bool]:
    """Integer labels as ints; anything else (strings) mapped later. Returns (ints, all_int)."""
    out, all_int = [], True
    for v in values:
        if isinstance(v, (int, np.integer)) or (isinstance(v, str) and re.fullmatch(r"-?\d+", v)):
            out.append(int(v))
        elif isinstance(v, (float, np.floating)) and float(v).is_integer():
            out.append(int(v))
        else:
            all_int = False
            out.append(0)
    return out, all_int


def _build_from_split_tables(
    name: str,
    splits: dict[str, list[tuple[str, Any, int]] | None],
    sources: dict[str, str],
    root: Path,
    has_camids: bool,
) -> tuple[Records, Records, Records]:
    """Shared checks of the ``custom``/``folder`` datasets: duplicates, missing files, labels."""
    # duplicate paths, within a split or across splits
    owner: dict[str, str] = {}
    dups: list[str] = []
    for split, rows in splits.items():
        for path, _, _ in rows or []:
            key = os.path.normcase(os.path.realpath(path))
            if key in owner:
                dups.append(f"{path} (in {sources[owner[key]]} and {sources[split]})")
            else:
                owner[key] = split
    if dups:
        shown = "\n  ".join(dups[:10])
        raise DatasetError(f"{name}: {len(dups)} duplicate image path(s):\n  {shown}")
    missing = [
        (split, path) for split, rows in splits.items() for path, _, _ in rows or []
        if not os.path.isfile(path)
    ]
    if missing:
        shown = "\n  ".join(f"{p} (listed in {sources[s]})" for s, p in missing[:10])
        raise DatasetNotFoundError(f"{name}: {len(missing)} image file(s) missing:\n  {shown}")

    # labels: train relabelled; query/gallery kept when integer, else mapped jointly
    train = _relabel([r for r in _ints_or_map(splits.get("train") or []) if r[1] != -1])
    test_rows = (splits.get("query") or []) + (splits.get("gallery") or [])
    mapped = _ints_or_map(test_rows)
    nq = len(splits.get("query") or [])
    query = [ReIDRecord(*r) for r in mapped[:nq] if r[1] != -1]
    gallery = [ReIDRecord(*r) for r in mapped[nq:] if r[1] != -1]
    for split, recs in (("train", train), ("query", query), ("gallery", gallery)):
        if splits.get(split) is not None and not recs:
            raise DatasetError(f"{name}: split {split} ({sources[split]}) holds no images")

    if query and gallery:
        g_pids = Counter(r.pid for r in gallery)
        q_pids = Counter(r.pid for r in query)
        absent = [p for p in q_pids if p not in g_pids]
        if absent:
            n_imgs = sum(q_pids[p] for p in absent)
            warnings.warn(
                f"{name}: {len(absent)} of {len(q_pids)} query identities ({n_imgs} query "
                f"images) have no image in the gallery; evaluation skips these queries",
                stacklevel=3,
            )
        if not has_camids:
            warnings.warn(
                f"{name}: no camera ids; every camid is 0, so evaluation cannot drop "
                f"same-camera gallery matches and scores may be higher than under the "
                f"standard cross-camera protocol",
                stacklevel=3,
            )
    return train, query, gallery


def _ints_or_map(rows: list[tuple[str, Any, int]]) -> list[tuple[str, int, int]]:
    if not rows:
        return []
    ints, all_int = _labels_to_int([r[1] for r in rows])
    if all_int:
        return [(p, pid, c) for (p, _, c), pid in zip(rows, ints, strict=False)]
    # non-numeric identity names: sorted string order, shared by query and gallery
    names = sorted({str(r[1]) for r in rows})
    lookup = {n: i for i, n in enumerate(names)}
    return [(p, lookup[str(pid)], c) for p, pid, c in rows]


class CustomCSV(ReIDDataset):
    """Users' own data from CSV files with columns ``path, pid[, camid]``.

    Args:
        root: folder holding the CSV files.
        train, query, gallery: CSV file names (relative to ``root``) or paths; ``None`` makes
            that split deliberately empty (e.g. training only). (defaults: ``train.csv``,
            ``query.csv``, ``gallery.csv``)
        verify: decode every image once. (default: ``False``)

    Relative image paths resolve against the folder of their CSV. ``pid`` may be an integer or
    a name (names map to integers in sorted order; train ids are relabelled ``0..P-1`` either
    way; pid ``-1`` marks junk and is dropped). Without a ``camid`` column every camid is 0 and
    ``has_camids`` is ``False``.
    """

    name = "custom"

    def __init__(
        self,
        root: PathLike,
        train: PathLike | None = "train.csv",
        query: PathLike | None = "query.csv",
        gallery: PathLike | None = "gallery.csv",
        verify: bool = False,
    ) -> None:
        import pandas as pd

        base = _check_root(root, self.name)
        splits: dict[str, list[tuple[str, Any, int]] | None] = {}
        sources: dict[str, str] = {}
        has_camids = True
        for split, spec in (("train", train), ("query", query), ("gallery", gallery)):
            if spec is None:
                splits[split], sources[split] = None, f"{split} (none)"
                continue
            csv = Path(spec).expanduser()
            csv = csv if csv.is_absolute() else base / csv
            sources[split] = str(csv)
            if not csv.is_file():
                raise DatasetNotFoundError(
                    f"custom: {split} CSV {csv} does not exist (pass {split}=None for no "
                    f"{split} split)"
                )
            try:
                df = pd.read_csv(csv)
            except Exception as exc:  # pandas raises several types for malformed CSV
                raise DatasetError(f"custom: cannot read {csv} as CSV: {exc}") from exc
            df.columns = [str(c).strip().lower() for c in df.columns]
            for col in ("path", "pid"):
                if col not in df.columns:
                    raise DatasetError(
                        f"custom: {csv} has no '{col}' column; expected columns path, pid[, "
                        f"camid], found {list(df.columns)}"
                    )
            if df.empty:
                raise DatasetError(f"custom: {csv} has no rows")
            for col in ("path", "pid") + (("camid",) if "camid" in df.columns else ()):
                bad = df[col].isna()
                if bad.any():
                    row = int(np.flatnonzero(bad.to_numpy())[0]) + 2  # +header, 1-based
                    raise DatasetError(f"custom: empty '{col}' on line {row} of {csv}")
            if "camid" in df.columns:
                camids, ok = _labels_to_int(df["camid"].tolist())
                if not ok:
                    raise DatasetError(f"custom: column 'camid' of {csv} must hold integers")
            else:
                camids = [0] * len(df)
                has_camids = False
            folder = csv.parent
            rows = []
            for p, pid, c in zip(df["path"].astype(str), df["pid"].tolist(), camids, strict=False):
                path = Path(p).expanduser()
                rows.append((str(path if path.is_absolute() else folder / path), pid, c))
            splits[split] = rows
        if splits["train"] is None and splits["query"] is None:
            raise DatasetError("custom: train, query and gallery are all None: nothing to load")
        if (splits["query"] is None) != (splits["gallery"] is None):
            raise DatasetError("custom: give both query and gallery CSVs, or neither")
        train_r, query_r, gallery_r = _build_from_split_tables(
            self.name, splits, sources, base, has_camids
        )
        super().__init__(train_r, query_r, gallery_r, root=base, has_camids=has_camids)
        if verify:
            self.verify_images()


class ImageFolderReID(ReIDDataset):
    """Users' own images, one sub-folder per identity (no camera ids: every camid is 0).

    Two layouts:

    * ``root/<identity>/*.jpg``: everything is the training split (query and gallery empty; a
      run of ``hrnet-pyg train`` or ``eval``, which evaluates, refuses it before training);
    * ``root/train/<identity>/*``, ``root/query/<identity>/*``, ``root/gallery/<identity>/*``
      (chosen when ``root/train``, ``root/query`` or ``root/gallery`` exists; query and gallery
      must come together).

    Identity folder names that are integers keep their value in query/gallery; other names map
    to integers in sorted order. An identity folder without images is an error.
    """

    name = "folder"

    def __init__(self, root: PathLike, verify: bool = False) -> None:
        base = _check_root(root, self.name)
        split_layout = any((base / s).is_dir() for s in ("train", "query", "gallery"))
        splits: dict[str, list[tuple[str, Any, int]] | None] = {}
        sources: dict[str, str] = {}
        if split_layout:
            for s in ("train", "query", "gallery"):
                d = base / s
                sources[s] = str(d)
                splits[s] = self._scan(d) if d.is_dir() else None
            if (splits["query"] is None) != (splits["gallery"] is None):
                missing = "query" if splits["query"] is None else "gallery"
                raise DatasetNotFoundError(
                    f"folder: {base / missing} does not exist; query and gallery come together"
                )
        else:
            splits = {"train": self._scan(base), "query": None, "gallery": None}
            sources = {"train": str(base), "query": "(none)", "gallery": "(none)"}
        train, query, gallery = _build_from_split_tables(
            self.name, splits, sources, base, has_camids=False
        )
        super().__init__(train, query, gallery, root=base, has_camids=False)
        if verify:
            self.verify_images()

    @staticmethod
    def _scan(folder: Path) -> list[tuple[str, Any, int]]:
        loose = _list_images(folder)
        if loose:
            raise DatasetError(
                f"folder: {folder} holds images directly (e.g. {loose[0].name}); expected one "
                f"sub-folder per identity: {folder}/<identity>/<image>.jpg"
            )
        ids = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not ids:
            raise DatasetError(f"folder: {folder} has no identity sub-folders")
        rows: list[tuple[str, Any, int]] = []
        for d in ids:
            files = _list_images(d)
            if not files:
                raise DatasetError(
                    f"folder: identity folder {d} holds no images ({'/'.join(IMG_EXTENSIONS)})"
                )
            rows.extend((str(f), d.name, 0) for f in files)
        return rows


__all__ = ["CustomCSV", "ImageFolderReID"]
