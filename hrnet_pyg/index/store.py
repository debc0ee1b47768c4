"""The gallery index on disk: :class:`GalleryIndex` reads, writes and appends an index folder.

The folder's files are described in :mod:`hrnet_pyg.index`; the ``.npy`` files are opened
memory-mapped, and ``meta.json`` is replaced last and atomically, so an interrupted ``add`` leaves
the index as it was.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch
import torch.nn.functional as Fn
from torch import Tensor

from hrnet_pyg import gallery
from hrnet_pyg.image_features import ImageFeatures, extract_images, feature_fingerprint
from hrnet_pyg.image_files import ImageList, _label_array, is_feature_file, list_images
from hrnet_pyg.index import relational as relational_part
from hrnet_pyg.index.layout import (
    DTYPES,
    FAISS_FILE,
    FAISS_TYPES,
    INDEX_FORMAT,
    KINDS,
    GalleryIndexError,
    naming,
    write_json,
)
from hrnet_pyg.index.shortlist import (
    exact_shortlist,
    faiss_available,
    faiss_search,
    import_faiss,
    new_faiss_index,
    write_faiss_index,
)
from hrnet_pyg.protocol import RerankConfig
from hrnet_pyg.runtime import resolve_device, unwrap_model
from hrnet_pyg.search import _retrieval

if TYPE_CHECKING:  # pragma: no cover
    from hrnet_pyg.model import HRNetModule as HRNet

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class _Shard:
    name: str
    count: int


class GalleryIndex:
    """An index folder written by :meth:`build` (see the module docstring for its files)."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not self.path.is_dir() or not meta_path.is_file():
            raise FileNotFoundError(
                f"gallery index {self.path} does not exist (no {meta_path}); write one with "
                "hrnet-pyg index build"
            )
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as exc:
            raise GalleryIndexError(f"{meta_path} is not valid JSON ({exc})") from exc
        if meta.get("format") != INDEX_FORMAT:
            raise GalleryIndexError(
                f"{self.path} is not an hrnet_pyg gallery index of format {INDEX_FORMAT} "
                f"(format {meta.get('format')!r})"
            )
        self.meta: dict[str, Any] = meta
        self.shards = [_Shard(s["name"], int(s["count"])) for s in meta["shards"]]
        self.offsets = np.cumsum([0] + [s.count for s in self.shards])
        self._arrays: dict[tuple[str, str], np.ndarray] = {}  # (kind, shard) -> memory-mapped array
        self._paths: list[str] | None = None
        self._pids: np.ndarray | None = None
        self._camids: np.ndarray | None = None
        self._faiss: Any = None
        self.notes: list[str] = []

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def fingerprint(self) -> str:
        return str(self.meta["fingerprint"])

    @property
    def feat_dim(self) -> int:
        return int(self.meta["feat_dim"])

    @property
    def dtype(self) -> str:
        return str(self.meta["dtype"])

    @property
    def relational(self) -> dict[str, Any] | None:
        """The options the relational part was computed with (``k``, ``normalize``, ``rounds``,
        ``reuse_graph``, ...), or ``None`` when the index has none."""
        part = self.meta.get("relational")
        return dict(part) if part else None

    @property
    def faiss_type(self) -> str:
        part = self.meta.get("faiss")
        return "none" if not part else str(part["type"])

    def __repr__(self) -> str:
        return (f"GalleryIndex({self.path}, images={len(self)}, d={self.feat_dim}, dtype={self.dtype}, "
                f"shards={len(self.shards)}, faiss={self.faiss_type}, fingerprint={self.fingerprint})")

    def summary(self) -> str:
        part = self.meta.get("faiss") or {}
        extra = "".join(f", {k}={part[k]}" for k in ("nlist", "nprobe", "ef_search") if k in part)
        return "\n".join([
            f"index {self.path}",
            f"  images      {len(self)} in {len(self.shards)} shard(s)",
            f"  features    d={self.feat_dim}, {self.dtype}, memory-mapped .npy",
            f"  shortlist   faiss {self.faiss_type}{extra}" if self.faiss_type != "none"
            else "  shortlist   exact blocked matrix product",
            f"  checkpoint  {self.meta.get('checkpoint') or '?'} (fingerprint {self.fingerprint})",
            f"  labels      {'pids' if self.meta.get('has_pids') else 'none'}",
            "  relational  " + ("none (the gallery protocol needs it: hrnet-pyg index relational)"
                                if not self.relational else
                                "BN(V') over the gallery-only kNN graph, " + relational_part.describe(self.relational)),
        ])

    # ------------------------------------------------------------------ checks
    def check_model(self, model: HRNet, what: str = "this checkpoint") -> None:
        """Refuse a model whose features are not the index's (another checkpoint)."""
        inner = unwrap_model(model)
        fp = feature_fingerprint(inner)
        if fp != self.fingerprint:
            raise GalleryIndexError(
                f"index {self.path} holds features of another model: it was built with checkpoint "
                f"{self.meta.get('checkpoint') or '?'} (fingerprint {self.fingerprint}), {what} has "
                f"fingerprint {fp}. Search it with the checkpoint that built it, or build a new index "
                "with hrnet-pyg index build"
            )
        if int(inner.feat_dim) != self.feat_dim:  # pragma: no cover - implied by the fingerprint
            raise GalleryIndexError(f"index {self.path} has d={self.feat_dim}, the model d={inner.feat_dim}")

    # ------------------------------------------------------------------ arrays
    def _shape(self, kind: str, count: int) -> tuple[int, ...]:
        """The shape of a shard's array of ``kind`` (:data:`KINDS`)."""
        if kind in ("feats", "retrieval"):
            return (count, self.feat_dim)
        part = self.relational
        if kind not in KINDS or part is None:
            raise GalleryIndexError(f"index {self.path} has no {kind!r} part")
        return (count, int(part["dim"])) if kind == "relational" else (count, 2)

    def _open(self, kind: str, shard: _Shard) -> np.ndarray:
        key = (kind, shard.name)
        if key not in self._arrays:
            file = self.path / f"{kind}_{shard.name}.npy"
            shape = self._shape(kind, shard.count)
            try:
                arr = np.load(file, mmap_mode="c")  # copy-on-write: writable views for torch, never written
            except (OSError, ValueError) as exc:
                raise GalleryIndexError(f"cannot read {file} ({type(exc).__name__}: {exc})") from exc
            if arr.shape != shape:
                raise GalleryIndexError(f"{file} has shape {arr.shape}, meta.json says {shape}")
            self._arrays[key] = arr
        return self._arrays[key]

    def whole(self, kind: str) -> np.ndarray:
        """Every row of ``kind`` as one float32 array in memory (F for the gallery's kNN graph, the
        relational part's per-image terms)."""
        return np.concatenate([np.asarray(self._open(kind, s), dtype=np.float32) for s in self.shards])

    def blocks(self, kind: str = "retrieval", block: int = 32768) -> Iterator[tuple[int, np.ndarray]]:
        """``(offset, rows)`` of at most ``block`` rows, memory-mapped, in index order."""
        for s, shard in enumerate(self.shards):
            arr = self._open(kind, shard)
            for start in range(0, shard.count, block):
                yield int(self.offsets[s]) + start, arr[start : start + block]

    def rows(self, index: np.ndarray | Tensor, kind: str = "feats") -> np.ndarray:
        """float32 rows ``index`` (any shape) of F (``"feats"``), of the retrieval features
        (``"retrieval"``) or of the relational ones; reads only those rows of the memory-mapped files."""
        idx = np.asarray(index, dtype=np.int64)
        flat = idx.reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
            raise GalleryIndexError(f"row index outside 0..{len(self) - 1}")
        width = self._shape(kind, 0)[1:]
        out = np.empty((flat.size, *width), dtype=np.float32)
        shard_of = np.searchsorted(self.offsets, flat, side="right") - 1
        for s in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == s)
            local = flat[sel] - self.offsets[s]
            order = np.argsort(local, kind="stable")  # ascending offsets: sequential page reads
            arr = self._open(kind, self.shards[int(s)])
            out[sel[order]] = arr[local[order]]
        return out.reshape(*idx.shape, *width)

    def _load_metadata(self) -> None:
        if self._paths is not None:
            return
        import pandas as pd

        paths: list[str] = []
        pids: list[str] = []
        camids: list[str] = []
        for shard in self.shards:
            file = self.path / f"meta_{shard.name}.csv"
            try:
                df = pd.read_csv(file, dtype=str, keep_default_na=False)
            except Exception as exc:  # pandas raises several types
                raise GalleryIndexError(f"cannot read {file} ({type(exc).__name__}: {exc})") from exc
            if len(df) != shard.count or list(df.columns) != ["path", "pid", "camid"]:
                raise GalleryIndexError(f"{file} must have {shard.count} rows of path,pid,camid")
            paths += df["path"].tolist()
            pids += df["pid"].tolist()
            camids += df["camid"].tolist()
        self._paths = paths
        self._pids = _label_array(pids) if pids and all(p != "" for p in pids) else None
        self._camids = _label_array(camids) if camids and all(c != "" for c in camids) else None

    @property
    def paths(self) -> list[str]:
        self._load_metadata()
        assert self._paths is not None
        return self._paths

    @property
    def pids(self) -> np.ndarray | None:
        self._load_metadata()
        return self._pids

    @property
    def camids(self) -> np.ndarray | None:
        self._load_metadata()
        return self._camids

    # ------------------------------------------------------------------ shortlist
    def faiss_index(self) -> Any:
        """The faiss part, or ``None`` (none built, faiss not installed, or out of step)."""
        if self._faiss is not None or self.faiss_type == "none":
            return self._faiss
        if not faiss_available():
            self.notes.append(
                "note: faiss is not installed; exact shortlist (pip install hrnet_pyg[search] for faiss)"
            )
            self.meta["faiss"] = None
            return None
        import faiss

        index = faiss.read_index(str(self.path / FAISS_FILE))
        if index.ntotal != len(self):
            self.notes.append(
                f"note: {self.path / FAISS_FILE} holds {index.ntotal} vectors, the index {len(self)} "
                "(an interrupted add?); exact shortlist. Rebuild with hrnet-pyg index build --force"
            )
            self.meta["faiss"] = None
            return None
        part = self.meta["faiss"]
        # read_index hands back the concrete class (IndexIVFFlat, IndexHNSWFlat) the meta describes.
        if "nprobe" in part and isinstance(index, faiss.IndexIVF):
            index.nprobe = int(part["nprobe"])
        if "ef_search" in part and isinstance(index, faiss.IndexHNSW):
            index.hnsw.efSearch = int(part["ef_search"])
        self._faiss = index
        return index

    def shortlist(
        self, queries: Tensor, k: int, *, exact: bool = False, nprobe: int | None = None,
        ef_search: int | None = None, block: int = 32768,
    ) -> tuple[Tensor, Tensor, str]:
        """Top-``k`` cosine of normalised retrieval features ``queries`` (Q, d):
        ``(sims, index, how)``, best first; ``how`` says which path ran."""
        if queries.dim() != 2 or queries.size(1) != self.feat_dim:
            raise ValueError(f"queries must be (Q, {self.feat_dim}), got {tuple(queries.shape)}")
        k = min(k, len(self))
        index = None if exact else self.faiss_index()
        if index is None:
            sims, idx = exact_shortlist(queries, self.blocks("retrieval", block), k)
            return sims, idx, "exact"
        sims, idx = faiss_search(index, queries, k, nprobe=nprobe, ef_search=ef_search)
        return sims, idx, f"faiss {self.faiss_type}"

    # ------------------------------------------------------------------ writing
    @classmethod
    def build(
        cls,
        path: PathLike,
        model: HRNet,
        images: PathLike | ImageList | ImageFeatures,
        *,
        dtype: str = "float32",
        faiss_type: str = "auto",
        nlist: int | None = None,
        checkpoint: str | None = None,
        force: bool = False,
        chunk: int = 50000,
        relational: bool | None = None,
        rerank_config: RerankConfig | None = None,
        **extract_kw: Any,
    ) -> GalleryIndex:
        """Extract the features of ``images`` and write a new index at ``path``.

        Args:
            model: the trained HRNet whose features the index holds.
            images: a folder, an image, a CSV (:func:`~hrnet_pyg.image_files.list_images`), an
                ``.npz`` from ``hrnet-pyg extract`` of this model, or :class:`ImageFeatures`.
            dtype: storage of the ``.npy`` files, ``float32`` or ``float16``. (default: float32)
            faiss_type: one of :data:`FAISS_TYPES`, or ``auto``: ``flat`` when faiss is
                installed, else ``none``. (default: ``auto``)
            nlist: IVF cells (default: ``round(sqrt(N))``, the usual rule of thumb).
            checkpoint: the checkpoint's path, recorded for messages.
            force: replace an existing index at ``path`` (only once the new one is complete).
            chunk: images extracted and written per shard.
            relational: also store the relational part that the gallery protocol searches
                (:meth:`build_relational`); ``None``: when the model can run that protocol (an IR
                layer on a kNN graph) and its options name one round. (default: ``None``)
            rerank_config: the test protocol whose ``gallery_*`` options the relational part is
                computed with. (default: the model's ``rerank_config``)
            **extract_kw: passed to :func:`~hrnet_pyg.image_features.extract_images` (labels, batch_size,
                num_workers, device, progress).
        """
        path = Path(path)
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if faiss_type == "auto":
            faiss_type = "flat" if faiss_available() else "none"
        if faiss_type not in FAISS_TYPES:
            raise ValueError(f"faiss type must be auto or one of {', '.join(FAISS_TYPES)}, got {faiss_type!r}")
        if faiss_type != "none":
            import_faiss()
        if path.exists() and not force:
            raise GalleryIndexError(
                f"{path} exists; append images to it with hrnet-pyg index add, or replace it with "
                "--force (GalleryIndex.build(..., force=True))"
            )
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        inner = unwrap_model(model)
        with naming(path):  # before any extraction: an unwritable folder fails at once
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent))
        try:
            meta = {
                "format": INDEX_FORMAT,
                "fingerprint": feature_fingerprint(inner),
                "checkpoint": checkpoint,
                "feat_dim": int(inner.feat_dim),
                "dtype": dtype,
                "image_size": list(inner.config.image_size),
                "shards": [],
                "has_pids": None,
                "faiss": None if faiss_type == "none" else {"type": faiss_type, "nlist": nlist},
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            index = cls(tmp)
            index._append(model, images, chunk=chunk, **extract_kw)
            if relational is None:  # when the protocol can run, and the gallery has k neighbours per image
                relational = relational_part.relational_unavailable(inner, rerank_config) is None and len(index) > \
                    relational_part.least_images(inner, relational_part.relational_options(inner, rerank_config)["k"])
            if relational:
                index.build_relational(model, rerank_config, device=extract_kw.get("device"),
                                       progress=bool(extract_kw.get("progress", False)))
            if path.exists():  # force: swap in the complete new index, then drop the old one
                old = Path(tempfile.mkdtemp(prefix=path.name + ".", suffix=".old", dir=path.parent))
                os.replace(path, old / "index")
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(path)

    def add(
        self, model: HRNet, images: PathLike | ImageList | ImageFeatures, *, chunk: int = 50000,
        **extract_kw: Any,
    ) -> tuple[int, int]:
        """Append ``images`` (as :meth:`build` takes them) as new shards; images whose path is
        already in the index are skipped. Returns ``(added, skipped)``."""
        self.check_model(model)
        if self.faiss_type != "none":
            import_faiss()
        if self.relational is not None:  # before any extraction: the new images attach to the stored part
            self.check_relational(model, None, what="add", compare_options=False)
        with naming(self.path):  # before any extraction: a read-only index fails at once
            with tempfile.TemporaryFile(dir=self.path):
                pass
        return self._append(model, images, chunk=chunk, **extract_kw)

    def _append(
        self, model: HRNet, images: PathLike | ImageList | ImageFeatures, *, chunk: int,
        **extract_kw: Any,
    ) -> tuple[int, int]:
        inner = unwrap_model(model)
        labels = extract_kw.pop("labels", "auto")
        known = set(os.path.normcase(p) for p in self.paths) if len(self) else set()
        if isinstance(images, ImageFeatures) or (
            not isinstance(images, ImageList) and is_feature_file(images)
        ):
            feats = images if isinstance(images, ImageFeatures) else ImageFeatures.load(images)
            if feats.model_fingerprint is not None and feats.model_fingerprint != self.fingerprint:
                raise GalleryIndexError(
                    f"the features {'' if isinstance(images, ImageFeatures) else str(images) + ' '}were "
                    f"extracted by another model (fingerprint {feats.model_fingerprint}, the index's: "
                    f"{self.fingerprint}); extract them with the index's checkpoint"
                )
            keep = [i for i, p in enumerate(feats.paths) if os.path.normcase(p) not in known]
            sources: Iterator[Any] = iter([_select(feats, keep)] if keep else [])
            total = len(feats.paths)
        else:
            listed = images if isinstance(images, ImageList) else list_images(images, labels=labels)
            keep = [i for i, p in enumerate(listed.paths) if os.path.normcase(p) not in known]
            total = len(listed.paths)
            sources = (_select_list(listed, keep[s : s + chunk]) for s in range(0, len(keep), chunk))
        dev = resolve_device(extract_kw.get("device"))
        added = 0
        new_shards: list[dict[str, Any]] = []
        for src in sources:
            feats = src if isinstance(src, ImageFeatures) else extract_images(inner, src, **extract_kw)
            for s in range(0, len(feats), chunk):
                part = _select(feats, list(range(s, min(s + chunk, len(feats)))))
                new_shards.append(self._write_shard(inner, part, dev, len(self.shards) + len(new_shards)))
                added += len(part)
        if not added:
            return 0, total
        self._commit(new_shards)
        return added, total - added

    def _write_shard(self, model: HRNet, feats: ImageFeatures, dev: torch.device, number: int) -> dict[str, Any]:
        if feats.features.size(1) != self.feat_dim:
            raise GalleryIndexError(f"features of dimension {feats.features.size(1)}, the index has {self.feat_dim}")
        name = f"{number:05d}"
        has_pids = feats.pids is not None
        if self.meta["has_pids"] is None:
            self.meta["has_pids"] = has_pids
        elif bool(self.meta["has_pids"]) != has_pids:
            raise GalleryIndexError(
                f"the index {'has' if self.meta['has_pids'] else 'has no'} identity labels but these "
                f"images {'have' if has_pids else 'have none'}; keep one labelling per index "
                "(--labels none drops them)"
            )
        model.to(dev).eval()
        retrieval = Fn.normalize(_retrieval(model, feats.features.float(), dev), dim=1)
        dt = np.dtype(self.dtype)
        arrays = [("feats", feats.features.float().numpy().astype(dt)), ("retrieval", retrieval.numpy().astype(dt))]
        if self.relational is not None:  # attached to the index as it stands (this add's images: not each other)
            with torch.no_grad():
                v = self.attach(model, feats.features, device=dev)
                arrays += [("relational", gallery.retrieval_of(model, v).cpu().numpy().astype(dt)),
                           ("graph", relational_part.graph_terms(model, feats.features.float().to(dev)))]
        for kind, arr in arrays:
            with open(self.path / f"{kind}_{name}.npy", "wb") as fh:
                np.save(fh, arr)
        import pandas as pd

        n = len(feats)
        pd.DataFrame({
            "path": feats.paths,
            "pid": [str(p) for p in feats.pids] if feats.pids is not None else [""] * n,
            "camid": [str(c) for c in feats.camids] if feats.camids is not None else [""] * n,
        }).to_csv(self.path / f"meta_{name}.csv", index=False)
        return {"name": name, "count": n}

    def _commit(self, new_shards: list[dict[str, Any]]) -> None:
        meta = dict(self.meta)
        meta["shards"] = list(meta["shards"]) + new_shards
        self.shards = [_Shard(s["name"], int(s["count"])) for s in meta["shards"]]
        self.offsets = np.cumsum([0] + [s.count for s in self.shards])
        self._paths = None
        if meta.get("faiss"):
            meta["faiss"] = self._update_faiss(dict(meta["faiss"]), new_shards)
        write_json(self.path / "meta.json", meta)
        self.meta = meta
        self._faiss = None

    # ------------------------------------------------------------------ relational part
    def check_relational(self, model: HRNet, rerank_config: RerankConfig | None, what: str = "search",
                         compare_options: bool = True) -> dict[str, Any]:
        """:func:`hrnet_pyg.index.relational.check_part` of this index."""
        return relational_part.check_part(self, model, rerank_config, what, compare_options)

    def build_relational(self, model: HRNet, rerank_config: RerankConfig | None = None, **kw: Any) -> None:
        """:func:`hrnet_pyg.index.relational.build_part` of this index (``device``, ``block_size``,
        ``progress``)."""
        relational_part.build_part(self, model, rerank_config, **kw)

    def attach(self, model: HRNet, feats: Tensor, **kw: Any) -> Tensor:
        """:func:`hrnet_pyg.index.relational.attach` to this index (``device``, ``per_pass``, ``block``)."""
        return relational_part.attach(self, model, feats, **kw)

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Replace ``meta.json`` (atomically) and forget the memory-mapped relational part."""
        write_json(self.path / "meta.json", meta)
        self.meta = meta
        for key in [key for key in self._arrays if key[0] in ("relational", "graph")]:
            del self._arrays[key]

    def build_faiss(self, faiss_type: str, *, nlist: int | None = None) -> None:
        """(Re)build the faiss part over every image of the index (``flat``, ``ivf``, ``hnsw``),
        or drop it (``none``); ``meta.json`` is replaced once the new part is written."""
        if faiss_type not in FAISS_TYPES:
            raise ValueError(f"faiss type must be one of {', '.join(FAISS_TYPES)}, got {faiss_type!r}")
        meta = dict(self.meta)
        if faiss_type == "none":
            meta["faiss"] = None
        else:
            tmp_file = self.path / (FAISS_FILE + ".rebuild")
            part = self._update_faiss({"type": faiss_type, "nlist": nlist}, list(meta["shards"]),
                                      fresh=True, target=tmp_file)
            os.replace(tmp_file, self.path / FAISS_FILE)
            meta["faiss"] = part
        write_json(self.path / "meta.json", meta)
        self.meta = meta
        self._faiss = None

    def _update_faiss(
        self, part: dict[str, Any], new_shards: list[dict[str, Any]], *, fresh: bool = False,
        target: Path | None = None,
    ) -> dict[str, Any]:
        faiss = import_faiss()
        file = self.path / FAISS_FILE
        target = file if target is None else target
        first_new = len(self) - sum(s["count"] for s in new_shards)
        if file.is_file() and not fresh:
            index = faiss.read_index(str(file))
            if index.ntotal != first_new:
                raise GalleryIndexError(
                    f"{file} holds {index.ntotal} vectors, the index {first_new}; rebuild it with "
                    "hrnet-pyg index build --force"
                )
        else:
            index = new_faiss_index(part, self.feat_dim, len(self), self._training_sample)
        start = first_new
        for offset, rows in self.blocks("retrieval"):
            if offset + len(rows) <= start:
                continue
            rows = rows[max(0, start - offset):]
            index.add(np.ascontiguousarray(rows, dtype=np.float32))
        write_faiss_index(index, self.path, target)
        part["ntotal"] = int(index.ntotal)
        return part

    def _training_sample(self, n: int) -> np.ndarray:
        rng = np.random.default_rng(0)
        rows = np.sort(rng.choice(len(self), size=n, replace=False))
        return np.ascontiguousarray(self.rows(rows, kind="retrieval"))


def _select(feats: ImageFeatures, keep: Sequence[int]) -> ImageFeatures:
    if len(keep) == len(feats):
        return feats
    idx = torch.as_tensor(list(keep), dtype=torch.long)
    return ImageFeatures(
        features=feats.features[idx],
        paths=[feats.paths[i] for i in keep],
        pids=feats.pids[list(keep)] if feats.pids is not None else None,
        camids=feats.camids[list(keep)] if feats.camids is not None else None,
        model_fingerprint=feats.model_fingerprint,
    )


def _select_list(images: ImageList, keep: Sequence[int]) -> ImageList:
    return ImageList(
        [images.paths[i] for i in keep],
        images.pids[list(keep)] if images.pids is not None else None,
        images.camids[list(keep)] if images.camids is not None else None,
        source=images.source,
    )


__all__ = ["GalleryIndex"]
