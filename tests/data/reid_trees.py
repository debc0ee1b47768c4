"""Helpers that write tiny dataset trees with each dataset's exact file naming."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, color: tuple[int, int, int] = (120, 60, 30), size=(4, 8)) -> Path:
    """A tiny valid image (``size`` = (width, height)); the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_tree(base: Path, files: dict[str, Iterable[str]]) -> dict[str, list[Path]]:
    """``files`` maps a folder (relative to ``base``) to file names; non-images get text."""
    out: dict[str, list[Path]] = {}
    for folder, names in files.items():
        d = base / folder
        d.mkdir(parents=True, exist_ok=True)
        out[folder] = []
        for i, name in enumerate(names):
            p = d / name
            if p.suffix.lower() in (".jpg", ".jpeg", ".png"):
                write_image(p, color=(10 * i % 255, 40, 90))
            else:
                p.write_text("not an image")
            out[folder].append(p)
    return out


# Market-1501: PPPP_cCsS_FFFFFF_BB.jpg; junk -1, distractor 0000; a Thumbs.db as in the release.
MARKET_FILES = {
    "bounding_box_train": [
        "0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg", "0007_c3s3_077419_03.jpg",
        "0007_c1s6_028546_01.jpg", "0010_c6s4_002952_02.jpg", "Thumbs.db",
    ],
    "query": ["0001_c1s1_001051_00.jpg", "0003_c2s3_064169_00.jpg"],
    "bounding_box_test": [
        "0001_c5s1_002376_02.jpg", "0003_c4s2_005023_01.jpg", "0000_c1s1_000151_01.jpg",
        "0000_c6s2_010143_04.jpg", "-1_c3s2_012345_01.jpg", "-1_c1s1_000401_03.jpg",
    ],
}

# DukeMTMC-reID: PPPP_cC_fFFFFFFF.jpg, 8 cameras.
DUKE_FILES = {
    "bounding_box_train": [
        "0005_c2_f0046985.jpg", "0005_c5_f0051781.jpg", "0008_c8_f0179066.jpg",
        "0012_c1_f0056078.jpg", "-1_c3_f0000001.jpg",
    ],
    "query": ["0033_c2_f0086217.jpg", "0035_c7_f0111006.jpg"],
    "bounding_box_test": [
        "0033_c1_f0057693.jpg", "0035_c8_f0112134.jpg", "0000_c3_f0000100.jpg",
        "-1_c4_f0002000.jpg",
    ],
}

# CUHK03-NP: PPPP_cV_N.png, V in {1, 2} (the two views of a camera pair).
CUHK03NP_FILES = {
    "bounding_box_train": ["0001_c1_1.png", "0001_c2_6.png", "0004_c1_2.png", "0004_c2_8.png"],
    "query": ["0003_c1_1.png", "0011_c2_7.png"],
    "bounding_box_test": ["0003_c2_9.png", "0011_c1_3.png", "0011_c1_4.png"],
}


def market_like_expected(files: dict[str, list[str]], base: Path):
    """An independent statement of the convention: drop -1, camid-1, relabel train sorted."""
    def rows(folder):
        out = []
        for n in files[folder]:
            if not n.endswith((".jpg", ".png")):
                continue
            pid = int(n.split("_")[0])
            cam = int(n.split("_")[1][1])
            if pid == -1:
                continue
            out.append((str(base / folder / n), pid, cam - 1))
        return sorted(out)

    train = rows("bounding_box_train")
    labels = {p: i for i, p in enumerate(sorted({r[1] for r in train}))}
    train = sorted((p, labels[pid], c) for p, pid, c in train)
    return train, rows("query"), rows("bounding_box_test")


# MSMT17: <pid>/<pid>_<idx>_<camera>_<date+time>_<frame>_<n>.jpg with list files.
MSMT_TRAIN = [("0000/0000_000_01_0303morning_0015_0.jpg", 0),
              ("0000/0000_001_05_0303morning_0016_1.jpg", 0),
              ("0001/0001_000_15_0303noon_0100_0.jpg", 1)]
MSMT_VAL = [("0000/0000_002_03_0303afternoon_0200_0.jpg", 0),
            ("0002/0002_000_07_0303noon_0300_2.jpg", 2)]
MSMT_QUERY = [("0000/0000_000_02_0113morning_0001_0.jpg", 0),
              ("0003/0003_004_11_0113noon_0002_1.jpg", 3)]
MSMT_GALLERY = [("0000/0000_001_09_0113morning_0020_0.jpg", 0),
                ("0003/0003_000_12_0113noon_0030_0.jpg", 3),
                ("0004/0004_000_02_0113noon_0040_0.jpg", 4)]


def write_msmt(main: Path, train_dir: str, test_dir: str) -> None:
    for lst, img_dir, rows in (("list_train.txt", train_dir, MSMT_TRAIN),
                               ("list_val.txt", train_dir, MSMT_VAL),
                               ("list_query.txt", test_dir, MSMT_QUERY),
                               ("list_gallery.txt", test_dir, MSMT_GALLERY)):
        for rel, _ in rows:
            write_image(main / img_dir / rel)
        main.mkdir(parents=True, exist_ok=True)
        (main / lst).write_text("".join(f"{rel} {pid}\n" for rel, pid in rows))


def write_cuhk03_mat(base: Path, rng: np.random.Generator):
    """A cuhk-03.mat in MATLAB v7.3 layout plus the 767/700 protocol file (tiny version).

    MATLAB writes arrays column-major, so HDF5 holds every array transposed: the ``detected``
    cell (5 camera pairs) is a (1, 5) reference dataset, each pair a (10, num_persons) reference
    dataset, each image a (3, W, H) uint8 dataset; empty cells are uint64 ``[0, 0]``.
    Returns ``{file name: (H, W, 3) image}`` of what extraction should write.
    """
    import h5py
    from scipy.io import savemat

    release = base / "cuhk03_release"
    release.mkdir(parents=True)
    expected = {}
    persons_per_pair = [2, 1, 1, 1, 1]
    with h5py.File(release / "cuhk-03.mat", "w") as f:
        refs_grp = f.create_group("#refs#")
        counter = [0]

        def new_ds(data):
            counter[0] += 1
            return refs_grp.create_dataset(str(counter[0]), data=data)

        for kind in ("detected", "labeled"):
            pair_refs = []
            for pair, n_persons in enumerate(persons_per_pair):
                cell = np.empty((n_persons, 10), dtype=object)
                for person in range(n_persons):
                    for img_idx in range(10):
                        if img_idx in (4, 9) and person == 0:  # an empty cell per view
                            cell[person, img_idx] = new_ds(np.zeros(2, dtype=np.uint64)).ref
                            continue
                        h, w = 6 + img_idx % 3, 3 + pair % 2
                        img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                        view = 1 if img_idx < 5 else 2
                        name = f"{pair + 1}_{person + 1:03d}_{view}_{img_idx + 1:02d}.png"
                        if kind == "detected":
                            expected[name] = img
                        cell[person, img_idx] = new_ds(img.T).ref
                ds = refs_grp.create_dataset(
                    f"{kind}{pair}", data=cell.T, dtype=h5py.ref_dtype
                )
                pair_refs.append(ds.ref)
            f.create_dataset(kind, data=np.array([pair_refs], dtype=object), dtype=h5py.ref_dtype)

    names = sorted(expected)
    # identities: (pair, person) -> label; train = pair-1 persons, test = the others
    person_of = {n: (int(n.split("_")[0]), int(n.split("_")[1])) for n in names}
    keys = sorted(set(person_of.values()))
    label_of = {k: 100 + 7 * i for i, k in enumerate(keys)}  # non-contiguous original labels
    labels = np.array([label_of[person_of[n]] for n in names], dtype=np.float64)
    train_idx = [i for i, n in enumerate(names) if person_of[n][0] == 1]
    test = [i for i, n in enumerate(names) if person_of[n][0] != 1]
    query_idx = [i for i in test if names[i].endswith(("_01.png", "_06.png"))]
    gallery_idx = [i for i in test if i not in query_idx]
    filelist = np.empty((len(names), 1), dtype=object)
    for i, n in enumerate(names):
        filelist[i, 0] = n
    cfg = {
        "train_idx": np.array(train_idx)[:, None] + 1,
        "query_idx": np.array(query_idx)[:, None] + 1,
        "gallery_idx": np.array(gallery_idx)[:, None] + 1,
        "labels": labels[:, None],
        "filelist": filelist,
        "camId": np.array([int(n.split("_")[2]) for n in names], dtype=np.float64)[:, None],
    }
    savemat(base / "cuhk03_new_protocol_config_detected.mat", cfg)
    return expected, names, labels, train_idx, query_idx, gallery_idx


# The four small datasets of ../shared/data/reid-small, at their real sizes, as empty files (the
# parsers read names only; ``images=True`` writes tiny decodable images instead, slower).
VIPER_NUMBERS = [i * 874 // 632 for i in range(632)]  # 632 persons numbered 0..873 with gaps
GRID_PAIRED, GRID_DISTRACTORS = 250, 775
CAVIAR_ONE_CAMERA = [1, 2, 5, 10, 11, 13, 14, 17, 25, 26, 39, 42, 43, 48, 49, 51, 53, 54, 56, 61, 63, 72]


def _touch(path: Path, images: bool) -> None:
    if images:
        write_image(path)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def write_viper(base: Path, images: bool = False) -> Path:
    """``base/viper/VIPeR/cam_{a,b}/NNN_ANGLE.bmp``: 632 persons, one image per camera."""
    root = base / "viper" / "VIPeR"
    for n in VIPER_NUMBERS:
        _touch(root / "cam_a" / f"{n:03d}_{(n * 45) % 360}.bmp", images)
        _touch(root / "cam_b" / f"{n:03d}_{(n * 45 + 90) % 360}.bmp", images)
    return root


def write_prid(base: Path, images: bool = False, num_a: int = 385, num_b: int = 749) -> Path:
    """``base/prid2011/prid_2011/single_shot/cam_{a,b}/person_NNNN.png``: persons 1-200 in both."""
    root = base / "prid2011" / "prid_2011" / "single_shot"
    for cam, num in (("cam_a", num_a), ("cam_b", num_b)):
        for p in range(1, num + 1):
            _touch(root / cam / f"person_{p:04d}.png", images)
    return root


def write_grid(base: Path, images: bool = False) -> Path:
    """``base/grid/underground_reid/{probe,gallery}``: 250 pairs on two different cameras of 8,
    plus 775 distractors (person 0000) in the gallery."""
    root = base / "grid" / "underground_reid"
    for p in range(1, GRID_PAIRED + 1):
        cam = 1 + p % 7  # the probe camera is the lower one, as in the copy
        _touch(root / "probe" / f"{p:04d}_{cam}_{25000 + 4 * p}_10_20_90_220.jpeg", images)
        _touch(root / "gallery" / f"{p:04d}_{cam + 1}_{26000 + 4 * p}_11_21_91_221.jpeg", images)
    for d in range(GRID_DISTRACTORS):
        _touch(root / "gallery" / f"0000_{1 + d % 8}_{30000 + d}_12_22_92_222.jpeg", images)
    return root


def write_caviar(base: Path, images: bool = False) -> Path:
    """``base/caviar4reid/PPPP_III.jpg``: 72 persons, 50 with images 001-020, 22 with 001-010."""
    root = base / "caviar4reid"
    for p in range(1, 73):
        for i in range(1, 11 if p in CAVIAR_ONE_CAMERA else 21):
            _touch(root / f"{p:04d}_{i:03d}.jpg", images)
    return root


def write_reid_small(base: Path, images: bool = False) -> Path:
    """All four, as ``../shared/data/reid-small`` lays them out."""
    write_viper(base, images)
    write_prid(base, images)
    write_grid(base, images)
    write_caviar(base, images)
    return base
