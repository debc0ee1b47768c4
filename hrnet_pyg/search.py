"""Features of one's own images and image search (``hrnet-pyg extract --images``, ``hrnet-pyg search``).

The data flow is the paper's test protocol (Sec. 4.2 "Testing") applied to arbitrary images::

    image folder / CSV / single image -(test transform, backbone)-> F (N, d)   [extract_images]
        -> BN(F), cosine shortlist of ``top_k_rerank`` = 120 gallery images per query
        -> query + shortlist as one graph through the IR and PR modules       [relational_rerank]
        -> ranked list (rank, path, cosine distance, relational score)        [search_features]

Saved feature files (``.npz``) hold F, the CNN features *before* the BNNeck, because the
relational re-ranking takes F (the graph modules' input); the BN features used for the
cosine shortlist are recomputed from F by the model (``HRNet.retrieval_features``).

Labels are optional: a CSV may carry ``pid``/``camid`` columns, Market-1501 style file names
(``0002_c1s1_000451_03.jpg``) give both, a folder-per-identity layout gives ``pid``; without
labels everything works, only the ranked-list grid then draws neutral borders instead of
green/red match borders.
"""
from __future__ import annotations

import hashlib
import math
import os
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch
from torch import Tensor

from hrnet_pyg.data.base import (
    IMG_EXTENSIONS,
    MARKET_PATTERN,
    DatasetError,
    DatasetNotFoundError,
    ImageDataset,
)
from hrnet_pyg.data.transforms import build_transforms
from hrnet_pyg.evaluation import cosine_distance
from hrnet_pyg.rerank import relational_rerank
from hrnet_pyg.runtime import atomic_write, resolve_device, unwrap_model
from hrnet_pyg.topk import stable_k_smallest
from hrnet_pyg.visualize import RankedGrid, ranked_list_grid

if TYPE_CHECKING:  # pragma: no cover
    from hrnet_pyg.model import HRNetModule as HRNet

PathLike = Union[str, "os.PathLike[str]"]

#: How labels of a folder (or single image) are found; CSV files carry their own columns.
#: ``auto``: Market-1501 style names when every file name parses, else none.
#: ``market``: pid and camera from Market-1501 style names (an error when one does not parse).
#: ``folder``: pid = name of the image's parent folder (``root/<identity>/<image>``), no camera.
#: ``none``: no labels.
LABEL_MODES = ("auto", "market", "folder", "none")

#: Feature files written by :meth:`ImageFeatures.save` (``format`` entry of the .npz).
FEATURES_FORMAT = "hrnet_pyg.features.v1"

# Border colour of ranked-list grid cells whose match is unknown (no identity labels).
UNKNOWN_COLOR = (150, 150, 150)


# ---------------------------------------------------------------------------- image lists
@dataclass
class ImageList:
    """Image files plus their labels when known (``None`` when not)."""

    paths: list[str]  # absolute paths, in a deterministic (sorted or CSV) order
    pids: np.ndarray | None = None  # (N,) int64, or str when identities are names
    camids: np.ndarray | None = None  # (N,) int64, 0-based
    source: str = ""  # what the list was read from (for messages)

    def __len__(self) -> int:
        return len(self.paths)


def _is_image_file(p: Path) -> bool:
    return p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith(".") and p.is_file()


def _scan_folder(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursively), sorted; hidden files and folders skipped."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            p = Path(dirpath) / name
            if _is_image_file(p):
                out.append(p)
    return sorted(out, key=lambda p: str(p))


def _market_labels(files: Sequence[Path], strict: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    pids, camids = [], []
    for p in files:
        m = MARKET_PATTERN.match(p.name)
        if m is None:
            if strict:
                raise DatasetError(
                    f"labels='market': cannot parse identity/camera from file name {p}; expected "
                    "'<pid>_c<camera>...' like 0002_c1s1_000451_03.jpg"
                )
            return None, None
        pids.append(int(m.group(1)))
        camids.append(int(m.group(2)) - 1)  # file names count cameras from 1
    return np.asarray(pids, dtype=np.int64), np.asarray(camids, dtype=np.int64)


def _folder_labels(files: Sequence[Path], root: Path) -> np.ndarray:
    names = []
    for p in files:
        if p.parent == root:
            raise DatasetError(
                f"labels='folder': {p} sits directly in {root}; expected one sub-folder per "
                f"identity: {root}/<identity>/<image>"
            )
        names.append(p.parent.name)
    return _label_array(names)


def _label_array(values: Sequence[Any]) -> np.ndarray:
    """int64 when every label is an integer (or an integer string), else str."""
    ints: list[int] = []
    for v in values:
        if isinstance(v, (bool, np.bool_)):
            break
        if isinstance(v, (int, np.integer)):
            ints.append(int(v))
        elif isinstance(v, (float, np.floating)) and float(v).is_integer():
            ints.append(int(v))
        elif isinstance(v, str) and v.strip().lstrip("-").isdigit():
            ints.append(int(v))
        else:
            break
    if len(ints) == len(values):
        return np.asarray(ints, dtype=np.int64)
    return np.asarray([str(v) for v in values])


def _read_csv(csv: Path) -> ImageList:
    import pandas as pd

    try:
        df = pd.read_csv(csv)
    except Exception as exc:  # pandas raises several types for malformed CSV
        raise DatasetError(f"cannot read {csv} as CSV: {exc}") from exc
    df.columns = [str(c).strip().lower() for c in df.columns]
    if "path" not in df.columns:
        raise DatasetError(
            f"{csv} has no 'path' column; expected columns path[, pid, camid], found {list(df.columns)}"
        )
    if df.empty:
        raise DatasetError(f"{csv} has no rows")
    for col in [c for c in ("path", "pid", "camid") if c in df.columns]:
        bad = df[col].isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0]) + 2  # +header, 1-based
            raise DatasetError(f"empty '{col}' on line {row} of {csv}")
    paths = []
    for p in df["path"].astype(str):
        path = Path(p).expanduser()
        paths.append((path if path.is_absolute() else csv.parent / path).resolve())
    seen: dict[str, int] = {}
    for i, p in enumerate(paths):
        key = os.path.normcase(str(p))
        if key in seen:
            raise DatasetError(f"{csv}: image {p} is listed twice (lines {seen[key] + 2} and {i + 2})")
        seen[key] = i
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = "\n  ".join(str(p) for p in missing[:10])
        raise DatasetNotFoundError(f"{csv}: {len(missing)} image file(s) missing:\n  {shown}")
    pids = _label_array(df["pid"].tolist()) if "pid" in df.columns else None
    camids = None
    if "camid" in df.columns:
        camids = _label_array(df["camid"].tolist())
        if camids.dtype.kind != "i":
            raise DatasetError(f"column 'camid' of {csv} must hold integers")
    return ImageList([str(p) for p in paths], pids, camids, source=str(csv))


def list_images(source: PathLike, labels: str = "auto") -> ImageList:
    """The images of ``source`` and their labels when known.

    Args:
        source: an image file, a folder (searched recursively for
            ``.jpg/.jpeg/.png/.bmp``; hidden files and folders skipped) or a ``.csv`` file with
            a ``path`` column and optional ``pid``/``camid`` columns (relative paths resolve
            against the CSV's folder).
        labels: for folders and single images, one of :data:`LABEL_MODES`. (default: ``"auto"``)

    Raises:
        DatasetNotFoundError: ``source`` (or an image listed in the CSV) does not exist.
        DatasetError: a folder without images, a CSV without ``path`` column, duplicate paths,
            a file name that ``labels="market"`` cannot parse.
    """
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {', '.join(LABEL_MODES)}, got {labels!r}")
    src = Path(source).expanduser()
    if not src.exists():
        raise DatasetNotFoundError(f"{src} does not exist (expected an image, a folder of images or a .csv file)")
    if src.is_file() and src.suffix.lower() == ".csv":
        return _read_csv(src.resolve())
    if is_feature_file(src):
        raise DatasetError(f"{src} is a feature file (.npz), not images; pass it where features are accepted")
    src = src.resolve()
    if src.is_dir():
        files = _scan_folder(src)
        if not files:
            raise DatasetError(f"folder {src} holds no images ({'/'.join(IMG_EXTENSIONS)}, searched recursively)")
        root = src
    else:
        files, root = [src], src.parent  # a single file: decoded (and checked) when read
    pids = camids = None
    if labels in ("auto", "market"):
        pids, camids = _market_labels(files, strict=labels == "market")
    elif labels == "folder":
        pids = _folder_labels(files, root)
    return ImageList([str(p) for p in files], pids, camids, source=str(src))


# ---------------------------------------------------------------------------- features
def is_feature_file(path: PathLike) -> bool:
    """Whether ``path`` is an ``.npz`` with a ``features`` array, whatever its name ends with.

    ``np.load`` reads an ``.npz`` by its content, and ``hrnet-pyg extract --out feats`` writes
    ``feats`` as named; so a file is told from an image by its zip header and members, not its
    suffix.
    """
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix.lower() == ".npz":
        return True
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as zf:
            return "features.npy" in zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def feature_fingerprint(model: HRNet) -> str:
    """A short hash of the weights that determine the features (backbone + BNNeck's BN).

    Stored in feature files so that :func:`search_features` can warn when gallery features
    came from another checkpoint than the one searching with them.
    """
    inner = unwrap_model(model)
    h = hashlib.sha1()
    state = inner.state_dict()
    for key in sorted(state):
        if key.startswith(("backbone.", "bnneck.bn.")):
            h.update(key.encode())
            h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class ImageFeatures:
    """CNN features F of a list of images, with paths and labels when known."""

    features: Tensor  # (N, d) float32 F: pooled CNN features before BNNeck (graph modules' input)
    paths: list[str]  # (N,) image files
    pids: np.ndarray | None = None  # (N,) identities when known
    camids: np.ndarray | None = None  # (N,) 0-based cameras when known
    model_fingerprint: str | None = None  # feature_fingerprint() of the model that extracted them

    def __post_init__(self) -> None:
        if not isinstance(self.features, Tensor) or self.features.dim() != 2:
            shape = tuple(self.features.shape) if isinstance(self.features, Tensor) else type(self.features).__name__
            raise ValueError(f"features must be a (N, d) tensor, got {shape}")
        n = self.features.size(0)
        if len(self.paths) != n:
            raise ValueError(f"{len(self.paths)} paths for {n} feature rows")
        for name in ("pids", "camids"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"{len(value)} {name} for {n} feature rows")

    def __len__(self) -> int:
        return self.features.size(0)

    def save(self, path: PathLike) -> Path:
        """Write an ``.npz`` with ``features``, ``paths`` and, when known, ``pids``/``camids``."""
        path = Path(path)
        arrays: dict[str, Any] = {
            "format": np.asarray(FEATURES_FORMAT),
            "features": self.features.detach().cpu().float().numpy(),
            "paths": np.asarray(self.paths, dtype=str),
        }
        if self.pids is not None:
            arrays["pids"] = np.asarray(self.pids)
        if self.camids is not None:
            arrays["camids"] = np.asarray(self.camids)
        if self.model_fingerprint is not None:
            arrays["model_fingerprint"] = np.asarray(self.model_fingerprint)
        # a file handle: np.savez would append .npz to other names; atomic: never a torn file
        atomic_write(path, lambda fh: np.savez(fh, **arrays))
        return path

    @classmethod
    def load(cls, path: PathLike) -> ImageFeatures:
        """Read a feature file written by :meth:`save` or by ``hrnet-pyg extract`` (either mode)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"feature file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except Exception as exc:  # zipfile/pickle errors: name the file instead
            raise ValueError(f"{path} could not be read as an .npz feature file ({type(exc).__name__}: {exc})") from exc
        for key in ("features", "paths"):
            if key not in arrays:
                raise ValueError(
                    f"{path} has no '{key}' array (found {sorted(arrays)}); write feature files with "
                    "hrnet-pyg extract"
                )
        feats = arrays["features"]
        if feats.ndim != 2 or not np.issubdtype(feats.dtype, np.floating):
            raise ValueError(f"{path}: 'features' must be a 2-D float array, got {feats.dtype} {feats.shape}")
        fp = arrays.get("model_fingerprint")
        return cls(
            features=torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)),
            paths=[str(p) for p in arrays["paths"].tolist()],
            pids=arrays.get("pids"),
            camids=arrays.get("camids"),
            model_fingerprint=str(fp) if fp is not None else None,
        )


def extract_images(
    model: HRNet,
    source: PathLike | ImageList | Sequence[PathLike],
    *,
    labels: str = "auto",
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    amp: bool | str = "auto",
    progress: bool = True,
) -> ImageFeatures:
    """CNN features F of one's own images (the test transform of the model's ``image_size``).

    Args:
        model: an :class:`~hrnet_pyg.model.HRNet` with a backbone.
        source: an image, a folder, a CSV (see :func:`list_images`), a list of image paths
            (no labels) or an :class:`ImageList`. For PIL images, arrays and tensors use
            :class:`~hrnet_pyg.extractor.FeatureExtractor`.
        labels: how labels of a folder are found (:data:`LABEL_MODES`). (default: ``"auto"``)
        batch_size: images per forward pass. (default: ``64``)
        num_workers: data loader processes. (default: ``0``)
        device: ``"auto"``/``None``: CUDA when present, else CPU.
        amp: autocast as in :func:`~hrnet_pyg.engine.extract` (on for CUDA under ``"auto"``).
        progress: a bar on a terminal, plain lines otherwise (:class:`~hrnet_pyg.runtime.Progress`).

    A missing or unreadable image raises :class:`~hrnet_pyg.data.DatasetError` naming its path.
    """
    from torch.utils.data import DataLoader

    from hrnet_pyg.engine import extract  # the engine imports the model and torch_geometric

    inner = unwrap_model(model)
    if getattr(inner, "backbone", None) is None:
        raise ValueError(
            "this HRNet has no backbone (it was trained on pre-extracted features), so it cannot "
            "read images; extract features with the CNN that produced them instead"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(source, ImageList):
        images = source
    elif isinstance(source, (list, tuple)):  # a list of image files, in the given order
        images = ImageList([str(Path(p).expanduser().resolve()) for p in source], source="list of paths")
        if not images.paths:
            raise ValueError("the list of images is empty")
    elif isinstance(source, (str, os.PathLike)):
        images = list_images(source, labels=labels)
    else:
        raise TypeError(
            "source must be an image, a folder, a CSV, an ImageList or a list of image paths; "
            f"got {type(source).__name__}"
        )
    h, w = inner.config.image_size
    dataset = ImageDataset([(p, 0, 0) for p in images.paths], build_transforms(h, w, is_train=False))
    dev = resolve_device(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=dev.type == "cuda")
    feats, _, _ = extract(inner, loader, device=dev, amp=amp, progress=progress)
    return ImageFeatures(
        features=feats.float(),
        paths=list(images.paths),
        pids=images.pids,
        camids=images.camids,
        model_fingerprint=feature_fingerprint(inner),
    )


def features_of(
    model: HRNet, source: PathLike | ImageFeatures, **kwargs: Any
) -> ImageFeatures:
    """``source`` as features: an :class:`ImageFeatures`, an ``.npz`` feature file, or images."""
    if isinstance(source, ImageFeatures):
        return source
    if is_feature_file(source):
        return ImageFeatures.load(source)
    return extract_images(model, source, **kwargs)


# ---------------------------------------------------------------------------- search
@dataclass
class SearchResult:
    """Ranked gallery lists, one row per query, best first."""

    query_paths: list[str]
    gallery_paths: list[str]
    indices: Tensor  # (Q, k) long: gallery indices, best first
    cosine_distance: Tensor  # (Q, k): 1 - cosine of BN(F) (the CNN's distance)
    relational_score: Tensor | None  # (Q, k): IR cosine + PR probability (higher = better); NaN outside the shortlist
    reranked: bool  # the relational re-ranking ordered the lists
    q_pids: np.ndarray | None = None
    g_pids: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def topk(self) -> int:
        return self.indices.size(1)

    def format(self, max_queries: int | None = None) -> str:
        """The ranked lists as text: one block per query, one line per rank."""
        lines: list[str] = []
        num_q = len(self.query_paths) if max_queries is None else min(max_queries, len(self.query_paths))
        known = self.q_pids is not None and self.g_pids is not None
        order = "relational re-ranking" if self.reranked else "cosine distance of BN(F)"
        for q in range(num_q):
            pid = f" [pid {self.q_pids[q]}]" if self.q_pids is not None else ""
            lines.append(f"query {q + 1}/{len(self.query_paths)}: {self.query_paths[q]}{pid} (ordered by {order})")
            head = f"  {'rank':>4}  {'distance':>8}"
            head += f"  {'score':>6}" if self.relational_score is not None else ""
            head += "  match" if known else ""
            lines.append(head + "  path")
            for r in range(self.topk):
                j = int(self.indices[q, r])
                row = f"  {r + 1:>4}  {float(self.cosine_distance[q, r]):8.4f}"
                if self.relational_score is not None:
                    s = float(self.relational_score[q, r])
                    row += f"  {'-':>6}" if math.isnan(s) else f"  {s:6.3f}"  # NaN: outside the shortlist
                if self.q_pids is not None and self.g_pids is not None:  # known
                    row += "  " + ("  yes" if str(self.g_pids[j]) == str(self.q_pids[q]) else "   no")
                lines.append(f"{row}  {self.gallery_paths[j]}")
        if num_q < len(self.query_paths):
            lines.append(f"... {len(self.query_paths) - num_q} more queries")
        return "\n".join(lines + self.notes)

    def to_csv(self, path: PathLike) -> Path:
        """One row per (query, rank): query, rank, gallery, cosine_distance, relational_score[, pids]."""
        import csv

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            header = ["query", "rank", "gallery", "cosine_distance", "relational_score"]
            known = self.q_pids is not None and self.g_pids is not None
            writer.writerow(header + (["query_pid", "gallery_pid"] if known else []))
            for q, qpath in enumerate(self.query_paths):
                for r in range(self.topk):
                    j = int(self.indices[q, r])
                    score = "" if self.relational_score is None else float(self.relational_score[q, r])
                    row = [qpath, r + 1, self.gallery_paths[j], float(self.cosine_distance[q, r]), score]
                    if self.q_pids is not None and self.g_pids is not None:  # known
                        row += [self.q_pids[q], self.g_pids[j]]
                    writer.writerow(row)
        return path


@torch.no_grad()
def _retrieval(model: HRNet, feats: Tensor, dev: torch.device, chunk: int = 8192) -> Tensor:
    """BN(F) on the CPU, ``chunk`` rows at a time (large galleries never sit whole on the GPU)."""
    blocks = (feats[s : s + chunk].to(dev) for s in range(0, len(feats), chunk))
    return torch.cat([model.retrieval_features(b).float().cpu() for b in blocks])


def search_features(
    model: HRNet,
    query: ImageFeatures,
    gallery: ImageFeatures,
    *,
    topk: int = 10,
    rerank: bool = True,
    shortlist: int | None = None,
    exclude_self: bool = True,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> SearchResult:
    """Rank ``gallery`` for every query.

    Args:
        model: the trained :class:`~hrnet_pyg.model.HRNet` that extracted the features.
        query, gallery: CNN features F (:func:`extract_images`, :meth:`ImageFeatures.load`).
        topk: gallery images listed per query. (default: ``10``)
        rerank: order by the paper's relational re-ranking (Sec. 4.2: cosine shortlist of
            ``shortlist`` images re-scored by the IR and PR modules); ``False``: plain cosine
            distance of BN(F). A model without IR and PR modules always ranks by cosine.
            (default: ``True``)
        shortlist: re-ranking shortlist length (default: ``config.top_k_rerank`` = 120).
        exclude_self: drop the gallery image whose file is the query's own file (a query
            searched in the folder it comes from). (default: ``True``)
    """
    inner = unwrap_model(model)
    d = inner.feat_dim
    for name, feats in (("query", query), ("gallery", gallery)):
        if feats.features.size(1) != d:
            raise ValueError(
                f"{name} features have dimension {feats.features.size(1)}, but this model's features "
                f"have dimension {d}; extract them with the same checkpoint"
            )
        if len(feats) == 0:
            raise ValueError(f"the {name} set is empty")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    notes: list[str] = []
    fp = feature_fingerprint(inner)
    for name, feats in (("query", query), ("gallery", gallery)):
        if feats.model_fingerprint is not None and feats.model_fingerprint != fp:
            msg = (
                f"the {name} features were extracted by another model (fingerprint "
                f"{feats.model_fingerprint}, this checkpoint: {fp}); distances may be meaningless"
            )
            warnings.warn(msg, stacklevel=2)
            notes.append(f"warning: {msg}")
    dev = resolve_device(device)
    inner.to(dev).eval()
    qf, gf = query.features.float(), gallery.features.float()
    cos = cosine_distance(_retrieval(inner, qf, dev), _retrieval(inner, gf, dev))  # (Q, G)
    use_rerank = rerank and (inner.ir is not None or inner.pr is not None)
    if rerank and not use_rerank:
        notes.append("note: this model has no IR/PR module; ranked by cosine distance of BN(F)")
    score = None
    if use_rerank:
        k = min(shortlist or inner.config.top_k_rerank, len(gallery))
        dist, score = relational_rerank(
            inner, qf, gf, top_k=k, device=dev, progress=progress, return_scores=True
        )  # score: NaN outside the shortlist
    else:
        dist = cos.clone()
    num_excluded = 0
    if exclude_self:
        g_index = {os.path.normcase(os.path.realpath(p)): j for j, p in enumerate(gallery.paths)}
        for i, p in enumerate(query.paths):
            j = g_index.get(os.path.normcase(os.path.realpath(p)))
            if j is not None:
                dist[i, j] = float("inf")
                num_excluded = 1
    k = min(topk, len(gallery) - num_excluded)
    if k < 1:
        raise ValueError("the gallery holds only the query image itself; nothing to rank")
    order = stable_k_smallest(dist, k)  # (Q, k), equal distances in gallery order
    return SearchResult(
        query_paths=list(query.paths),
        gallery_paths=list(gallery.paths),
        indices=order,
        cosine_distance=cos.gather(1, order),
        relational_score=score.gather(1, order) if score is not None else None,
        reranked=use_rerank,
        q_pids=query.pids,
        g_pids=gallery.pids,
        notes=notes,
    )


def search(
    model: HRNet,
    query: PathLike | ImageFeatures,
    gallery: PathLike | ImageFeatures,
    *,
    topk: int = 10,
    rerank: bool = True,
    shortlist: int | None = None,
    exclude_self: bool = True,
    labels: str = "auto",
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> SearchResult:
    """Search ``gallery`` (images, a CSV or an ``.npz`` feature file) for each ``query``.

    ``query`` and ``gallery`` take what :func:`features_of` takes; images are extracted with
    :func:`extract_images`. See :func:`search_features` for the ranking options.
    """
    kw: dict[str, Any] = dict(
        labels=labels, batch_size=batch_size, num_workers=num_workers, device=device, progress=progress
    )
    q = features_of(model, query, **kw)
    g = features_of(model, gallery, **kw)
    return search_features(
        model,
        q,
        g,
        topk=topk,
        rerank=rerank,
        shortlist=shortlist,
        exclude_self=exclude_self,
        device=device,
        progress=progress,
    )


# ---------------------------------------------------------------------------- grid
def write_grid(
    result: SearchResult,
    path: PathLike,
    *,
    max_queries: int = 8,
    size: tuple[int, int] = (128, 64),
    border: int = 4,
) -> RankedGrid:
    """The ranked lists as an image grid (:func:`hrnet_pyg.visualize.ranked_list_grid`).

    With identity labels on both sides, borders are green (same identity) or red; without,
    they are grey (:data:`UNKNOWN_COLOR`): a match cannot be told. Returns what was drawn
    (``.path``, and the cell ``boxes`` of each row).
    """
    from PIL import Image, ImageDraw

    if max_queries < 1:
        raise ValueError(f"max_queries must be >= 1, got {max_queries}")
    known = result.q_pids is not None and result.g_pids is not None
    q_pids: list[str] | list[int]
    g_pids: list[str] | list[int]
    # Compared as text: a CSV may give "7" where file names give 7.
    if result.q_pids is not None and result.g_pids is not None:
        q_pids = [str(p) for p in result.q_pids]
        g_pids = [str(p) for p in result.g_pids]
    else:
        q_pids, g_pids = [0] * len(result.query_paths), [1] * len(result.gallery_paths)
    rows = list(range(min(max_queries, len(result.query_paths))))
    order = "the relational re-ranking (Sec. 4.2)" if result.reranked else "cosine distance of BN(F)"
    legend = "green border: same identity, red: another" if known else "grey borders: identities unknown"
    grid = ranked_list_grid(
        result.query_paths,
        result.gallery_paths,
        result.indices.numpy(),
        q_pids,
        g_pids,
        path,
        topk=result.topk,
        queries=rows,
        size=size,
        border=border,
        caption=f"Ranked by {order}. Rank 1 = best; {legend}.",
    )
    if not known:  # repaint the (meaningless) red borders grey
        with Image.open(grid.path) as im:
            canvas = im.convert("RGB")
        draw = ImageDraw.Draw(canvas)
        for row in grid.boxes:
            for x0, y0, x1, y1 in row[1:]:
                draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=UNKNOWN_COLOR, width=border)
        canvas.save(grid.path)
    return grid


__all__ = [
    "FEATURES_FORMAT",
    "ImageFeatures",
    "ImageList",
    "LABEL_MODES",
    "SearchResult",
    "UNKNOWN_COLOR",
    "extract_images",
    "feature_fingerprint",
    "features_of",
    "is_feature_file",
    "list_images",
    "search",
    "search_features",
    "write_grid",
]
