"""CAVIAR4REID (Cheng, Cristani, Stoppa, Bazzani, Murino, BMVC 2011): multi-shot, two cameras."""
from __future__ import annotations

import re
from collections import defaultdict

from hrnet_pyg.data.base import (
    DatasetError,
    PathLike,
    ReIDDataset,
    ReIDRecord,
    _list_images,
    check_root_for,
    check_split_id,
    dataset_not_found,
    scan_named_images,
    seeded_split,
)

#: ``PPPP_III.jpg``: person and image number; images 1-10 come from one camera, 11-20 from the other.
CAVIAR_PATTERN = re.compile(r"^(\d+)_(\d+)\.\w+$")
CAVIAR_LAYOUT = "caviar4reid/ with PPPP_III.jpg images (III 001-010 one camera, 011-020 the other)"
IMAGES_PER_CAMERA = 10


class CAVIAR4REID(ReIDDataset):
    """CAVIAR4REID (Cheng et al., BMVC 2011), multi-shot: 72 persons, 10 images per camera;
    50 seen by both cameras, 22 by one.

    The split (this library's; the dataset's paper evaluates without training): of the persons
    seen by both cameras, half (25) train and half test, drawn by
    :func:`~hrnet_pyg.data.base.seeded_split` with ``split_id``. Training holds all images of the
    25 plus, with ``single_camera_train=True``, all images of the one-camera persons (47 persons,
    720 images; relabelled ``0..P-1``). The query is the test persons' camera-1 images (001-010,
    camid 0) and the gallery their camera-2 images (011-020, camid 1): 250 each, every query with
    10 true matches. Evaluation is image to image; no multi-shot pooling of a person's images.
    One-camera persons have images 001-010 only and get camid 0.

    Layouts accepted (first match wins): ``root/caviar4reid``, ``root/CAVIAR4REID``,
    ``root/CAVIARa`` (fast-reid's folder), ``root`` -- the first that holds ``PPPP_III.jpg`` images.

    Args:
        root: the data root (the folder holding ``caviar4reid/``).
        split_id: the random split; 0..9 are the ten reported. (default: ``0``)
        single_camera_train: add the one-camera persons to training. (default: ``True``)
        verify: decode every image once. (default: ``False``)
    """

    name = "caviar4reid"
    example = "0001_001.jpg"
    num_cameras = 2

    def __init__(
        self, root: PathLike, split_id: int = 0, single_camera_train: bool = True, verify: bool = False
    ) -> None:
        split_id = check_split_id(split_id, self.name)
        if not isinstance(single_camera_train, bool):
            raise ValueError(f"caviar4reid: single_camera_train must be true or false, got {single_camera_train!r}")
        base = check_root_for(root, self.name, CAVIAR_LAYOUT)
        named = [base / "caviar4reid", base / "CAVIAR4REID", base / "CAVIARa"]
        data_dir = next((d for d in named if d.is_dir()), None)
        if data_dir is None:  # root itself, when it holds the images
            if not any(CAVIAR_PATTERN.match(p.name) for p in _list_images(base)):
                raise dataset_not_found(self.name, base, [*named, base], CAVIAR_LAYOUT)
            data_dir = base
        self.data_dir = str(data_dir)
        images: dict[int, list[list[str]]] = defaultdict(lambda: [[], []])
        for path, match in scan_named_images(data_dir, CAVIAR_PATTERN, self.name, self.example):
            pid, num = int(match.group(1)), int(match.group(2))
            if not 1 <= num <= 2 * IMAGES_PER_CAMERA:
                raise DatasetError(
                    f"caviar4reid: image number {num} in file name {path} is outside 1..{2 * IMAGES_PER_CAMERA}"
                )
            images[pid][(num - 1) // IMAGES_PER_CAMERA].append(str(path))
        two_cams = sorted(p for p, (a, b) in images.items() if a and b)
        one_cam = sorted(p for p, (a, b) in images.items() if not (a and b))
        if len(two_cams) < 2:
            raise DatasetError(
                f"caviar4reid: {data_dir} holds {len(two_cams)} person(s) with images of both cameras; "
                f"a split needs at least 2"
            )
        train_ids, test_ids = seeded_split(two_cams, len(two_cams) // 2, split_id)
        train_persons = sorted(train_ids + one_cam) if single_camera_train else train_ids
        label = {pid: i for i, pid in enumerate(train_persons)}
        train = [ReIDRecord(path, label[pid], cam) for pid in train_persons
                 for cam in (0, 1) for path in images[pid][cam]]
        query = [ReIDRecord(path, pid, 0) for pid in test_ids for path in images[pid][0]]
        gallery = [ReIDRecord(path, pid, 1) for pid in test_ids for path in images[pid][1]]
        self.split_id = split_id
        self.train_ids, self.test_ids, self.single_camera_ids = train_ids, test_ids, one_cam
        extra = f" + {len(one_cam)} one-camera persons" if single_camera_train and one_cam else ""
        protocol = (
            f"split {split_id} (seeded random, docs/datasets.md): {len(train_ids)} two-camera persons "
            f"train{extra}, {len(test_ids)} test; query camera 1 (images 1-10), gallery camera 2 (11-20)"
        )
        super().__init__(train, query, gallery, root=data_dir, protocol=protocol)
        if verify:
            self.verify_images()


__all__ = ["CAVIAR4REID"]
