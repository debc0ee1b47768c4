"""DukeMTMC-reID (Ristani et al. 2016; Zheng et al. 2017): Market-1501's layout and names."""
from __future__ import annotations

from hrnet_pyg.data.market1501 import Market1501


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


__all__ = ["DukeMTMCreID"]
