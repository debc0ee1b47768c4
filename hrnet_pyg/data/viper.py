"""VIPeR (Gray, Brennan, Tao, PETS 2007): 632 identities, one image in each of two cameras."""
from __future__ import annotations

import re

from hrnet_pyg.data.base import (
    DatasetError,
    PathLike,
    ReIDDataset,
    ReIDRecord,
    check_root_for,
    check_split_id,
    find_dataset_folder,
    index_one_per_person,
    seeded_split,
)

#: ``NNN_ANGLE.bmp``: the person's number (shared by the two cameras) and the viewpoint angle.
VIPER_PATTERN = re.compile(r"^(\d+)_(\d+)\.\w+$")
VIPER_LAYOUT = "viper/VIPeR/cam_a and viper/VIPeR/cam_b with one image NNN_ANGLE.bmp per person in each"


class VIPeR(ReIDDataset):
    """VIPeR (Gray, Brennan, Tao, PETS 2007) under its standard protocol: 316 identities train,
    316 test, 10 random splits.

    Each person has one image in ``cam_a`` and one in ``cam_b``, paired by the number before the
    ``_`` (``000_45.bmp`` / ``000_90.bmp``). Split ``split_id`` draws half of the persons for
    training (both their images, relabelled ``0..P-1``); the other half is the test set with
    query = their ``cam_a`` images and gallery = their ``cam_b`` images (camid 0 and 1), or the
    other way round with ``swap=True``. Query and gallery pids are the persons' numbers.

    Layouts accepted (first match wins): ``root/viper/VIPeR``, ``root/VIPeR``, ``root/viper``,
    ``root`` -- whichever holds ``cam_a`` and ``cam_b``.

    Args:
        root: the data root (the folder holding ``viper/``).
        split_id: the random split (:func:`~hrnet_pyg.data.base.seeded_split`); 0..9 are the ten
            the literature reports. (default: ``0``)
        swap: query ``cam_b``, gallery ``cam_a`` (the literature averages both directions).
            (default: ``False``)
        verify: decode every image once. (default: ``False``)
    """

    name = "viper"
    example = "000_45.bmp"
    num_cameras = 2

    def __init__(self, root: PathLike, split_id: int = 0, swap: bool = False, verify: bool = False) -> None:
        split_id = check_split_id(split_id, self.name)
        if not isinstance(swap, bool):
            raise ValueError(f"viper: swap must be true or false, got {swap!r}")
        base = check_root_for(root, self.name, VIPER_LAYOUT)
        candidates = [base / "viper" / "VIPeR", base / "VIPeR", base / "viper", base]
        data_dir = find_dataset_folder(self.name, base, candidates, ("cam_a", "cam_b"), VIPER_LAYOUT)
        self.data_dir = str(data_dir)
        cams = [
            index_one_per_person(data_dir / cam, VIPER_PATTERN, self.name, self.example)
            for cam in ("cam_a", "cam_b")
        ]
        only = [sorted(set(cams[i]) - set(cams[1 - i])) for i in (0, 1)]
        for i, cam in enumerate(("cam_a", "cam_b")):
            if only[i]:
                other = ("cam_b", "cam_a")[i]
                raise DatasetError(
                    f"viper: {len(only[i])} person(s) of {data_dir / cam} have no image in {data_dir / other}, "
                    f"e.g. {cams[i][only[i][0]].name}; every person needs one image in each camera"
                )
        persons = sorted(cams[0])
        if len(persons) < 2:
            raise DatasetError(f"viper: {data_dir} holds {len(persons)} person(s); a split needs at least 2")
        num_train = len(persons) // 2
        train_ids, test_ids = seeded_split(persons, num_train, split_id)
        label = {pid: i for i, pid in enumerate(train_ids)}
        train = [ReIDRecord(str(cams[c][pid]), label[pid], c) for pid in train_ids for c in (0, 1)]
        q_cam, g_cam = (1, 0) if swap else (0, 1)
        query = [ReIDRecord(str(cams[q_cam][pid]), pid, q_cam) for pid in test_ids]
        gallery = [ReIDRecord(str(cams[g_cam][pid]), pid, g_cam) for pid in test_ids]
        self.split_id, self.swap = split_id, swap
        self.train_ids, self.test_ids = train_ids, test_ids
        q_name, g_name = ("cam_b", "cam_a") if swap else ("cam_a", "cam_b")
        protocol = (
            f"split {split_id} (seeded random, docs/datasets.md): {len(train_ids)} persons train, "
            f"{len(test_ids)} test; query {q_name}, gallery {g_name}"
        )
        super().__init__(train, query, gallery, root=data_dir, protocol=protocol)
        if verify:
            self.verify_images()


__all__ = ["VIPeR"]
