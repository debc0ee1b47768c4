"""The four small datasets (VIPeR, PRID 2011, GRID, CAVIAR4REID) trained on jointly."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hrnet_pyg.data.base import (
    PathLike,
    Records,
    ReIDDataset,
    ReIDRecord,
    check_root_for,
    check_split_id,
)
from hrnet_pyg.data.caviar import CAVIAR4REID
from hrnet_pyg.data.grid import GRID
from hrnet_pyg.data.prid import PRID2011
from hrnet_pyg.data.viper import VIPeR

#: The members in the order their training identities are numbered.
JOINT_MEMBERS: dict[str, Callable[..., ReIDDataset]] = {
    "viper": VIPeR,
    "prid2011": PRID2011,
    "grid": GRID,
    "caviar4reid": CAVIAR4REID,
}


class ReIDSmallJoint(ReIDDataset):
    """The union of the training splits of VIPeR, PRID 2011, GRID and CAVIAR4REID, tested on one
    of their four test sets.

    Every member is built from the same ``root`` with the same ``split_id`` (each under its own
    protocol). Training identities stay apart: a member's training labels are shifted by the
    number of training identities of the members before it (order ``viper``, ``prid2011``,
    ``grid``, ``caviar4reid``: 316 + 100 + 125 + 47 = 588 identities, 1,802 images), and its
    cameras by the number of cameras before it (camids 0-1, 2-3, 4-11, 12-13). ``query`` and
    ``gallery`` are the test set of the member named by ``test``, unchanged; a member's test
    identities never appear in the union's training set, since both come from the same split.
    The four test sets: :attr:`members` (each member dataset) or :meth:`test_set`.

    Args:
        root: the data root holding ``viper/``, ``prid2011/``, ``grid/`` and ``caviar4reid/``.
        split_id: the split of every member. (default: ``0``)
        test: the member whose test set is ``query``/``gallery``. (default: ``"viper"``)
        swap: VIPeR's swapped direction (query ``cam_b``). (default: ``False``)
        verify: decode every image once. (default: ``False``)
    """

    name = "reid_small_joint"

    def __init__(
        self, root: PathLike, split_id: int = 0, test: str = "viper", swap: bool = False, verify: bool = False
    ) -> None:
        split_id = check_split_id(split_id, self.name)
        if test not in JOINT_MEMBERS:
            raise ValueError(f"{self.name}: test must be one of {', '.join(JOINT_MEMBERS)}, got {test!r}")
        base = check_root_for(root, self.name, "viper/, prid2011/, grid/ and caviar4reid/ (reid-small)")
        self.members: dict[str, ReIDDataset] = {}
        for member, cls in JOINT_MEMBERS.items():
            kwargs: dict[str, Any] = {"split_id": split_id}
            if member == "viper":
                kwargs["swap"] = swap
            self.members[member] = cls(base, **kwargs)
        train: Records = []
        self.pid_offsets: dict[str, int] = {}
        self.camid_offsets: dict[str, int] = {}
        pid_offset = camid_offset = 0
        for member, ds in self.members.items():
            self.pid_offsets[member], self.camid_offsets[member] = pid_offset, camid_offset
            train += [ReIDRecord(r.img_path, r.pid + pid_offset, r.camid + camid_offset) for r in ds.train]
            pid_offset += ds.num_train_pids
            cams = ds.num_cameras
            assert cams is not None  # each member's layout fixes its cameras
            camid_offset += cams
        chosen = self.members[test]
        self.split_id, self.test = split_id, test
        protocol = (
            f"split {split_id} of every member (members' lines below), training sets joined; "
            f"query/gallery: the test set of {test}"
        )
        super().__init__(train, chosen.query, chosen.gallery, root=base, protocol=protocol)
        if verify:
            self.verify_images()

    def test_set(self, name: str) -> tuple[Records, Records]:
        """``(query, gallery)`` of member ``name``'s test set under this split."""
        if name not in self.members:
            raise ValueError(f"{self.name}: no member {name!r}; members: {', '.join(self.members)}")
        ds = self.members[name]
        return ds.query, ds.gallery

    def summary(self) -> str:
        rows = [super().summary(), "  members (training ids after the offset | test set):"]
        for member, ds in self.members.items():
            lo = self.pid_offsets[member]
            rows.append(
                f"  {member:<12} train ids {lo}..{lo + ds.num_train_pids - 1} ({ds.num_train_imgs} images) | "
                f"query {ds.num_query_imgs}, gallery {ds.num_gallery_imgs}"
                + ("  <- query/gallery" if member == self.test else "")
            )
        return "\n".join(rows)


__all__ = ["JOINT_MEMBERS", "ReIDSmallJoint"]
