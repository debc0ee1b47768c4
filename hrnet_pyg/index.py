"""A persistent gallery index: extract once, search many times (``hrnet-pyg index``, ``search --index``).

An index is a folder (``gallery.idx``)::

    meta.json              format, the checkpoint's feature fingerprint, d, dtype, shards, faiss part
    feats_00000.npy        F of the shard's images (N_s, d), float32 or float16: re-ranking input
    retrieval_00000.npy    BN(F) / ||BN(F)|| (N_s, d), same dtype: the cosine shortlist features
    meta_00000.csv         path, pid, camid of the shard's images (pid/camid empty when unknown)
    faiss.index            optional: a faiss index over the retrieval features (flat, ivf, hnsw)

``build`` writes shard 0 (and more shards of ``chunk`` images each), ``add`` appends a shard; the
``.npy`` files are opened memory-mapped, so a search reads the pages it touches: the whole
retrieval matrix for an exact shortlist (or none of it with faiss), and only the shortlisted rows
of F for the re-ranking.

A search (Sec. 4.2 "Testing", as :func:`hrnet_pyg.search.search_features`): the query's BN(F)
against the gallery's, a shortlist of ``top_k_rerank`` = 120 by cosine, from faiss when the index
has a faiss part and faiss is installed, else from an exact blocked matrix product; then the query
and its shortlist pass as one graph through the IR and PR modules
(:func:`~hrnet_pyg.scoring.score_query_graphs`), reading only those rows of F.

``meta.json`` is replaced last and atomically, so an interrupted ``add`` leaves the index as it was
(a faiss file that holds more vectors than ``meta.json`` lists is then ignored, with a note).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch
import torch.nn.functional as Fn
from torch import Tensor

from hrnet_pyg.runtime import atomic_write, resolve_device, unwrap_model
from hrnet_pyg.runtime import progress as progress_of
from hrnet_pyg.search import (
    ImageFeatures,
    ImageList,
    SearchResult,
    _label_array,
    _retrieval,
    extract_images,
    feature_fingerprint,
    features_of,
    is_feature_file,
    list_images,
)
from hrnet_pyg.topk import merge_topk

if TYPE_CHECKING:  # pragma: no cover
    from hrnet_pyg.model import HRNetModule as HRNet

PathLike = Union[str, "os.PathLike[str]"]

INDEX_FORMAT = "hrnet_pyg.index.v1"
DTYPES = ("float32", "float16")
#: faiss index types: ``flat`` (exact inner product), ``ivf`` (IVF-Flat, inverted lists over
#: k-means cells), ``hnsw`` (HNSW-Flat graph); ``none``: no faiss part (exact blocked product).
FAISS_TYPES = ("flat", "ivf", "hnsw", "none")
_FAISS_FILE = "faiss.index"


@contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Re-raise an ``OSError`` of the block with ``path`` (the index) as its file name: the
    temporary names the block writes mean nothing to the user."""
    try:
        yield
    except OSError as exc:
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None


class GalleryIndexError(ValueError):
    """A gallery index that cannot be used as asked (wrong checkpoint, damaged files, ...)."""


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError as err:
        raise GalleryIndexError(
            "this needs faiss: pip install faiss-cpu (or pip install hrnet_pyg[search])"
        ) from err
    return faiss


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=1)
    atomic_write(path, lambda fh: fh.write(text), mode="w")


def exact_shortlist(
    queries: Tensor, blocks: Iterator[tuple[int, np.ndarray]], k: int
) -> tuple[Tensor, Tensor]:
    """Top-``k`` inner products of ``queries`` (Q, d) over gallery ``blocks`` of rows.

    ``blocks`` yields ``(offset, rows)`` with ``rows`` (B, d) (any float dtype, memory-mapped or
    not); the memory beyond the output is one (Q, B) block. Returns ``(sims, index)``, both
    (Q, k'), ``k' = min(k, G)``, best first.
    """
    q = queries.float()
    best_s = q.new_empty(q.size(0), 0)
    best_i = torch.empty(q.size(0), 0, dtype=torch.long)
    for offset, rows in blocks:
        g = torch.from_numpy(np.ascontiguousarray(rows)).float()  # float16 rows: converted by torch's threads
        s = q @ g.T  # (Q, B)
        kk = min(k, s.size(1))
        ts, ti = s.topk(kk, dim=1)
        best_s, best_i = merge_topk(best_s, best_i, ts, ti + offset, k, largest=True)
    return best_s, best_i


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
        self._feats: dict[str, np.ndarray] = {}
        self._retrieval: dict[str, np.ndarray] = {}
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
    def _open(self, kind: str, shard: _Shard) -> np.ndarray:
        cache = self._feats if kind == "feats" else self._retrieval
        if shard.name not in cache:
            file = self.path / f"{kind}_{shard.name}.npy"
            try:
                arr = np.load(file, mmap_mode="c")  # copy-on-write: writable views for torch, never written
            except (OSError, ValueError) as exc:
                raise GalleryIndexError(f"cannot read {file} ({type(exc).__name__}: {exc})") from exc
            if arr.shape != (shard.count, self.feat_dim):
                raise GalleryIndexError(
                    f"{file} has shape {arr.shape}, meta.json says ({shard.count}, {self.feat_dim})"
                )
            cache[shard.name] = arr
        return cache[shard.name]

    def blocks(self, kind: str = "retrieval", block: int = 32768) -> Iterator[tuple[int, np.ndarray]]:
        """``(offset, rows)`` of at most ``block`` rows, memory-mapped, in index order."""
        for s, shard in enumerate(self.shards):
            arr = self._open(kind, shard)
            for start in range(0, shard.count, block):
                yield int(self.offsets[s]) + start, arr[start : start + block]

    def rows(self, index: np.ndarray | Tensor, kind: str = "feats") -> np.ndarray:
        """float32 rows ``index`` (any shape) of F (``"feats"``) or of the retrieval features;
        reads only those rows of the memory-mapped files."""
        idx = np.asarray(index, dtype=np.int64)
        flat = idx.reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
            raise GalleryIndexError(f"row index outside 0..{len(self) - 1}")
        out = np.empty((flat.size, self.feat_dim), dtype=np.float32)
        shard_of = np.searchsorted(self.offsets, flat, side="right") - 1
        for s in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == s)
            local = flat[sel] - self.offsets[s]
            order = np.argsort(local, kind="stable")  # ascending offsets: sequential page reads
            arr = self._open(kind, self.shards[int(s)])
            out[sel[order]] = arr[local[order]]
        return out.reshape(*idx.shape, self.feat_dim)

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

        index = faiss.read_index(str(self.path / _FAISS_FILE))
        if index.ntotal != len(self):
            self.notes.append(
                f"note: {self.path / _FAISS_FILE} holds {index.ntotal} vectors, the index {len(self)} "
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
        if nprobe is not None and hasattr(index, "nprobe"):
            index.nprobe = int(nprobe)
        if ef_search is not None and hasattr(index, "hnsw"):
            index.hnsw.efSearch = int(ef_search)
        if hasattr(index, "hnsw") and index.hnsw.efSearch < k:
            index.hnsw.efSearch = k  # HNSW returns at most efSearch neighbours
        d, i = index.search(np.ascontiguousarray(queries.float().numpy()), k)
        return torch.from_numpy(d).float(), torch.from_numpy(i).long(), f"faiss {self.faiss_type}"

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
        **extract_kw: Any,
    ) -> GalleryIndex:
        """Extract the features of ``images`` and write a new index at ``path``.

        Args:
            model: the trained HRNet whose features the index holds.
            images: a folder, an image, a CSV (:func:`~hrnet_pyg.search.list_images`), an
                ``.npz`` from ``hrnet-pyg extract`` of this model, or :class:`ImageFeatures`.
            dtype: storage of the ``.npy`` files, ``float32`` or ``float16``. (default: float32)
            faiss_type: one of :data:`FAISS_TYPES`, or ``auto``: ``flat`` when faiss is
                installed, else ``none``. (default: ``auto``)
            nlist: IVF cells (default: ``round(sqrt(N))``, the usual rule of thumb).
            checkpoint: the checkpoint's path, recorded for messages.
            force: replace an existing index at ``path`` (only once the new one is complete).
            chunk: images extracted and written per shard.
            **extract_kw: passed to :func:`~hrnet_pyg.search.extract_images` (labels, batch_size,
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
            _import_faiss()
        if path.exists() and not force:
            raise GalleryIndexError(
                f"{path} exists; append images to it with hrnet-pyg index add, or replace it with "
                "--force (GalleryIndex.build(..., force=True))"
            )
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        inner = unwrap_model(model)
        with _naming(path):  # before any extraction: an unwritable folder fails at once
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
            _import_faiss()
        with _naming(self.path):  # before any extraction: a read-only index fails at once
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
        for kind, arr in (("feats", feats.features.float()), ("retrieval", retrieval)):
            with open(self.path / f"{kind}_{name}.npy", "wb") as fh:
                np.save(fh, arr.numpy().astype(dt))
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
        _write_json(self.path / "meta.json", meta)
        self.meta = meta
        self._faiss = None

    def build_faiss(self, faiss_type: str, *, nlist: int | None = None) -> None:
        """(Re)build the faiss part over every image of the index (``flat``, ``ivf``, ``hnsw``),
        or drop it (``none``); ``meta.json`` is replaced once the new part is written."""
        if faiss_type not in FAISS_TYPES:
            raise ValueError(f"faiss type must be one of {', '.join(FAISS_TYPES)}, got {faiss_type!r}")
        meta = dict(self.meta)
        if faiss_type == "none":
            meta["faiss"] = None
        else:
            tmp_file = self.path / (_FAISS_FILE + ".rebuild")
            part = self._update_faiss({"type": faiss_type, "nlist": nlist}, list(meta["shards"]),
                                      fresh=True, target=tmp_file)
            os.replace(tmp_file, self.path / _FAISS_FILE)
            meta["faiss"] = part
        _write_json(self.path / "meta.json", meta)
        self.meta = meta
        self._faiss = None

    def _update_faiss(
        self, part: dict[str, Any], new_shards: list[dict[str, Any]], *, fresh: bool = False,
        target: Path | None = None,
    ) -> dict[str, Any]:
        faiss = _import_faiss()
        file = self.path / _FAISS_FILE
        target = file if target is None else target
        d = self.feat_dim
        first_new = len(self) - sum(s["count"] for s in new_shards)
        if file.is_file() and not fresh:
            index = faiss.read_index(str(file))
            if index.ntotal != first_new:
                raise GalleryIndexError(
                    f"{file} holds {index.ntotal} vectors, the index {first_new}; rebuild it with "
                    "hrnet-pyg index build --force"
                )
        elif part["type"] == "flat":
            index = faiss.IndexFlatIP(d)
        elif part["type"] == "hnsw":
            index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 80
            # Recall at a fixed efSearch falls as the graph grows: benchmarks/bench_index.py measures
            # recall@120 0.97 at 384 for 200,000 images, and 0.90 at 384 / 0.96 at 768 for 1,000,000.
            part.setdefault("ef_search", 384 if len(self) <= 200_000 else 768)
        else:  # ivf: trained once, on the first images
            n = len(self)
            nlist = int(part.get("nlist") or max(1, round(math.sqrt(n))))
            nlist = max(1, min(nlist, n))
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            sample = self._training_sample(min(n, 64 * nlist))
            index.train(sample)
            part["nlist"] = nlist
            # half the cells: what recall@120 >= 0.95 needed on benchmarks/bench_index.py's features
            part.setdefault("nprobe", max(1, nlist // 2))
        start = first_new
        for offset, rows in self.blocks("retrieval"):
            if offset + len(rows) <= start:
                continue
            rows = rows[max(0, start - offset):]
            index.add(np.ascontiguousarray(rows, dtype=np.float32))
        fd, tmp = tempfile.mkstemp(prefix=_FAISS_FILE + ".", suffix=".tmp", dir=self.path)
        os.close(fd)
        try:
            faiss.write_index(index, tmp)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
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


# ---------------------------------------------------------------------------- search
@torch.no_grad()
def search_index(
    model: HRNet,
    query: PathLike | ImageFeatures,
    index: PathLike | GalleryIndex,
    *,
    topk: int = 10,
    rerank: bool = True,
    shortlist: int | None = None,
    exclude_self: bool = True,
    exact: bool = False,
    nprobe: int | None = None,
    ef_search: int | None = None,
    queries_per_pass: int = 16,
    labels: str = "auto",
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> SearchResult:
    """Rank the images of a :class:`GalleryIndex` for each query (images, a CSV or an ``.npz``).

    The ranking is that of :func:`hrnet_pyg.search.search_features` on the same gallery: the
    cosine shortlist of ``shortlist`` images (default ``config.top_k_rerank`` = 120) re-scored by
    :func:`~hrnet_pyg.scoring.score_query_graphs`, the rest of the ``topk`` listed in cosine
    order; only the shortlist's rows of F are read. ``exact=True`` takes the exact blocked
    product even when the index has a faiss part; ``nprobe`` overrides an IVF index's, ``ef_search``
    an HNSW index's.
    """
    from hrnet_pyg.scoring import score_query_graphs  # torch_geometric: only when re-ranking

    idx_obj = index if isinstance(index, GalleryIndex) else GalleryIndex(index)
    inner = unwrap_model(model)
    idx_obj.check_model(inner)
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    if shortlist is not None and shortlist < 1:
        raise ValueError(f"shortlist must be >= 1, got {shortlist}")
    if len(idx_obj) == 0:
        raise ValueError(f"index {idx_obj.path} holds no image")
    kw: dict[str, Any] = dict(labels=labels, batch_size=batch_size, num_workers=num_workers, device=device,
                              progress=progress)
    q = features_of(inner, query, **kw)
    if q.model_fingerprint is not None and q.model_fingerprint != idx_obj.fingerprint:
        raise GalleryIndexError(
            f"the query features were extracted by another model (fingerprint {q.model_fingerprint}, "
            f"the index's: {idx_obj.fingerprint}); extract them with the index's checkpoint"
        )
    dev = resolve_device(device)
    inner.to(dev).eval()
    notes: list[str] = []
    use_rerank = rerank and (inner.ir is not None or inner.pr is not None)
    if rerank and not use_rerank:
        notes.append("note: this model has no IR/PR module; ranked by cosine distance of BN(F)")
    n_short = min(shortlist or inner.config.top_k_rerank, len(idx_obj)) if use_rerank else 0
    want = max(topk, n_short)
    q_ret = Fn.normalize(_retrieval(inner, q.features.float(), dev), dim=1)  # (Q, d)
    sims, rows, how = idx_obj.shortlist(q_ret, want + (1 if exclude_self else 0), exact=exact, nprobe=nprobe,
                                        ef_search=ef_search)
    notes += idx_obj.notes
    paths = idx_obj.paths
    if exclude_self:
        keep_s, keep_r = [], []
        k = min(want, len(idx_obj) - 1) if len(idx_obj) > 1 else 0
        for i, qpath in enumerate(q.paths):
            me = os.path.normcase(os.path.realpath(qpath))
            valid = [j for j, r in enumerate(rows[i].tolist())
                     if r >= 0 and os.path.normcase(os.path.realpath(paths[r])) != me][:k]
            keep_s.append(sims[i, valid])
            keep_r.append(rows[i, valid])
        k = min(len(r) for r in keep_r)
        sims = torch.stack([s[:k] for s in keep_s])
        rows = torch.stack([r[:k] for r in keep_r])
    if rows.size(1) < 1:
        raise ValueError("the index holds only the query image itself; nothing to rank")
    if bool((rows < 0).any()):  # faiss pads with -1 when it finds fewer neighbours
        raise GalleryIndexError(
            f"the faiss {idx_obj.faiss_type} index returned fewer than {rows.size(1)} neighbours for a "
            "query; raise --nprobe or search with --exact"
        )
    order = torch.arange(rows.size(1)).expand_as(rows).clone()  # positions in the cosine shortlist
    score = torch.full(rows.shape, float("nan"))
    m = min(n_short, rows.size(1))
    if use_rerank and m >= 1:
        passes = range(0, len(q), queries_per_pass)
        for s in progress_of(passes, "relational re-ranking", show=progress, unit="passes"):
            e = min(s + queries_per_pass, len(q))
            g = torch.from_numpy(idx_obj.rows(rows[s:e, :m].numpy()))  # (B, m, d): the shortlist only
            graph = torch.cat([q.features[s:e].float().unsqueeze(1), g], dim=1).to(dev)  # (B, 1 + m, d)
            sc = score_query_graphs(inner, graph).float().cpu()  # (B, m)
            score[s:e, :m] = sc
            order[s:e, :m] = torch.sort(sc, dim=1, descending=True, stable=True).indices
    k = min(topk, rows.size(1))
    order = order[:, :k]
    picked = rows.gather(1, order)  # (Q, k) gallery rows, best first
    uniq, inverse = torch.unique(picked, return_inverse=True)
    g_rows = uniq.tolist()
    g_pids = idx_obj.pids
    notes.append(f"note: shortlist from {how} over {len(idx_obj)} indexed images ({idx_obj.path})")
    return SearchResult(
        query_paths=list(q.paths),
        gallery_paths=[paths[r] for r in g_rows],
        indices=inverse.view_as(picked),
        cosine_distance=1.0 - sims.gather(1, order),
        relational_score=score.gather(1, order) if use_rerank else None,
        reranked=use_rerank,
        q_pids=q.pids,
        g_pids=g_pids[g_rows] if g_pids is not None else None,
        notes=notes,
    )


__all__ = [
    "DTYPES",
    "FAISS_TYPES",
    "GalleryIndex",
    "INDEX_FORMAT",
    "GalleryIndexError",
    "exact_shortlist",
    "faiss_available",
    "search_index",
]
