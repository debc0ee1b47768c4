"""MSMT17 (Wei et al., CVPR 2018)."""
from __future__ import annotations

import os
from pathlib import Path

from hrnet_pyg.data.base import (
    DatasetError,
    DatasetNotFoundError,
    PathLike,
    ReIDDataset,
    _check_root,
    _relabel,
    _unique_paths,
)

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


__all__ = ["MSMT17"]
