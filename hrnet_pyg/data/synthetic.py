"""A procedurally drawn re-ID dataset in Market-1501 format (the demo's and end-to-end tests' data).

Each identity has a stable appearance (skin and hair, hair style or cap, shirt and trouser
colours, a shirt pattern -- plain, stripes, chest logo, two-tone --, sleeve and leg length,
shoes, body proportions, an optional backpack or shoulder bag). Each camera has its own
background scene, colour cast, brightness, contrast, subject scale, resolution, blur, noise and
a preferred viewpoint. Each image adds pose jitter (stride, arm swing, horizontal shift, small
rotation, scale), a viewpoint (front / back / side: the logo only shows from the front, a
backpack mostly from the back), a random horizontal flip and, sometimes, an occluder.

So a camera changes every pixel of a person while identity lives in colours and layout of body
parts: raw pixels match the camera (background, light) more than the person, and a learned model
has something to learn. Everything is a pure function of the seed: the appearance of identity
``p`` depends only on ``(seed, p)``, the look of camera ``c`` only on ``(seed, c)``.

Output: ``root/{bounding_box_train,query,bounding_box_test}/PPPP_cCsS_FFFFFF_BB.jpg`` plus
``root/manifest.json`` recording the parameters; pid ``-1`` (junk) and ``0000`` (distractor)
images sit in the gallery like in Market-1501.

This module plans and writes the dataset; how one image is drawn (the appearance models and the
drawing primitives) is :mod:`hrnet_pyg.data.synthetic_drawing`, whose names it re-exports.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hrnet_pyg.data.base import DatasetError, PathLike, ReIDDataset, parse_market_splits
from hrnet_pyg.data.synthetic_drawing import (
    Camera,
    Identity,
    draw_camera,
    draw_identity,
    draw_person,
    render_distractor,
    render_image,
)
from hrnet_pyg.runtime import progress as progress_of

# Bump when the drawing changes, so an old folder is regenerated rather than silently reused.
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of :func:`generate_synthetic_dataset` (all recorded in the manifest)."""

    num_train_ids: int = 60  # identities of bounding_box_train
    num_test_ids: int = 60  # identities of query + bounding_box_test (disjoint from train)
    num_cams: int = 6  # cameras, 1..9 (one digit in Market names)
    imgs_per_id: int = 12  # images per identity (train and test)
    min_cams_per_id: int = 2  # each identity is seen by a random subset of cameras
    max_cams_per_id: int = 4
    queries_per_id: int = 2  # query images per test identity, each from another camera
    num_distractors: int = 20  # pid 0000 gallery images (background / fragments)
    num_junk: int = 10  # pid -1 gallery images (dropped by the parser)
    height: int = 128  # saved image size
    width: int = 64
    occlusion_p: float = 0.15  # probability of an occluder per image
    jpeg_quality: int = 90
    seed: int = 0

    def validate(self) -> None:
        if self.num_train_ids < 1 or self.num_test_ids < 1:
            raise ValueError("num_train_ids and num_test_ids must be >= 1")
        if not 2 <= self.num_cams <= 9:
            raise ValueError(
                f"num_cams must lie in 2..9 (one-digit camera ids), got {self.num_cams}"
            )
        if not 1 <= self.min_cams_per_id <= min(self.max_cams_per_id, self.num_cams):
            raise ValueError("need 1 <= min_cams_per_id <= min(max_cams_per_id, num_cams)")
        if self.min_cams_per_id < 2:
            raise ValueError("min_cams_per_id must be >= 2 so every query has a cross-camera match")
        if self.queries_per_id < 1:
            raise ValueError("queries_per_id must be >= 1")
        if self.imgs_per_id < 2 * self.min_cams_per_id:
            raise ValueError(
                f"imgs_per_id={self.imgs_per_id} must be >= 2 * min_cams_per_id "
                f"({2 * self.min_cams_per_id}): each camera of a test identity needs a query "
                f"and a gallery image"
            )
        if self.num_train_ids + self.num_test_ids > 9999:
            raise ValueError("at most 9999 identities fit the 4-digit Market names")
        if self.height < 16 or self.width < 8:
            raise ValueError(f"image size {self.height}x{self.width} is too small")
        if self.num_distractors < 0 or self.num_junk < 0:
            raise ValueError("num_distractors and num_junk must be >= 0")
        if not 0.0 <= self.occlusion_p <= 1.0:
            raise ValueError("occlusion_p must lie in [0, 1]")

# --------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------


@dataclass
class _Job:
    split: str
    pid: int  # Market pid (-1 junk, 0 distractor)
    cam: int  # 1-based
    serial: int


def _plan(cfg: SyntheticConfig) -> list[_Job]:
    """Which image goes where: cameras per identity, query/gallery assignment."""
    rng = np.random.default_rng([cfg.seed, 33])
    jobs: list[_Job] = []
    serial = 0
    all_pids = list(range(1, cfg.num_train_ids + cfg.num_test_ids + 1))
    for pid in all_pids:
        is_test = pid > cfg.num_train_ids
        # at least two images per camera for test ids (a query and a gallery image)
        base = 2 if is_test else 1
        max_cams = min(cfg.max_cams_per_id, cfg.num_cams, cfg.imgs_per_id // base)
        n_cams = int(rng.integers(cfg.min_cams_per_id, max(cfg.min_cams_per_id, max_cams) + 1))
        cams = sorted(int(c) + 1 for c in rng.choice(cfg.num_cams, size=n_cams, replace=False))
        counts = {c: base for c in cams}
        for c in rng.choice(cams, size=cfg.imgs_per_id - base * n_cams):
            counts[int(c)] += 1
        query_cams = set(
            int(c) for c in rng.choice(cams, size=min(cfg.queries_per_id, n_cams), replace=False)
        ) if is_test else set()
        for c in cams:
            for k in range(counts[c]):
                if not is_test:
                    split = "bounding_box_train"
                else:
                    split = "query" if (k == 0 and c in query_cams) else "bounding_box_test"
                jobs.append(_Job(split, pid, c, serial))
                serial += 1
    for pid, n in ((0, cfg.num_distractors), (-1, cfg.num_junk)):
        for _ in range(n):
            jobs.append(_Job("bounding_box_test", pid, int(rng.integers(1, cfg.num_cams + 1)),
                             serial))
            serial += 1
    return jobs


def _file_name(job: _Job) -> str:
    pid = "-1" if job.pid == -1 else f"{job.pid:04d}"
    seq = 1 + job.serial % 6
    return f"{pid}_c{job.cam}s{seq}_{job.serial * 25:06d}_{1 + job.serial % 3:02d}.jpg"


def generate_synthetic_dataset(
    root: str | os.PathLike[str],
    *,
    num_train_ids: int = 60,
    num_test_ids: int = 60,
    num_cams: int = 6,
    imgs_per_id: int = 12,
    min_cams_per_id: int = 2,
    max_cams_per_id: int = 4,
    queries_per_id: int = 2,
    num_distractors: int = 20,
    num_junk: int = 10,
    height: int = 128,
    width: int = 64,
    occlusion_p: float = 0.15,
    jpeg_quality: int = 90,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a Market-1501-format folder of drawn pedestrians to ``root``; return ``root``.

    ``root`` receives ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` and
    ``manifest.json``. When ``root/manifest.json`` already records the same parameters (and
    generator version) nothing is drawn. A folder with another manifest is replaced; a non-empty
    folder without manifest is never touched (error). Images are written to a temporary sibling
    folder and moved into place at the end, so an interrupted run leaves no half dataset.

    With the defaults: 60 train ids x 12 images (720), 60 test ids with 2 queries each (120
    query, 600 + 20 distractor + 10 junk gallery images), 6 cameras, 128x64 JPEGs.
    """
    cfg = SyntheticConfig(
        num_train_ids=num_train_ids, num_test_ids=num_test_ids, num_cams=num_cams,
        imgs_per_id=imgs_per_id, min_cams_per_id=min_cams_per_id,
        max_cams_per_id=max_cams_per_id, queries_per_id=queries_per_id,
        num_distractors=num_distractors, num_junk=num_junk, height=height, width=width,
        occlusion_p=occlusion_p, jpeg_quality=jpeg_quality, seed=seed,
    )
    cfg.validate()
    root = Path(root).expanduser()
    params = asdict(cfg)
    if root.exists():
        if (root / "manifest.json").is_file():
            if not overwrite and _manifest_matches(root, params):
                return root
        elif any(root.iterdir()):
            raise DatasetError(
                f"synthetic: {root} exists, is not empty and has no manifest.json, so it was not "
                f"written by this generator; refusing to overwrite it (remove it or pick another "
                f"root)"
            )

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        counts = _write_images(cfg, tmp, progress)
        manifest = {
            "generator": "hrnet_pyg.data.synthetic",
            "version": GENERATOR_VERSION,
            "params": params,
            "counts": counts,
            "digest": images_digest(tmp),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        # another process (e.g. a second DDP rank) may have finished the same job meanwhile
        if not overwrite and _manifest_matches(root, params):
            shutil.rmtree(tmp, ignore_errors=True)
            return root
        if root.exists():
            shutil.rmtree(root)
        try:
            os.replace(tmp, root)
        except OSError:
            if _manifest_matches(root, params):
                shutil.rmtree(tmp, ignore_errors=True)
                return root
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def images_digest(root: str | os.PathLike[str]) -> str:
    """SHA-256 over every image under ``root``: its relative path and bytes, in sorted path order.

    Two folders with the same digest hold byte-identical images under the same names, whatever
    order the file system lists them in; the demo prints it so that a user can tell a data
    difference from a training difference.
    """
    root = Path(root)
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.jpg"), key=lambda q: q.relative_to(root).as_posix()):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()


def _manifest_matches(root: Path, params: dict[str, object]) -> bool:
    try:
        old = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return old.get("params") == params and old.get("version") == GENERATOR_VERSION


def _write_images(cfg: SyntheticConfig, out: Path, progress: bool) -> dict[str, int]:
    size = (cfg.height, cfg.width)
    cams = {c: draw_camera(cfg.seed, c) for c in range(1, cfg.num_cams + 1)}
    idents: dict[int, Identity] = {}
    counts: dict[str, int] = {}
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        (out / split).mkdir()
    jobs = _plan(cfg)
    for job in progress_of(jobs, "drawing synthetic re-ID images", show=progress, unit="images", leave=True):
        rng = np.random.default_rng([cfg.seed, 44, job.serial])
        if job.pid > 0:
            if job.pid not in idents:
                idents[job.pid] = draw_identity(cfg.seed, job.pid)
            img = render_image(idents[job.pid], cams[job.cam], rng, size,
                               cfg.occlusion_p)
        else:
            img = render_distractor(cfg.seed, cams[job.cam], rng, size, junk=job.pid == -1)
        img.save(out / job.split / _file_name(job), quality=cfg.jpeg_quality)
        counts[job.split] = counts.get(job.split, 0) + 1
    return counts


# ---------------------------------------------------------------------------- the dataset
class SyntheticReID(ReIDDataset):
    """Procedurally drawn pedestrians in Market-1501 format (see :mod:`hrnet_pyg.data.synthetic`).

    Generated into ``root/synthetic`` on first use (a ``manifest.json`` records the generator
    parameters; a matching manifest means the images are reused), then parsed with the
    Market-1501 parser. Keyword arguments go to :func:`generate_synthetic_dataset`.
    """

    name = "synthetic"

    def __init__(self, root: PathLike, verify: bool = False, **kwargs: Any) -> None:
        root = Path(root).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        data_dir = generate_synthetic_dataset(root / "synthetic", **kwargs)
        manifest = json.loads((data_dir / "manifest.json").read_text())
        self.params: dict[str, Any] = manifest["params"]
        # a manifest without a digest (written by an older release): computed from the images
        self.digest: str = manifest.get("digest") or images_digest(data_dir)
        self.data_dir = str(data_dir)
        train, query, gallery = parse_market_splits(
            data_dir, max_camid=int(self.params["num_cams"]), dataset=self.name
        )
        super().__init__(train, query, gallery, root=data_dir)
        if verify:
            self.verify_images()


__all__ = [
    "GENERATOR_VERSION",
    "Camera",
    "Identity",
    "SyntheticConfig",
    "SyntheticReID",
    "draw_camera",
    "draw_identity",
    "draw_person",
    "generate_synthetic_dataset",
    "images_digest",
    "render_distractor",
    "render_image",
]
