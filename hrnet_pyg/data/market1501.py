"""Market-1501 (Zheng et al., ICCV 2015)."""
from __future__ import annotations

from hrnet_pyg.data.base import (
    PathLike,
    ReIDDataset,
    _check_root,
    _find_split_root,
    parse_market_splits,
)


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


__all__ = ["Market1501"]
