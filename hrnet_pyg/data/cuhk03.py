"""CUHK03 (Li et al., CVPR 2014) under the 767/700 protocol, and the extraction of its ``.mat`` release."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import (
    Any,
)

import numpy as np
from PIL import Image

from hrnet_pyg.data.base import (
    DatasetError,
    DatasetNotFoundError,
    PathLike,
    Records,
    ReIDDataset,
    ReIDRecord,
    _check_root,
    _locate_split_root,
    _not_found,
    _relabel,
    _unique_paths,
    parse_market_splits,
)
from hrnet_pyg.runtime import Progress


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
        with Progress(len(pairs), f"extract cuhk03 {kind}", show=progress, unit="camera pairs", leave=True) as bar:
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


__all__ = ["CUHK03", "extract_cuhk03_images"]
