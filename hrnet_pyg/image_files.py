"""One's own images as a list: a folder, a single image or a CSV, with labels when known.

:func:`list_images` reads what ``hrnet-pyg extract --images``, ``search`` and ``index`` take;
labels are optional: a CSV may carry ``pid``/``camid`` columns, Market-1501 style file names
(``0002_c1s1_000451_03.jpg``) give both, a folder-per-identity layout gives ``pid``.
:func:`is_feature_file` tells a feature file (``.npz``) from an image by its content.
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from hrnet_pyg.data.base import IMG_EXTENSIONS, MARKET_PATTERN, DatasetError, DatasetNotFoundError

PathLike = Union[str, "os.PathLike[str]"]


#: How labels of a folder (or single image) are found; CSV files carry their own columns.
#: ``auto``: Market-1501 style names when every file name parses, else none.
#: ``market``: pid and camera from Market-1501 style names (an error when one does not parse).
#: ``folder``: pid = name of the image's parent folder (``root/<identity>/<image>``), no camera.
#: ``none``: no labels.
LABEL_MODES = ("auto", "market", "folder", "none")


@dataclass
class ImageList:
    """Image files plus their labels when known (``None`` when not)."""

    paths: list[str]  # absolute paths, in a deterministic (sorted or CSV) order
    pids: np.ndarray | None = None  # (N,) int64, or str when identities are names
    camids: np.ndarray | None = None  # (N,) int64, 0-based
    source: str = ""  # what the list was read from (for messages)

    def __len__(self) -> int:
        return len(self.paths)


def _is_image_file(p: Path) -> bool:
    return p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith(".") and p.is_file()


def _scan_folder(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursively), sorted; hidden files and folders skipped."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            p = Path(dirpath) / name
            if _is_image_file(p):
                out.append(p)
    return sorted(out, key=lambda p: str(p))


def _market_labels(files: Sequence[Path], strict: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    pids, camids = [], []
    for p in files:
        m = MARKET_PATTERN.match(p.name)
        if m is None:
            if strict:
                raise DatasetError(
                    f"labels='market': cannot parse identity/camera from file name {p}; expected "
                    "'<pid>_c<camera>...' like 0002_c1s1_000451_03.jpg"
                )
            return None, None
        pids.append(int(m.group(1)))
        camids.append(int(m.group(2)) - 1)  # file names count cameras from 1
    return np.asarray(pids, dtype=np.int64), np.asarray(camids, dtype=np.int64)


def _folder_labels(files: Sequence[Path], root: Path) -> np.ndarray:
    names = []
    for p in files:
        if p.parent == root:
            raise DatasetError(
                f"labels='folder': {p} sits directly in {root}; expected one sub-folder per "
                f"identity: {root}/<identity>/<image>"
            )
        names.append(p.parent.name)
    return _label_array(names)


def _label_array(values: Sequence[Any]) -> np.ndarray:
    """int64 when every label is an integer (or an integer string), else str."""
    ints: list[int] = []
    for v in values:
        if isinstance(v, (bool, np.bool_)):
            break
        if isinstance(v, (int, np.integer)):
            ints.append(int(v))
        elif isinstance(v, (float, np.floating)) and float(v).is_integer():
            ints.append(int(v))
        elif isinstance(v, str) and v.strip().lstrip("-").isdigit():
            ints.append(int(v))
        else:
            break
    if len(ints) == len(values):
        return np.asarray(ints, dtype=np.int64)
    return np.asarray([str(v) for v in values])


def _read_csv(csv: Path) -> ImageList:
    import pandas as pd

    try:
        df = pd.read_csv(csv)
    except Exception as exc:  # pandas raises several types for malformed CSV
        raise DatasetError(f"cannot read {csv} as CSV: {exc}") from exc
    df.columns = [str(c).strip().lower() for c in df.columns]
    if "path" not in df.columns:
        raise DatasetError(
            f"{csv} has no 'path' column; expected columns path[, pid, camid], found {list(df.columns)}"
        )
    if df.empty:
        raise DatasetError(f"{csv} has no rows")
    for col in [c for c in ("path", "pid", "camid") if c in df.columns]:
        bad = df[col].isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0]) + 2  # +header, 1-based
            raise DatasetError(f"empty '{col}' on line {row} of {csv}")
    paths = []
    for p in df["path"].astype(str):
        path = Path(p).expanduser()
        paths.append((path if path.is_absolute() else csv.parent / path).resolve())
    seen: dict[str, int] = {}
    for i, p in enumerate(paths):
        key = os.path.normcase(str(p))
        if key in seen:
            raise DatasetError(f"{csv}: image {p} is listed twice (lines {seen[key] + 2} and {i + 2})")
        seen[key] = i
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = "\n  ".join(str(p) for p in missing[:10])
        raise DatasetNotFoundError(f"{csv}: {len(missing)} image file(s) missing:\n  {shown}")
    pids = _label_array(df["pid"].tolist()) if "pid" in df.columns else None
    camids = None
    if "camid" in df.columns:
        camids = _label_array(df["camid"].tolist())
        if camids.dtype.kind != "i":
            raise DatasetError(f"column 'camid' of {csv} must hold integers")
    return ImageList([str(p) for p in paths], pids, camids, source=str(csv))


def list_images(source: PathLike, labels: str = "auto") -> ImageList:
    """The images of ``source`` and their labels when known.

    Args:
        source: an image file, a folder (searched recursively for
            ``.jpg/.jpeg/.png/.bmp``; hidden files and folders skipped) or a ``.csv`` file with
            a ``path`` column and optional ``pid``/``camid`` columns (relative paths resolve
            against the CSV's folder).
        labels: for folders and single images, one of :data:`LABEL_MODES`. (default: ``"auto"``)

    Raises:
        DatasetNotFoundError: ``source`` (or an image listed in the CSV) does not exist.
        DatasetError: a folder without images, a CSV without ``path`` column, duplicate paths,
            a file name that ``labels="market"`` cannot parse.
    """
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {', '.join(LABEL_MODES)}, got {labels!r}")
    src = Path(source).expanduser()
    if not src.exists():
        raise DatasetNotFoundError(f"{src} does not exist (expected an image, a folder of images or a .csv file)")
    if src.is_file() and src.suffix.lower() == ".csv":
        return _read_csv(src.resolve())
    if is_feature_file(src):
        raise DatasetError(f"{src} is a feature file (.npz), not images; pass it where features are accepted")
    src = src.resolve()
    if src.is_dir():
        files = _scan_folder(src)
        if not files:
            raise DatasetError(f"folder {src} holds no images ({'/'.join(IMG_EXTENSIONS)}, searched recursively)")
        root = src
    else:
        files, root = [src], src.parent  # a single file: decoded (and checked) when read
    pids = camids = None
    if labels in ("auto", "market"):
        pids, camids = _market_labels(files, strict=labels == "market")
    elif labels == "folder":
        pids = _folder_labels(files, root)
    return ImageList([str(p) for p in files], pids, camids, source=str(src))


def is_feature_file(path: PathLike) -> bool:
    """Whether ``path`` is an ``.npz`` with a ``features`` array, whatever its name ends with.

    ``np.load`` reads an ``.npz`` by its content, and ``hrnet-pyg extract --out feats`` writes
    ``feats`` as named; so a file is told from an image by its zip header and members, not its
    suffix.
    """
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix.lower() == ".npz":
        return True
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as zf:
            return "features.npy" in zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


__all__ = ["LABEL_MODES", "ImageList", "is_feature_file", "list_images"]
