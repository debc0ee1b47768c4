"""Person re-ID datasets as lists of ``(img_path, pid, camid)`` records.

Conventions follow the field's standard loaders (torchreid's ``torchreid/data/datasets/image``):

* records are :class:`ReIDRecord` named tuples ``(img_path: str, pid: int, camid: int)``;
* ``camid`` is 0-based (file names count cameras from 1);
* training identities are relabelled ``0 .. P-1`` in sorted order of the original ids, while
  query/gallery ids keep their original values (evaluation only compares them for equality);
* junk images (pid ``-1``, Market-1501's bad detections) are dropped; distractors (pid ``0``,
  Market-1501's background boxes) stay in the gallery, where they can only be false matches.

Every problem with the files on disk raises :class:`DatasetError` (a ``ValueError``) or
:class:`DatasetNotFoundError` (also a ``FileNotFoundError``) naming the path and what was expected,
never a bare ``KeyError``/``AssertionError`` from deep inside a parser. A split is never skipped
silently. See ``docs/datasets.md`` for the folder layout of each dataset.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import (
    Any,
    NamedTuple,
    Union,
)

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from hrnet_pyg.runtime import progress as progress_of

PathLike = Union[str, "os.PathLike[str]"]

#: File suffixes treated as images when a split folder is scanned (CUHK03-NP ships PNGs).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")

#: Market-1501 style names: ``0002_c1s1_000451_03.jpg``, ``-1_c3s2_012345_01.jpg`` (junk),
#: DukeMTMC-reID ``0005_c2_f0046985.jpg``, CUHK03-NP ``0001_c1_1.png``. Anchored at the start of
#: the file name (torchreid searches the whole path, which can match a folder name by accident).
MARKET_PATTERN = re.compile(r"^(-?\d+)_c(\d+)")


class DatasetError(ValueError):
    """A dataset on disk does not look as expected (bad name, empty split, corrupt image, ...)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A dataset folder, split folder, list file or image is missing."""


class ReIDRecord(NamedTuple):
    """One image of a re-ID dataset."""

    img_path: str
    pid: int
    camid: int


Records = list[ReIDRecord]


# --------------------------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------------------------


class ReIDDataset:
    """A re-ID dataset: three lists of :class:`ReIDRecord` (``train``, ``query``, ``gallery``).

    Args:
        train, query, gallery: sequences of ``(img_path, pid, camid)``; train pids must already
            be relabelled ``0..P-1`` (the parsers below do it).
        root: the folder the images were read from (for messages and summaries).
        has_camids: ``False`` when the source carries no camera ids (custom data): every camid is
            then 0 and evaluation cannot remove same-camera matches, which it should say.
        name: short dataset name shown by :meth:`summary`.
        protocol: one line saying how train/query/gallery were drawn (the split of a dataset
            with random splits, where its partition came from), shown by :meth:`summary`.
    """

    name: str = "reid"
    #: Cameras of the dataset's layout where it is fixed (camids ``0..num_cameras-1``), else None.
    num_cameras: int | None = None

    def __init__(
        self,
        train: Iterable[Sequence[Any]],
        query: Iterable[Sequence[Any]],
        gallery: Iterable[Sequence[Any]],
        *,
        root: PathLike | None = None,
        has_camids: bool = True,
        name: str | None = None,
        protocol: str | None = None,
    ) -> None:
        self.train: Records = [ReIDRecord(str(p), int(i), int(c)) for p, i, c in train]
        self.query: Records = [ReIDRecord(str(p), int(i), int(c)) for p, i, c in query]
        self.gallery: Records = [ReIDRecord(str(p), int(i), int(c)) for p, i, c in gallery]
        self.root = None if root is None else str(root)
        self.has_camids = bool(has_camids)
        self.protocol = protocol
        if name is not None:
            self.name = name
        train_pids = sorted({r.pid for r in self.train})
        if train_pids != list(range(len(train_pids))):
            raise DatasetError(
                f"{self.name}: train pids must be relabelled 0..P-1, got {train_pids[:10]}..."
            )
        self.num_train_pids, self.num_train_cams = self.parse_data(self.train)
        self.num_query_pids, self.num_query_cams = self.parse_data(self.query)
        self.num_gallery_pids, self.num_gallery_cams = self.parse_data(self.gallery)

    # counts ------------------------------------------------------------------------------
    @staticmethod
    def parse_data(records: Sequence[ReIDRecord]) -> tuple[int, int]:
        """Number of distinct identities and of distinct cameras in ``records``."""
        return len({r.pid for r in records}), len({r.camid for r in records})

    @property
    def num_train_imgs(self) -> int:
        return len(self.train)

    @property
    def num_query_imgs(self) -> int:
        return len(self.query)

    @property
    def num_gallery_imgs(self) -> int:
        return len(self.gallery)

    def split(self, name: str) -> Records:
        """The records of split ``name`` (``"train"``, ``"query"`` or ``"gallery"``)."""
        if name not in ("train", "query", "gallery"):
            raise ValueError(f"split must be 'train', 'query' or 'gallery', got {name!r}")
        return getattr(self, name)

    # printing ----------------------------------------------------------------------------
    def summary(self) -> str:
        """The table of identities / images / cameras per split (torchreid's layout)."""
        line = "  ----------------------------------------"
        rows = [
            f"=> {self.name}" + (f" ({self.root})" if self.root else ""),
            line,
            "  subset   | # ids | # images | # cameras",
            line,
        ]
        for split in ("train", "query", "gallery"):
            pids, cams = self.parse_data(self.split(split))
            rows.append(f"  {split:<8} | {pids:5d} | {len(self.split(split)):8d} | {cams:9d}")
        rows.append(line)
        if self.protocol:
            rows.append(f"  protocol: {self.protocol}")
        if not self.has_camids:
            rows.append("  no camera ids: every camid is 0 (no same-camera filtering possible)")
        return "\n".join(rows)

    def print_summary(self) -> None:
        print(self.summary())

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(train={len(self.train)}, query={len(self.query)}, "
            f"gallery={len(self.gallery)}, num_train_pids={self.num_train_pids})"
        )

    # checks ------------------------------------------------------------------------------
    def verify_images(
        self, splits: Sequence[str] = ("train", "query", "gallery"), progress: bool = True
    ) -> None:
        """Decode every image once; raise :class:`DatasetError` listing all unreadable files."""
        bad: list[str] = []
        for split in splits:
            records = self.split(split)
            for rec in progress_of(records, f"verify {split}", show=progress, unit="images"):
                try:
                    read_image(rec.img_path)
                except DatasetError as exc:
                    bad.append(str(exc))
        if bad:
            shown = "\n  ".join(bad[:20])
            more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
            raise DatasetError(f"{self.name}: {len(bad)} unreadable image(s):\n  {shown}{more}")


# --------------------------------------------------------------------------------------------
# image reading and torch datasets
# --------------------------------------------------------------------------------------------


def read_image(path: PathLike) -> Image.Image:
    """Open and fully decode an image as RGB; errors name the path.

    PIL decodes lazily, so ``load()`` is forced here: a truncated JPEG then fails in this call
    rather than later inside a transform.
    """
    path = str(path)
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError as exc:
        raise DatasetNotFoundError(f"image file {path} does not exist") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(
            f"cannot decode image {path} (corrupt or not an image): {exc}"
        ) from exc


class ImageDataset(Dataset):
    """A torch ``Dataset`` over records; ``__getitem__`` returns ``(img, pid, camid, index)``.

    Args:
        records: ``(img_path, pid, camid)`` sequences, e.g. ``build_dataset(...).train``.
        transform: applied to the PIL image (e.g. :func:`build_transforms`). (default: ``None``)

    A missing or corrupt image raises :class:`DatasetError` naming its path.
    """

    def __init__(
        self,
        records: Iterable[Sequence[Any]],
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        self.records: Records = [ReIDRecord(str(p), int(i), int(c)) for p, i, c in records]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Any, int, int, int]:
        img_path, pid, camid = self.records[index]
        img = read_image(img_path)
        if self.transform is not None:
            img = self.transform(img)
        return img, pid, camid, index

    @property
    def pids(self) -> list[int]:
        """The pid of every index (what :class:`PKSampler` takes)."""
        return [r.pid for r in self.records]

    @property
    def camids(self) -> list[int]:
        return [r.camid for r in self.records]

    @property
    def paths(self) -> list[str]:
        return [r.img_path for r in self.records]


class FeatureDataset(Dataset):
    """Pre-extracted features as a dataset: ``__getitem__`` returns ``(feat, pid, camid, index)``.

    Used to train the graph modules on frozen backbone features.

    Args:
        features: ``(N, d)`` tensor.
        pids: ``N`` identity labels (sequence or tensor).
        camids: ``N`` camera ids; ``None`` gives all zeros. (default: ``None``)
    """

    def __init__(
        self,
        features: Tensor,
        pids: Sequence[int] | Tensor | np.ndarray,
        camids: Sequence[int] | Tensor | np.ndarray | None = None,
    ) -> None:
        if not isinstance(features, Tensor):
            raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
        if features.dim() != 2:
            raise ValueError(f"features must be 2-D (N, d), got shape {tuple(features.shape)}")
        n = features.size(0)
        pid_t = torch.as_tensor(np.asarray(pids) if not isinstance(pids, Tensor) else pids)
        if pid_t.dim() != 1 or pid_t.numel() != n:
            raise ValueError(
                f"pids must hold {n} labels (one per feature row), got {pid_t.numel()}"
            )
        if camids is None:
            cam_t = torch.zeros(n, dtype=torch.long)
        else:
            cam_t = torch.as_tensor(
                np.asarray(camids) if not isinstance(camids, Tensor) else camids
            )
            if cam_t.dim() != 1 or cam_t.numel() != n:
                raise ValueError(
                    f"camids must hold {n} values (one per feature row), got {cam_t.numel()}"
                )
        self.features = features
        self._pids = pid_t.long()
        self._camids = cam_t.long()
        self.has_camids = camids is not None

    def __len__(self) -> int:
        return self.features.size(0)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int, int]:
        return self.features[index], int(self._pids[index]), int(self._camids[index]), index

    @property
    def pids(self) -> list[int]:
        return self._pids.tolist()

    @property
    def camids(self) -> list[int]:
        return self._camids.tolist()


# --------------------------------------------------------------------------------------------
# helpers shared by the parsers
# --------------------------------------------------------------------------------------------


def _unique_paths(paths: Iterable[Path]) -> list[Path]:
    seen, out = set(), []
    for p in paths:
        key = os.path.normpath(str(p))
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _relabel(records: Sequence[tuple[str, int, int]]) -> Records:
    """Map train pids to ``0..P-1`` in sorted order of the original ids."""
    pid2label = {pid: label for label, pid in enumerate(sorted({r[1] for r in records}))}
    return [ReIDRecord(p, pid2label[pid], c) for p, pid, c in records]


def _list_images(dir_path: Path) -> list[Path]:
    return sorted(
        p
        for p in dir_path.iterdir()
        if p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def parse_market_dir(
    dir_path: PathLike,
    *,
    max_camid: int,
    relabel: bool = False,
    dataset: str = "market1501",
    example: str = "0002_c1s1_000451_03.jpg",
) -> Records:
    """Parse one Market-1501-style split folder (``PPPP_cC...`` file names).

    Junk (pid -1) is dropped; distractors (pid 0) are kept. Raises :class:`DatasetError` for a
    name that does not parse, a camera outside ``1..max_camid``, or a split that is empty (or
    junk only) -- never returns an empty list.
    """
    dir_path = Path(dir_path)
    if not dir_path.is_dir():
        raise DatasetNotFoundError(f"{dataset}: split folder {dir_path} does not exist")
    files = _list_images(dir_path)
    if not files:
        raise DatasetError(
            f"{dataset}: split folder {dir_path} holds no images "
            f"({'/'.join(IMG_EXTENSIONS)}); expected files named like {example}"
        )
    records: list[tuple[str, int, int]] = []
    for path in files:
        match = MARKET_PATTERN.match(path.name)
        if match is None:
            raise DatasetError(
                f"{dataset}: cannot parse identity/camera from file name {path}; expected "
                f"'<pid>_c<camera>...' like {example} (pid -1 for junk)"
            )
        pid, camid = int(match.group(1)), int(match.group(2))
        if pid == -1:
            continue  # junk: bad detections, ignored by the standard protocol
        if pid < -1:
            raise DatasetError(f"{dataset}: negative identity {pid} in file name {path}")
        if not 1 <= camid <= max_camid:
            raise DatasetError(
                f"{dataset}: camera c{camid} in file name {path} is outside c1..c{max_camid}"
            )
        records.append((str(path), pid, camid - 1))  # camid 0-based
    if not records:
        raise DatasetError(
            f"{dataset}: split folder {dir_path} holds only junk images (pid -1); "
            f"expected at least one image of a real identity"
        )
    if relabel:
        return _relabel(records)
    return [ReIDRecord(*r) for r in records]


MARKET_SPLITS = ("bounding_box_train", "query", "bounding_box_test")


def parse_market_splits(
    data_dir: Path, *, max_camid: int, dataset: str, example: str = "0002_c1s1_000451_03.jpg"
) -> tuple[Records, Records, Records]:
    """Train (relabelled), query and gallery of a folder holding the three Market split folders."""
    train, query, gallery = (
        parse_market_dir(data_dir / split, max_camid=max_camid, relabel=split == MARKET_SPLITS[0],
                         dataset=dataset, example=example)
        for split in MARKET_SPLITS
    )
    return train, query, gallery


def _locate_split_root(
    dataset: str, candidates: Sequence[Path], splits: Sequence[str] = MARKET_SPLITS
) -> Path | None:
    """The first candidate folder holding any split folder (all splits must then be there)."""
    for cand in _unique_paths(candidates):
        present = [s for s in splits if (cand / s).is_dir()]
        if present:
            missing = [str(cand / s) for s in splits if s not in present]
            if missing:
                raise DatasetNotFoundError(
                    f"{dataset}: found {cand} but split folder(s) {', '.join(missing)} "
                    f"are missing; expected {', '.join(splits)} side by side in {cand}"
                )
            return cand
    return None


def _find_split_root(
    dataset: str, root: Path, candidates: Sequence[Path], splits: Sequence[str] = MARKET_SPLITS
) -> Path:
    """Like :func:`_locate_split_root`, but nothing found is an error listing the candidates."""
    found = _locate_split_root(dataset, candidates, splits)
    if found is None:
        raise _not_found(dataset, root, candidates, splits)
    return found


def _not_found(
    dataset: str, root: Path, candidates: Sequence[Path], splits: Sequence[str] = MARKET_SPLITS
) -> DatasetNotFoundError:
    tried = "\n  ".join(str(c) for c in _unique_paths(candidates))
    return DatasetNotFoundError(
        f"{dataset}: no dataset found under {root}; looked for the folders "
        f"{', '.join(splits)} in:\n  {tried}\n(see docs/datasets.md for the expected layout)"
    )


def _check_root(root: PathLike, dataset: str) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetNotFoundError(f"{dataset}: root folder {path} does not exist")
    return path.resolve()


# --------------------------------------------------------------------------------------------
# helpers of the datasets with seeded random splits (VIPeR, PRID 2011, GRID, CAVIAR4REID)
# --------------------------------------------------------------------------------------------


def check_split_id(split_id: Any, dataset: str, num_splits: int | None = None) -> int:
    """``split_id`` as an int, or a ``ValueError`` naming the dataset and the valid range.

    Random splits exist for every ``split_id >= 0`` (0..9 are the ten the literature reports);
    a dataset with a fixed partition file has ``num_splits`` of them.
    """
    ok = isinstance(split_id, (int, np.integer)) and not isinstance(split_id, bool) and split_id >= 0
    if ok and num_splits is not None:
        ok = split_id < num_splits
    if not ok:
        valid = (f"one of 0..{num_splits - 1}" if num_splits is not None
                 else "an integer >= 0 (0..9 are the ten standard splits)")
        raise ValueError(f"{dataset}: split_id must be {valid}, got {split_id!r}")
    return int(split_id)


def seeded_split(ids: Iterable[int], num_train: int, split_id: int) -> tuple[list[int], list[int]]:
    """The training and test identities of split ``split_id`` (both sorted).

    The rule: ``numpy.random.default_rng(split_id).permutation`` orders the sorted identities, the
    first ``num_train`` train and the rest test. It depends only on the set of identities and
    ``split_id`` (not on file-system order, numpy's global seed or the platform), so split ``s``
    is the same everywhere.
    """
    pool = sorted({int(i) for i in ids})
    if not 0 < num_train < len(pool):
        raise ValueError(f"num_train must lie in 1..{len(pool) - 1}, got {num_train}")
    order = np.random.default_rng(split_id).permutation(len(pool))
    return sorted(pool[i] for i in order[:num_train]), sorted(pool[i] for i in order[num_train:])


def check_root_for(root: PathLike, dataset: str, layout: str) -> Path:
    """The resolved ``root``; a missing one is a one-line error saying what it should hold."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetNotFoundError(
            f"{dataset}: root folder {path} does not exist; expected the folder that holds {layout} "
            f"(docs/datasets.md)"
        )
    return path.resolve()


def find_dataset_folder(
    dataset: str, root: Path, candidates: Sequence[Path], required: Sequence[str], layout: str
) -> Path:
    """The first candidate folder holding every ``required`` sub-folder (``()``: the candidate
    itself must exist), else a one-line :class:`DatasetNotFoundError` naming ``root``, the
    folders tried and ``layout``. A candidate holding only some of them is an error naming the
    missing ones."""
    tried = _unique_paths(candidates)
    for cand in tried:
        if not required:
            if cand.is_dir():
                return cand
            continue
        present = [r for r in required if (cand / r).is_dir()]
        if present:
            missing = [r for r in required if r not in present]
            if missing:
                raise DatasetNotFoundError(
                    f"{dataset}: found {cand / present[0]} but not {', '.join(str(cand / m) for m in missing)}; "
                    f"expected {layout}"
                )
            return cand
    raise dataset_not_found(dataset, root, tried, layout)


def dataset_not_found(dataset: str, root: Path, tried: Sequence[Path], layout: str) -> DatasetNotFoundError:
    """The one-line error of a root that holds none of the layouts tried."""
    return DatasetNotFoundError(
        f"{dataset}: nothing found under {root}; expected {layout} "
        f"(looked in {', '.join(str(c) for c in _unique_paths(tried))}; docs/datasets.md)"
    )


def scan_named_images(
    dir_path: Path, pattern: re.Pattern[str], dataset: str, example: str
) -> list[tuple[Path, re.Match[str]]]:
    """Every image of ``dir_path`` (sorted by name) with ``pattern`` matched on its file name.

    An empty folder or an image name the pattern does not match raises :class:`DatasetError`
    naming the file and an example of the expected name; other files (``Thumbs.db``) are ignored.
    """
    files = _list_images(dir_path)
    if not files:
        raise DatasetError(
            f"{dataset}: folder {dir_path} holds no images ({'/'.join(IMG_EXTENSIONS)}); "
            f"expected files named like {example}"
        )
    out = []
    for path in files:
        match = pattern.match(path.name)
        if match is None:
            raise DatasetError(f"{dataset}: cannot parse the file name {path}; expected names like {example}")
        out.append((path, match))
    return out


def index_one_per_person(
    dir_path: Path, pattern: re.Pattern[str], dataset: str, example: str
) -> dict[int, Path]:
    """``{pid: path}`` of a camera folder holding one image per person (group 1 = the pid)."""
    out: dict[int, Path] = {}
    for path, match in scan_named_images(dir_path, pattern, dataset, example):
        pid = int(match.group(1))
        if pid in out:
            raise DatasetError(
                f"{dataset}: two images of person {pid} in {dir_path}: {out[pid].name} and {path.name}; "
                f"expected one image per person and camera"
            )
        out[pid] = path
    return out


__all__ = [
    "IMG_EXTENSIONS",
    "MARKET_PATTERN",
    "DatasetError",
    "DatasetNotFoundError",
    "FeatureDataset",
    "ImageDataset",
    "ReIDDataset",
    "ReIDRecord",
    "check_root_for",
    "check_split_id",
    "dataset_not_found",
    "find_dataset_folder",
    "index_one_per_person",
    "parse_market_dir",
    "parse_market_splits",
    "read_image",
    "scan_named_images",
    "seeded_split",
]
