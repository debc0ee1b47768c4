"""GRID, the QMUL underGround Re-IDentification dataset (Loy, Xiang, Gong, 2009/2010)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from hrnet_pyg.data.base import (
    DatasetError,
    PathLike,
    ReIDDataset,
    ReIDRecord,
    check_root_for,
    check_split_id,
    find_dataset_folder,
    scan_named_images,
    seeded_split,
)

#: ``PPPP_C_FRAME_X_Y_W_H.jpeg``: person (``0000`` = distractor) and camera (1-8).
GRID_PATTERN = re.compile(r"^(\d+)_(\d+)_")
GRID_LAYOUT = (
    "grid/underground_reid/probe and .../gallery with PPPP_C_*.jpeg names (PPPP 0000 = distractor, C the camera)"
)
#: The partition file of the GRID release (10 splits of 125 training persons).
GRID_PARTITION_FILE = "features_and_partitions.mat"


class GRID(ReIDDataset):
    """GRID (Loy et al., CVPR 2009 / IJCV 2010) under the standard protocol: of the 250 persons
    seen by two of the 8 cameras, 125 train and 125 test; 10 splits.

    ``probe/`` holds one image of each of the 250 persons, ``gallery/`` their other image plus 775
    images of people seen once (person ``0000``). The camera is the second field of the name
    (camid = field - 1). Training takes both images of 125 persons (relabelled ``0..124``); the
    query is the other 125 persons' probe images, the gallery their gallery images plus all 775
    distractors (900 images; the distractors keep pid 0 and never match a query).

    The splits: the release's ``features_and_partitions.mat`` (``trainIdxAll``, read with scipy)
    when it sits in the ``underground_reid`` folder, as torchreid reads it; without it, seeded
    random splits (:func:`~hrnet_pyg.data.base.seeded_split`) of the same sizes, which the
    dataset's ``protocol`` line says. ``split_source`` is ``"features_and_partitions.mat"`` or
    ``"seeded random"``.

    Layouts accepted (first match wins): ``root/grid/underground_reid``,
    ``root/underground_reid``, ``root/grid``, ``root`` -- whichever holds ``probe`` and
    ``gallery``.

    Args:
        root: the data root (the folder holding ``grid/``).
        split_id: the split; 0..9 with the partition file, any integer >= 0 without it.
            (default: ``0``)
        verify: decode every image once. (default: ``False``)
    """

    name = "grid"
    example = "0001_1_25004_107_32_106_221.jpeg"
    num_cameras = 8  # camid = camera field - 1

    def __init__(self, root: PathLike, split_id: int = 0, verify: bool = False) -> None:
        base = check_root_for(root, self.name, GRID_LAYOUT)
        candidates = [base / "grid" / "underground_reid", base / "underground_reid", base / "grid", base]
        data_dir = find_dataset_folder(self.name, base, candidates, ("probe", "gallery"), GRID_LAYOUT)
        self.data_dir = str(data_dir)
        probe = self._read(data_dir / "probe")
        gallery_all = self._read(data_dir / "gallery")

        probe_of: dict[int, tuple[str, int]] = {}
        for path, pid, cam in probe:
            if pid == 0:
                raise DatasetError(
                    f"grid: {path} is a distractor (person 0000) in probe/; distractors belong in gallery/"
                )
            if pid in probe_of:
                raise DatasetError(f"grid: two probe images of person {pid}: {probe_of[pid][0]} and {path}")
            probe_of[pid] = (path, cam)
        gallery_of: dict[int, tuple[str, int]] = {}
        distractors: list[ReIDRecord] = []
        for path, pid, cam in gallery_all:
            if pid == 0:
                distractors.append(ReIDRecord(path, 0, cam))
            elif pid not in probe_of:
                raise DatasetError(
                    f"grid: gallery image {path} of person {pid} has no probe image in {data_dir / 'probe'}"
                )
            elif pid in gallery_of:
                raise DatasetError(f"grid: two gallery images of person {pid}: {gallery_of[pid][0]} and {path}")
            else:
                gallery_of[pid] = (path, cam)
        unmatched = sorted(set(probe_of) - set(gallery_of))
        if unmatched:
            raise DatasetError(
                f"grid: {len(unmatched)} probe person(s) have no gallery image, e.g. {probe_of[unmatched[0]][0]}; "
                f"every person of probe/ needs one image in gallery/"
            )
        persons = sorted(probe_of)
        if len(persons) < 2:
            raise DatasetError(f"grid: {data_dir / 'probe'} holds {len(persons)} person(s); a split needs at least 2")

        partition = data_dir / GRID_PARTITION_FILE
        if partition.is_file():
            splits = read_grid_partitions(partition)
            split_id = check_split_id(split_id, self.name, num_splits=len(splits))
            train_ids = sorted(splits[split_id])
            strangers = [p for p in train_ids if p not in probe_of]
            if strangers:
                raise DatasetError(
                    f"grid: split {split_id} of {partition} names person(s) {strangers[:5]} that probe/ lacks"
                )
            test_ids = sorted(set(persons) - set(train_ids))
            self.split_source = GRID_PARTITION_FILE
            source = f"{partition.name}"
        else:
            split_id = check_split_id(split_id, self.name)
            train_ids, test_ids = seeded_split(persons, len(persons) // 2, split_id)
            self.split_source = "seeded random"
            source = f"seeded random, docs/datasets.md; no {GRID_PARTITION_FILE} in {data_dir}"
        label = {pid: i for i, pid in enumerate(train_ids)}
        train = [ReIDRecord(view[pid][0], label[pid], view[pid][1]) for pid in train_ids
                 for view in (probe_of, gallery_of)]
        query = [ReIDRecord(probe_of[pid][0], pid, probe_of[pid][1]) for pid in test_ids]
        gallery = [ReIDRecord(gallery_of[pid][0], pid, gallery_of[pid][1]) for pid in test_ids] + distractors
        self.split_id = split_id
        self.train_ids, self.test_ids = train_ids, test_ids
        self.num_distractors = len(distractors)
        protocol = (
            f"split {split_id} ({source}): {len(train_ids)} persons train, {len(test_ids)} test; query probe, "
            f"gallery their other image + {len(distractors)} distractors"
        )
        super().__init__(train, query, gallery, root=data_dir, protocol=protocol)
        if verify:
            self.verify_images()

    def _read(self, dir_path: Path) -> list[tuple[str, int, int]]:
        out = []
        for path, match in scan_named_images(dir_path, GRID_PATTERN, self.name, self.example):
            pid, cam = int(match.group(1)), int(match.group(2))
            if not 1 <= cam <= self.num_cameras:
                raise DatasetError(f"grid: camera {cam} in file name {path} is outside 1..{self.num_cameras}")
            out.append((str(path), pid, cam - 1))  # camid 0-based
        return out


def read_grid_partitions(path: Path) -> list[list[int]]:
    """The training persons of each split in GRID's ``features_and_partitions.mat``.

    ``trainIdxAll`` is a 1 x S cell array; entry ``s`` is a struct whose third field holds the
    1-based numbers of split ``s``'s training persons (torchreid reads
    ``trainIdxAll[0][s][0][0][2][0]``). A plain numeric array per entry is accepted too.
    """
    try:
        from scipy.io import loadmat
    except ImportError as exc:  # optional dependency, only for the partition file
        raise ImportError(
            f"reading {path} needs scipy: pip install scipy (or remove the file to use seeded random splits)"
        ) from exc
    try:
        mat = loadmat(str(path))
    except Exception as exc:  # scipy raises several types for a damaged file
        raise DatasetError(f"grid: cannot read the partition file {path}: {exc}") from exc
    if "trainIdxAll" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetError(f"grid: partition file {path} has no 'trainIdxAll'; found {found}")
    splits = []
    for s, entry in enumerate(np.asarray(mat["trainIdxAll"], dtype=object).reshape(-1)):
        value: Any = entry
        if isinstance(value, np.ndarray) and value.dtype.names:
            if len(value.dtype.names) < 3 or value.size != 1:
                raise DatasetError(
                    f"grid: split {s} of {path} ('trainIdxAll') is a struct without a third field "
                    f"(the training persons); fields {value.dtype.names}"
                )
            value = value.reshape(-1)[0][2]
        arr = np.asarray(value)
        if arr.size == 0 or not np.issubdtype(arr.dtype, np.number):
            raise DatasetError(f"grid: split {s} of {path} ('trainIdxAll') is not a list of person numbers")
        ids = [int(v) for v in arr.reshape(-1)]
        if len(set(ids)) != len(ids):
            raise DatasetError(f"grid: split {s} of {path} ('trainIdxAll') lists a person twice")
        splits.append(ids)
    if not splits:
        raise DatasetError(f"grid: partition file {path} holds no split ('trainIdxAll' is empty)")
    return splits


__all__ = ["GRID", "read_grid_partitions"]
