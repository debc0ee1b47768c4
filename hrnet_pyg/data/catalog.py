"""The datasets by name: :data:`DATASETS`, the aliases other libraries use, :func:`build_dataset`."""
from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable, Mapping
from typing import (
    Any,
)

import numpy as np

from hrnet_pyg.data.base import (
    PathLike,
    ReIDDataset,
)
from hrnet_pyg.data.caviar import CAVIAR4REID
from hrnet_pyg.data.cuhk03 import CUHK03
from hrnet_pyg.data.custom import CustomCSV, ImageFolderReID
from hrnet_pyg.data.dukemtmc import DukeMTMCreID
from hrnet_pyg.data.grid import GRID
from hrnet_pyg.data.joint import ReIDSmallJoint
from hrnet_pyg.data.market1501 import Market1501
from hrnet_pyg.data.msmt17 import MSMT17
from hrnet_pyg.data.prid import PRID2011
from hrnet_pyg.data.synthetic import SyntheticReID, generate_synthetic_dataset
from hrnet_pyg.data.viper import VIPeR

DATASETS: dict[str, Callable[..., ReIDDataset]] = {
    "market1501": Market1501,
    "dukemtmcreid": DukeMTMCreID,
    "cuhk03": CUHK03,
    "msmt17": MSMT17,
    "viper": VIPeR,
    "prid2011": PRID2011,
    "grid": GRID,
    "caviar4reid": CAVIAR4REID,
    "reid_small_joint": ReIDSmallJoint,
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
    "prid": ("prid2011", {}),  # torchreid's and fast-reid's single-shot PRID
    "caviar": ("caviar4reid", {}),
    "caviara": ("caviar4reid", {}),  # fast-reid's CAVIARa
    "reidsmall": ("reid_small_joint", {}),
}
ALIAS_NAMES = (
    "DukeMTMC", "msmt17_v1", "msmt17_v2", "cuhk03_detected", "cuhk03_labeled", "prid", "caviar", "CAVIARa",
    "reid_small",
)


def _normalise(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


# Registry names as build_dataset compares them (reid_small_joint -> reidsmalljoint).
_KEYS = {_normalise(n): n for n in DATASETS}


def _canonical(name: str) -> str:
    """The :data:`DATASETS` key of ``name`` or of the alias ``name``; ``ValueError`` listing the valid names."""
    key = _normalise(name)
    key = _normalise(DATASET_ALIASES[key][0]) if key in DATASET_ALIASES else key
    if key not in _KEYS:
        raise ValueError(
            f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)} "
            f"(aliases: {', '.join(ALIAS_NAMES)})"
        )
    return _KEYS[key]


def dataset_options(name: str) -> list[str]:
    """The keyword options :func:`build_dataset` takes for the dataset ``name`` (aliases too)."""
    key = _canonical(name)
    params = list(inspect.signature(DATASETS[key]).parameters.values())
    if key == "synthetic":  # SyntheticReID passes its **kwargs on to the generator
        params += list(inspect.signature(generate_synthetic_dataset).parameters.values())
    skip = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    return [p.name for p in params if p.name != "root" and p.kind not in skip]


def check_dataset_options(name: str, options: Mapping[str, Any], where: str | None = None) -> None:
    """Raise ``ValueError`` naming the first of ``options`` that the dataset ``name`` does not take.

    ``where`` names the mapping the options came from (``data.kwargs``): the message then
    starts with ``data.kwargs.<key>:``.
    """
    valid = dataset_options(name)
    unknown = [key for key in options if key not in valid]
    if unknown:
        prefix = f"{where}.{unknown[0]}: " if where else ""
        raise ValueError(
            f"{prefix}dataset {_canonical(name)!r} has no option {unknown[0]!r}; its options: {', '.join(valid)}"
        )


def build_dataset(name: str, root: PathLike, **kwargs: Any) -> ReIDDataset:
    """Build a dataset by name.

    Args:
        name: one of ``market1501``, ``dukemtmcreid``, ``cuhk03``, ``msmt17``, ``viper``,
            ``prid2011``, ``grid``, ``caviar4reid``, ``reid_small_joint``, ``synthetic``,
            ``custom``, ``folder``, or an alias of :data:`DATASET_ALIASES` as torchreid and
            fast-reid spell them (``DukeMTMC``, ``msmt17_v2``, ``cuhk03_labeled``, ``prid``, ...);
            case-insensitive, ``-``/``_`` ignored.
        root: the data root (see ``docs/datasets.md`` for each layout).
        **kwargs: dataset options, e.g. ``verify=True`` (decode all images once),
            ``split_id`` (viper, prid2011, grid, caviar4reid, reid_small_joint), ``swap`` (viper),
            ``test`` (reid_small_joint), ``cuhk03_labeled``, ``combine_val`` (msmt17), the
            generator's parameters (synthetic), ``train``/``query``/``gallery`` CSV paths (custom).
            An option the dataset does not take raises ``ValueError`` naming it and listing those
            it takes.
    """
    check_dataset_options(name, kwargs)
    key = _normalise(name)
    if key in DATASET_ALIASES:
        target, implied = DATASET_ALIASES[key]
        for option, value in implied.items():
            if option in kwargs and kwargs[option] != value:
                raise ValueError(
                    f"dataset name {name!r} means {option}={value!r}, but {option}={kwargs[option]!r} "
                    f"was given; use the name {target!r} with the option instead"
                )
        kwargs = {**kwargs, **implied}
        key = _normalise(target)
    if key not in _KEYS:
        raise ValueError(
            f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)} "
            f"(aliases: {', '.join(ALIAS_NAMES)})"
        )
    return DATASETS[_KEYS[key]](root, **kwargs)


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
    elif ds.query:
        query_pids = {r.pid for r in ds.query}
        others = sum(1 for r in ds.gallery if r.pid not in query_pids)
        if others:
            lines.append(f"  gallery distractors (no query of their identity): {others}")
    return "\n".join(lines)


__all__ = [
    "ALIAS_NAMES", "DATASETS", "DATASET_ALIASES", "build_dataset", "check_dataset_options", "dataset_options",
    "dataset_statistics",
]
