"""PRID 2011, single shot (Hirzer, Beleznai, Roth, Bischof, SCIA 2011)."""
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

PRID_PATTERN = re.compile(r"^person_(\d+)\.\w+$")
PRID_LAYOUT = (
    "prid2011/prid_2011/single_shot/cam_a and .../cam_b with person_NNNN.png, persons 1-200 in both"
)


class PRID2011(ReIDDataset):
    """PRID 2011, single shot (Hirzer et al., SCIA 2011) under the standard protocol
    (torchreid's ``prid``): of the 200 persons seen by both cameras, 100 train and 100 test;
    10 random splits.

    The release numbers the persons of each view from 1; persons 1-200 are the same people in
    both views, higher numbers are different people in each view (385 in view a, 749 in view b).
    Split ``split_id`` draws 100 of persons 1-200 for training (both images, relabelled
    ``0..99``); the other 100 give the query (their view-a image, camid 0) and the gallery (their
    view-b image, camid 1), and every view-b person above 200 joins the gallery as a distractor
    (549 images, 649 in all). View-a persons above 200 have no match and are not used.

    Layouts accepted (first match wins): ``root/prid2011/prid_2011/single_shot``,
    ``root/prid_2011/single_shot``, ``root/prid2011/single_shot``, ``root/single_shot``, ``root``
    -- whichever holds ``cam_a`` and ``cam_b``.

    Args:
        root: the data root (the folder holding ``prid2011/``).
        split_id: the random split (:func:`~hrnet_pyg.data.base.seeded_split`); 0..9 are the ten
            the literature reports. (default: ``0``)
        verify: decode every image once. (default: ``False``)
    """

    name = "prid2011"
    example = "person_0001.png"
    num_cameras = 2
    #: Persons 1..num_paired appear in both views (the release's documentation).
    num_paired = 200

    def __init__(self, root: PathLike, split_id: int = 0, verify: bool = False) -> None:
        split_id = check_split_id(split_id, self.name)
        base = check_root_for(root, self.name, PRID_LAYOUT)
        candidates = [
            base / "prid2011" / "prid_2011" / "single_shot",
            base / "prid_2011" / "single_shot",
            base / "prid2011" / "single_shot",
            base / "single_shot",
            base,
        ]
        data_dir = find_dataset_folder(self.name, base, candidates, ("cam_a", "cam_b"), PRID_LAYOUT)
        self.data_dir = str(data_dir)
        cam_a, cam_b = (
            index_one_per_person(data_dir / cam, PRID_PATTERN, self.name, self.example)
            for cam in ("cam_a", "cam_b")
        )
        paired = list(range(1, self.num_paired + 1))
        for cam, found in (("cam_a", cam_a), ("cam_b", cam_b)):
            missing = [p for p in paired if p not in found]
            if missing:
                raise DatasetError(
                    f"prid2011: {len(missing)} of persons 1-{self.num_paired} have no image in "
                    f"{data_dir / cam}, e.g. person_{missing[0]:04d}.png; the protocol needs persons "
                    f"1-{self.num_paired} in both views"
                )
        train_ids, test_ids = seeded_split(paired, self.num_paired // 2, split_id)
        label = {pid: i for i, pid in enumerate(train_ids)}
        train = [ReIDRecord(str(view[pid]), label[pid], c) for pid in train_ids
                 for c, view in enumerate((cam_a, cam_b))]
        query = [ReIDRecord(str(cam_a[pid]), pid, 0) for pid in test_ids]
        distractors = sorted(p for p in cam_b if p > self.num_paired)
        gallery = [ReIDRecord(str(cam_b[pid]), pid, 1) for pid in test_ids + distractors]
        self.split_id = split_id
        self.train_ids, self.test_ids = train_ids, test_ids
        self.num_distractors = len(distractors)
        protocol = (
            f"split {split_id} (seeded random, docs/datasets.md): {len(train_ids)} of persons "
            f"1-{self.num_paired} train, {len(test_ids)} test; query cam_a, gallery cam_b "
            f"+ {len(distractors)} cam_b-only distractors"
        )
        super().__init__(train, query, gallery, root=data_dir, protocol=protocol)
        if verify:
            self.verify_images()


__all__ = ["PRID2011"]
