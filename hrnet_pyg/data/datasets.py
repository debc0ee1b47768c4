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

import json
import os
import re
import warnings
from collections import Counter
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
from tqdm import tqdm

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
    """

    name: str = "reid"

    def __init__(
        self,
        train: Iterable[Sequence[Any]],
        query: Iterable[Sequence[Any]],
        gallery: Iterable[Sequence[Any]],
        *,
        root: PathLike | None = None,
        has_camids: bool = True,
        name: str | None = None,
    ) -> None:
        self.train: Records = [ReIDRecord(str(p), int(i), int(c)) for p, i, c in train]
        self.query: Records = [ReIDRecord(str(p), int(i), int(c)) for p, i, c in query]
        self.gallery: Records = [ReIDRecord(str(p), int(i), int(c)) for p, i, c in gallery]
        self.root = None if root is None else str(root)
        self.has_camids = bool(has_camids)
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
            for rec in tqdm(records, desc=f"verify {split}", disable=not progress, leave=False):
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
# the datasets of the paper
# --------------------------------------------------------------------------------------------


class Market1501(ReIDDataset):
    """Market-1501 (Zheng et al., ICCV 2015): 751 train ids / 12,936 images; 3,368 query,
    15,913 gallery images after dropping junk (pid -1); distractors (pid 0) stay in the gallery.

    Layouts accepted (first match wins): ``root/market1501/Market-1501-v15.09.15``,
    ``root/market1501``, ``root/Market-1501-v15.09.15``, ``root`` itself -- whichever holds
    ``bounding_box_train``, ``query`` and ``bounding_box_test``.
    """

    name = "market1501"
    max_camid = 6
    dataset_dir = "market1501"
    sub_dirs: tuple[str, ...] = ("Market-1501-v15.09.15",)
    example = "0002_c1s1_000451_03.jpg"

    def __init__(self, root: PathLike, verify: bool = False) -> None:
        base = _check_root(root, self.name)
        outer = base / self.dataset_dir
        candidates = [outer / s for s in self.sub_dirs] + [outer]
        candidates += [base / s for s in self.sub_dirs] + [base]
        data_dir = _find_split_root(self.name, base, candidates)
        self.data_dir = str(data_dir)
        train, query, gallery = parse_market_splits(
            data_dir, max_camid=self.max_camid, dataset=self.name, example=self.example
        )
        super().__init__(train, query, gallery, root=data_dir)
        if verify:
            self.verify_images()


class DukeMTMCreID(Market1501):
    """DukeMTMC-reID (Ristani et al. 2016; Zheng et al. 2017): 8 cameras, 702 train ids /
    16,522 images, 2,228 query, 17,661 gallery images. Market-style names ``0005_c2_f0046985.jpg``.

    Layouts: ``root/dukemtmc-reid/DukeMTMC-reID``, ``root/dukemtmc-reid``, ``root/DukeMTMC-reID``,
    ``root``.
    """

    name = "dukemtmcreid"
    max_camid = 8
    dataset_dir = "dukemtmc-reid"
    sub_dirs = ("DukeMTMC-reID",)
    example = "0005_c2_f0046985.jpg"


class CUHK03(ReIDDataset):
    """CUHK03 (Li et al., CVPR 2014) under the 767/700 protocol (Zhong et al., CVPR 2017).

    Two sources are accepted (``variant="auto"`` tries them in this order):

    * ``"np"``: the widely shared CUHK03-NP folders, Market-style PNG names
      (``0001_c1_1.png``; ``c1``/``c2`` = the two views of a camera pair) in
      ``<base>/cuhk03-np/detected/{bounding_box_train,query,bounding_box_test}`` where
      ``<base>`` is ``root/cuhk03`` or ``root``; ``root`` may also be the ``detected`` folder
      itself.
    * ``"mat"``: the original release ``<base>/cuhk03_release/cuhk-03.mat`` (MATLAB v7.3, read with
      ``h5py``) plus ``<base>/cuhk03_new_protocol_config_detected.mat`` (read with scipy). The
      images are extracted once to ``<base>/images_detected/`` with torchreid's names
      ``{pair}_{person:03d}_{view}_{image:02d}.png``.

    Args:
        root: the data root.
        cuhk03_labeled: use the manually labelled boxes instead of the detected ones (the paper
            uses detected). (default: ``False``)
        variant: ``"auto"``, ``"np"`` or ``"mat"``. (default: ``"auto"``)
        verify: decode every image once. (default: ``False``)
    """

    name = "cuhk03"

    def __init__(
        self,
        root: PathLike,
        cuhk03_labeled: bool = False,
        variant: str = "auto",
        verify: bool = False,
        progress: bool = True,
    ) -> None:
        if variant not in ("auto", "np", "mat"):
            raise ValueError(f"cuhk03 variant must be 'auto', 'np' or 'mat', got {variant!r}")
        base = _check_root(root, self.name)
        kind = "labeled" if cuhk03_labeled else "detected"
        self.kind = kind
        bases = _unique_paths([base / "cuhk03", base])
        np_candidates = [b / "cuhk03-np" / kind for b in bases] + [b / kind for b in bases] + [base]
        if variant in ("auto", "np"):
            data_dir = _locate_split_root(f"{self.name} (cuhk03-np)", np_candidates)
            if data_dir is not None:
                self.variant = "np"
                self.data_dir = str(data_dir)
                train, query, gallery = parse_market_splits(
                    data_dir, max_camid=2, dataset=self.name, example="0001_c1_1.png"
                )
                super().__init__(train, query, gallery, root=data_dir)
                if verify:
                    self.verify_images()
                return
            if variant == "np":
                raise _not_found(f"{self.name} (cuhk03-np)", base, np_candidates)

        mat_found = self._find_mat(bases, kind)
        if mat_found is None:
            tried = "\n  ".join(str(c) for c in _unique_paths(np_candidates))
            where = " or ".join(str(b) for b in bases)
            raise DatasetNotFoundError(
                f"{self.name}: no dataset found under {base}. Expected either the cuhk03-np "
                f"folders (bounding_box_train, query, bounding_box_test) in one of:\n  {tried}\n"
                f"or the original release <base>/cuhk03_release/cuhk-03.mat plus "
                f"<base>/cuhk03_new_protocol_config_{kind}.mat with <base> = {where}"
            )
        raw_mat, split_mat, data_base = mat_found
        self.variant = "mat"
        img_dir = data_base / f"images_{kind}"
        self.data_dir = str(img_dir)
        extract_cuhk03_images(raw_mat, img_dir, kind=kind, progress=progress)
        train, query, gallery = _cuhk03_new_protocol(split_mat, img_dir)
        super().__init__(train, query, gallery, root=img_dir)
        if verify:
            self.verify_images()

    @staticmethod
    def _find_mat(bases: Sequence[Path], kind: str) -> tuple[Path, Path, Path] | None:
        for b in bases:
            raw = b / "cuhk03_release" / "cuhk-03.mat"
            if not raw.is_file():
                continue
            name = f"cuhk03_new_protocol_config_{kind}.mat"
            for split in (b / name, b / "cuhk03_release" / name):
                if split.is_file():
                    return raw, split, b
            raise DatasetNotFoundError(
                f"cuhk03: found {raw} but not the 767/700 protocol file {b / name}; "
                f"download it from Zhong et al.'s person-re-ranking repository (CUHK03-NP)"
            )
        return None


_CUHK03_DONE = ".extracted.json"


def extract_cuhk03_images(
    raw_mat: PathLike, img_dir: PathLike, kind: str = "detected", progress: bool = True
) -> Path:
    """Write the images of ``cuhk-03.mat`` (MATLAB v7.3 / HDF5) as PNGs, once.

    Names follow torchreid: ``{pair}_{person:03d}_{view}_{image:02d}.png`` with ``pair`` the camera
    pair (1-5), ``view`` 1 for images 1-5 and 2 for 6-10; empty cells are skipped. A marker file
    written at the end makes the next call a no-op; an interrupted extraction is redone.
    """
    raw_mat, img_dir = Path(raw_mat), Path(img_dir)
    marker = img_dir / _CUHK03_DONE
    if marker.is_file():
        return img_dir
    try:
        import h5py
    except ImportError as exc:  # optional dependency, only for the original release
        raise ImportError(
            f"reading {raw_mat} (MATLAB v7.3 / HDF5) needs h5py: pip install h5py "
            f"(or use the cuhk03-np folder layout, which needs nothing extra)"
        ) from exc
    img_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    try:
        mat = h5py.File(str(raw_mat), "r")
    except OSError as exc:
        raise DatasetError(
            f"cuhk03: cannot read {raw_mat} as a MATLAB v7.3 (HDF5) file: {exc}"
        ) from exc
    with mat:
        if kind not in mat:
            raise DatasetError(
                f"cuhk03: {raw_mat} has no '{kind}' entry; found {sorted(mat.keys())}"
            )
        pairs = mat[kind][0]
        bar = tqdm(total=len(pairs), desc=f"extract cuhk03 {kind}", disable=not progress)
        for pair_idx, pair_ref in enumerate(pairs):
            cells = mat[pair_ref][:].T  # (num_persons, 10) object references
            for person_idx in range(cells.shape[0]):
                for img_idx, ref in enumerate(cells[person_idx]):
                    img = mat[ref][:].T  # MATLAB stores column-major: back to (H, W, 3)
                    if img.size == 0 or img.ndim < 3:
                        continue  # empty cell: some persons lack images in one view
                    view = 1 if img_idx < 5 else 2
                    name = f"{pair_idx + 1}_{person_idx + 1:03d}_{view}_{img_idx + 1:02d}.png"
                    Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8)).save(
                        img_dir / name
                    )
                    count += 1
            bar.update(1)
        bar.close()
    if count == 0:
        raise DatasetError(f"cuhk03: {raw_mat} holds no '{kind}' images")
    marker.write_text(json.dumps({"source": str(raw_mat), "kind": kind, "images": count}))
    return img_dir


def _mat_str(cell: Any) -> str:
    """A MATLAB cell-array string as loaded by ``scipy.io.loadmat`` (nested object arrays)."""
    while isinstance(cell, np.ndarray) and cell.dtype == object:
        if cell.size != 1:
            raise DatasetError(f"cuhk03: unexpected file-list entry {cell!r}")
        cell = cell.reshape(-1)[0]
    if isinstance(cell, np.ndarray):  # char array, e.g. array(['1_001_1_01.png'])
        return "".join(str(c) for c in cell.reshape(-1))
    return str(cell)


def _cuhk03_new_protocol(split_mat: Path, img_dir: Path) -> tuple[Records, Records, Records]:
    try:
        from scipy.io import loadmat
    except ImportError as exc:  # optional dependency, only for the original release
        raise ImportError(
            f"reading {split_mat} needs scipy: pip install scipy (or use the cuhk03-np folders)"
        ) from exc

    try:
        cfg = loadmat(str(split_mat))
    except Exception as exc:  # scipy raises several types for a damaged file
        raise DatasetError(f"cuhk03: cannot read protocol file {split_mat}: {exc}") from exc
    needed = ("train_idx", "query_idx", "gallery_idx", "labels", "filelist")
    missing = [k for k in needed if k not in cfg]
    if missing:
        raise DatasetError(f"cuhk03: protocol file {split_mat} lacks {missing}; expected {needed}")
    labels = np.asarray(cfg["labels"]).reshape(-1).astype(np.int64)
    filelist = [_mat_str(c) for c in np.asarray(cfg["filelist"], dtype=object).reshape(-1)]
    if len(filelist) != len(labels):
        raise DatasetError(
            f"cuhk03: {split_mat} has {len(filelist)} file names but {len(labels)} labels"
        )

    def take(key: str) -> list[tuple[str, int, int]]:
        idxs = np.asarray(cfg[key]).reshape(-1).astype(np.int64) - 1  # MATLAB is 1-based
        if idxs.size == 0:
            raise DatasetError(f"cuhk03: split '{key}' of {split_mat} is empty")
        if idxs.min() < 0 or idxs.max() >= len(filelist):
            raise DatasetError(f"cuhk03: split '{key}' of {split_mat} indexes outside the list")
        out = []
        for i in idxs:
            name = filelist[i]
            parts = name.split("_")
            if len(parts) < 4 or not parts[2].isdigit():
                raise DatasetError(
                    f"cuhk03: cannot parse the view from {name!r} in {split_mat}; expected "
                    f"'<pair>_<person>_<view>_<image>.png' like 1_001_1_01.png"
                )
            path = img_dir / name
            out.append((str(path), int(labels[i]), int(parts[2]) - 1))  # view 1/2 -> camid 0/1
        return out

    train, query, gallery = take("train_idx"), take("query_idx"), take("gallery_idx")
    missing_files = [p for p, _, _ in train + query + gallery if not os.path.isfile(p)]
    if missing_files:
        raise DatasetNotFoundError(
            f"cuhk03: {len(missing_files)} image(s) named in {split_mat} are missing from "
            f"{img_dir}, e.g. {missing_files[0]}; delete {img_dir} to extract again"
        )
    return _relabel(train), [ReIDRecord(*r) for r in query], [ReIDRecord(*r) for r in gallery]


MSMT17_VERSIONS = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}
MSMT17_LISTS = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")


class MSMT17(ReIDDataset):
    """MSMT17 (Wei et al., CVPR 2018), 15 cameras.

    The training set is ``list_train.txt`` + ``list_val.txt`` (32,621 images of 1,041 ids, as in
    the paper; ``combine_val=False`` gives list_train alone, 30,248 images); query 11,659 and
    gallery 82,161 images. List lines read ``0000/0000_000_01_0303morning_0015_0.jpg 0``: the path
    relative to the train/test folder and the pid; the camera is the third ``_`` field.

    Layouts: ``<base>/MSMT17_V1/{train,test,list_*.txt}`` or
    ``<base>/MSMT17_V2/{mask_train_v2,mask_test_v2,list_*.txt}`` with ``<base>`` = ``root/msmt17``
    or ``root``; ``root`` may also be the ``MSMT17_V1``/``MSMT17_V2`` folder itself.
    """

    name = "msmt17"
    max_camid = 15

    def __init__(
        self, root: PathLike, combine_val: bool = True, verify: bool = False, version: str | None = None
    ) -> None:
        if version is not None and version not in MSMT17_VERSIONS:
            raise ValueError(f"msmt17 version must be one of {', '.join(MSMT17_VERSIONS)} or None, got {version!r}")
        base = _check_root(root, self.name)
        main_dir, (train_name, test_name) = self._find(base, version)
        self.data_dir = str(main_dir)
        self.version = main_dir.name if main_dir.name in MSMT17_VERSIONS else "?"
        lists = {name: main_dir / name for name in MSMT17_LISTS}
        for _name, path in lists.items():
            if not path.is_file():
                raise DatasetNotFoundError(
                    f"msmt17: list file {path} does not exist; expected {', '.join(MSMT17_LISTS)} "
                    f"in {main_dir}"
                )
        train_dir, test_dir = main_dir / train_name, main_dir / test_name
        train = self._read_list(lists["list_train.txt"], train_dir)
        if combine_val:
            train = train + self._read_list(lists["list_val.txt"], train_dir)
        query = self._read_list(lists["list_query.txt"], test_dir)
        gallery = self._read_list(lists["list_gallery.txt"], test_dir)
        super().__init__(_relabel(train), query, gallery, root=main_dir)
        if verify:
            self.verify_images()

    @staticmethod
    def _find(base: Path, only: str | None = None) -> tuple[Path, tuple[str, str]]:
        versions = {v: d for v, d in MSMT17_VERSIONS.items() if only is None or v == only}
        tried = []
        for b in _unique_paths([base / "msmt17", base]):
            for version, dirs in versions.items():
                cand = b / version
                tried.append(cand)
                if cand.is_dir():
                    return MSMT17._check_dirs(cand, dirs)
        # root may be the version folder itself (whatever it is called)
        for dirs in versions.values():
            if (base / dirs[0]).is_dir() or (base / dirs[1]).is_dir():
                return MSMT17._check_dirs(base, dirs)
        tried_s = "\n  ".join(str(t) for t in tried)
        wanted = " or ".join(f"{v} ({d[0]}/, {d[1]}/)" for v, d in versions.items())
        raise DatasetNotFoundError(
            f"msmt17: no dataset found under {base}; looked for {wanted} with list_*.txt in:\n  {tried_s}"
        )

    @staticmethod
    def _check_dirs(main_dir: Path, dirs: tuple[str, str]) -> tuple[Path, tuple[str, str]]:
        for d in dirs:
            if not (main_dir / d).is_dir():
                raise DatasetNotFoundError(
                    f"msmt17: image folder {main_dir / d} does not exist; expected "
                    f"{main_dir / dirs[0]} and {main_dir / dirs[1]}"
                )
        return main_dir, dirs

    def _read_list(self, list_path: Path, img_dir: Path) -> list[tuple[str, int, int]]:
        out: list[tuple[str, int, int]] = []
        missing: list[str] = []
        with open(list_path) as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                fields = line.split()
                ok = len(fields) == 2 and fields[1].lstrip("-").isdigit()
                parts = os.path.basename(fields[0]).split("_") if fields else []
                if not ok or len(parts) < 3 or not parts[2].isdigit():
                    raise DatasetError(
                        f"msmt17: cannot parse line {lineno} of {list_path}: {line.strip()!r}; "
                        f"expected '<pid>/<pid>_<idx>_<camera>_<...>.jpg <pid>' like "
                        f"'0000/0000_000_01_0303morning_0015_0.jpg 0'"
                    )
                camid = int(parts[2])
                if not 1 <= camid <= self.max_camid:
                    raise DatasetError(
                        f"msmt17: camera {camid} on line {lineno} of {list_path} is outside "
                        f"1..{self.max_camid}"
                    )
                path = img_dir / fields[0]
                if not path.is_file():
                    missing.append(str(path))
                out.append((str(path), int(fields[1]), camid - 1))
        if missing:
            raise DatasetNotFoundError(
                f"msmt17: {len(missing)} image(s) listed in {list_path} are missing, "
                f"e.g. {missing[0]}"
            )
        if not out:
            raise DatasetError(f"msmt17: list file {list_path} is empty; expected image lines")
        return out


# --------------------------------------------------------------------------------------------
# generated and users' own data
# --------------------------------------------------------------------------------------------


class SyntheticReID(ReIDDataset):
    """Procedurally drawn pedestrians in Market-1501 format (see :mod:`hrnet_pyg.data.synthetic`).

    Generated into ``root/synthetic`` on first use (a ``manifest.json`` records the generator
    parameters; a matching manifest means the images are reused), then parsed with the
    Market-1501 parser. Keyword arguments go to :func:`generate_synthetic_dataset`.
    """

    name = "synthetic"

    def __init__(self, root: PathLike, verify: bool = False, **kwargs: Any) -> None:
        from hrnet_pyg.data.synthetic import generate_synthetic_dataset

        root = Path(root).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        data_dir = generate_synthetic_dataset(root / "synthetic", **kwargs)
        manifest = json.loads((data_dir / "manifest.json").read_text())
        self.params: dict[str, Any] = manifest["params"]
        self.data_dir = str(data_dir)
        train, query, gallery = parse_market_splits(
            data_dir, max_camid=int(self.params["num_cams"]), dataset=self.name
        )
        super().__init__(train, query, gallery, root=data_dir)
        if verify:
            self.verify_images()


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

    * ``root/<identity>/*.jpg``: everything is the training split (query and gallery empty);
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


# --------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------

DATASETS: dict[str, Callable[..., ReIDDataset]] = {
    "market1501": Market1501,
    "dukemtmcreid": DukeMTMCreID,
    "cuhk03": CUHK03,
    "msmt17": MSMT17,
    "synthetic": SyntheticReID,
    "custom": CustomCSV,
    "folder": ImageFolderReID,
}


#: Names other libraries use -> (the name here, the options the name implies). Keys are spelled
#: as :func:`build_dataset` compares them (lower case, without ``-`` and ``_``); ALIAS_NAMES
#: keeps the spellings people type.
DATASET_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "dukemtmc": ("dukemtmcreid", {}),  # fast-reid's DukeMTMC
    "msmt17v1": ("msmt17", {"version": "MSMT17_V1"}),
    "msmt17v2": ("msmt17", {"version": "MSMT17_V2"}),  # torchreid's MSMT17_V2 folder
    "cuhk03detected": ("cuhk03", {"cuhk03_labeled": False}),
    "cuhk03labeled": ("cuhk03", {"cuhk03_labeled": True}),  # torchreid's cuhk03_labeled=True
}
ALIAS_NAMES = ("DukeMTMC", "msmt17_v1", "msmt17_v2", "cuhk03_detected", "cuhk03_labeled")


def build_dataset(name: str, root: PathLike, **kwargs: Any) -> ReIDDataset:
    """Build a dataset by name.

    Args:
        name: one of ``market1501``, ``dukemtmcreid``, ``cuhk03``, ``msmt17``, ``synthetic``,
            ``custom``, ``folder``, or an alias of :data:`DATASET_ALIASES` as torchreid and
            fast-reid spell them (``DukeMTMC``, ``msmt17_v2``, ``cuhk03_labeled``, ...);
            case-insensitive, ``-``/``_`` ignored.
        root: the data root (see ``docs/datasets.md`` for each layout).
        **kwargs: dataset options, e.g. ``verify=True`` (decode all images once),
            ``cuhk03_labeled``, ``combine_val`` (msmt17), the generator's parameters (synthetic),
            ``train``/``query``/``gallery`` CSV paths (custom).
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key in DATASET_ALIASES:
        key, implied = DATASET_ALIASES[key]
        for option, value in implied.items():
            if option in kwargs and kwargs[option] != value:
                raise ValueError(
                    f"dataset name {name!r} means {option}={value!r}, but {option}={kwargs[option]!r} "
                    f"was given; use the name {key!r} with the option instead"
                )
        kwargs = {**kwargs, **implied}
    if key not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)} "
            f"(aliases: {', '.join(ALIAS_NAMES)})"
        )
    return DATASETS[key](root, **kwargs)


def dataset_statistics(name: str, root: PathLike, **kwargs: Any) -> str:
    """The summary table of a dataset plus images-per-identity figures, as one string."""
    ds = build_dataset(name, root, **kwargs)
    lines = [ds.summary()]
    for split in ("train", "query", "gallery"):
        counts = np.array(list(Counter(r.pid for r in ds.split(split)).values()))
        if counts.size:
            lines.append(
                f"  {split:<8} images per id: min {counts.min()}, median "
                f"{float(np.median(counts)):g}, max {counts.max()}"
            )
    distractors = sum(1 for r in ds.gallery if r.pid == 0)
    if distractors and ds.name in ("market1501", "synthetic"):
        lines.append(f"  gallery distractors (pid 0): {distractors}")
    return "\n".join(lines)


__all__ = [
    "ALIAS_NAMES",
    "CUHK03",
    "CustomCSV",
    "DATASETS",
    "DATASET_ALIASES",
    "DatasetError",
    "DatasetNotFoundError",
    "DukeMTMCreID",
    "FeatureDataset",
    "IMG_EXTENSIONS",
    "ImageDataset",
    "ImageFolderReID",
    "MSMT17",
    "Market1501",
    "ReIDDataset",
    "ReIDRecord",
    "SyntheticReID",
    "build_dataset",
    "dataset_statistics",
    "extract_cuhk03_images",
    "parse_market_dir",
    "read_image",
]
