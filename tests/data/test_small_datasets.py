"""VIPeR, PRID 2011, GRID, CAVIAR4REID and their joint training set: layouts, protocols, splits.

Fake trees with the real names and sizes (empty files: the parsers read names only), and, when
``../shared/data/reid-small`` sits beside the repository (or ``HRNET_PYG_SHARED_DATA`` names the
``shared/data`` folder), the real images against the counts of its README.
"""
from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from reid_trees import (
    CAVIAR_ONE_CAMERA,
    VIPER_NUMBERS,
    write_caviar,
    write_grid,
    write_prid,
    write_reid_small,
    write_viper,
)

from hrnet_pyg.cli import main as cli_main
from hrnet_pyg.data import (
    DatasetError,
    DatasetNotFoundError,
    ImageDataset,
    PKSampler,
    build_dataset,
    dataset_statistics,
    seeded_split,
)

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("HRNET_PYG_SHARED_DATA", REPO.parent / "shared" / "data"))
REID_SMALL = SHARED_DATA / "reid-small"
SMALL = ("viper", "prid2011", "grid", "caviar4reid")

# (ids, images) per split under each protocol: ../shared/data/reid-small/README.md
EXPECTED = {
    "viper": {"train": (316, 632), "query": (316, 316), "gallery": (316, 316)},
    "prid2011": {"train": (100, 200), "query": (100, 100), "gallery": (649, 649)},
    "grid": {"train": (125, 250), "query": (125, 125), "gallery": (126, 900)},  # 125 + pid 0
    "caviar4reid": {"train": (47, 720), "query": (25, 250), "gallery": (25, 250)},
    "reid_small_joint": {"train": (588, 1802), "query": (316, 316), "gallery": (316, 316)},
}
MATCHES_PER_QUERY = {"viper": 1, "prid2011": 1, "grid": 1, "caviar4reid": 10}
FILES_USED = {"viper": 1264, "prid2011": 1134 - 185, "grid": 1275, "caviar4reid": 1220}


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    return write_reid_small(tmp_path_factory.mktemp("reid-small"))


def check_protocol(ds, name: str, split_id: int) -> None:
    """Everything the protocol promises, checked from the records."""
    for split, (ids, imgs) in EXPECTED[name].items():
        records = ds.split(split)
        assert (len({r.pid for r in records}), len(records)) == (ids, imgs), (name, split_id, split)
    if name == "reid_small_joint":
        return
    assert ds.split_id == split_id
    assert not set(ds.train_ids) & set(ds.test_ids)
    assert {r.pid for r in ds.query} == set(ds.test_ids)
    paths = [r.img_path for split in ("train", "query", "gallery") for r in ds.split(split)]
    assert len(paths) == len(set(paths)) == FILES_USED[name]  # no image twice, none left out
    # every query: its true matches in the gallery, all from the other camera (so that the
    # evaluation's same-camera filter keeps them)
    by_pid: dict[int, list] = {}
    for r in ds.gallery:
        by_pid.setdefault(r.pid, []).append(r)
    for q in ds.query:
        matches = by_pid.get(q.pid, [])
        assert len(matches) == MATCHES_PER_QUERY[name]
        assert all(g.camid != q.camid for g in matches)
    # training persons are seen by both cameras (CAVIAR's one-camera persons aside)
    cams = {}
    for r in ds.train:
        cams.setdefault(r.pid, set()).add(r.camid)
    two = [p for p, c in cams.items() if len(c) == 2]
    assert len(two) == {"caviar4reid": 25}.get(name, EXPECTED[name]["train"][0])
    if name == "prid2011":
        assert sum(r.pid > 200 for r in ds.gallery) == 549 and max(ds.train_ids + ds.test_ids) <= 200
    if name == "grid":
        assert sum(r.pid == 0 for r in ds.gallery) == 775 and 0 not in ds.test_ids


# ---------------------------------------------------------------------------- protocols, fake trees
@pytest.mark.parametrize("name", [*SMALL, "reid_small_joint"])
def test_protocol_counts_for_every_split_on_a_fake_tree(fake_root, name):
    train_sets = set()
    for split_id in range(10):
        ds = build_dataset(name, fake_root, split_id=split_id)
        check_protocol(ds, name, split_id)
        train_sets.add(frozenset(r.img_path for r in ds.train))
    assert len(train_sets) == 10  # ten different splits


def test_split_rule_is_the_documented_one(fake_root):
    # docs/datasets.md: default_rng(split_id).permutation over the sorted ids, first half trains
    for split_id in (0, 7):
        perm = np.random.default_rng(split_id).permutation(632)
        ds = build_dataset("viper", fake_root, split_id=split_id)
        assert ds.train_ids == sorted(VIPER_NUMBERS[i] for i in perm[:316])
        perm = np.random.default_rng(split_id).permutation(200)
        assert build_dataset("prid", fake_root, split_id=split_id).train_ids == sorted(1 + i for i in perm[:100])
    assert seeded_split([5, 3, 9, 1], 2, 4) == seeded_split([9, 1, 3, 5, 5], 2, 4)  # a set, not an order


def test_splits_do_not_depend_on_file_system_order(fake_root, monkeypatch):
    before = {n: build_dataset(n, fake_root, split_id=3) for n in SMALL}
    real_iterdir = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: reversed(list(real_iterdir(self))))
    for n in SMALL:
        after = build_dataset(n, fake_root, split_id=3)
        assert (after.train, after.query, after.gallery) == (before[n].train, before[n].query, before[n].gallery)


def test_viper_records_and_swap(fake_root):
    ds = build_dataset("viper", fake_root)
    sw = build_dataset("VIPeR", fake_root, swap=True)
    assert ds.train == sw.train
    assert ds.query == sw.gallery == [r._replace(camid=0) for r in ds.query]
    assert {r.camid for r in ds.query} == {0} and {r.camid for r in sw.query} == {1}
    assert all("/cam_a/" in r.img_path for r in ds.query) and all("/cam_b/" in r.img_path for r in ds.gallery)
    q = ds.query[0]
    assert Path(q.img_path).name.startswith(f"{q.pid:03d}_")
    assert "query cam_a, gallery cam_b" in ds.summary() and "query cam_b, gallery cam_a" in sw.summary()


def test_caviar_cameras_and_single_camera_option(fake_root):
    ds = build_dataset("caviar4reid", fake_root, split_id=2)
    assert all(int(Path(r.img_path).stem.split("_")[1]) <= 10 for r in ds.query)
    assert all(int(Path(r.img_path).stem.split("_")[1]) > 10 for r in ds.gallery)
    assert ds.single_camera_ids == CAVIAR_ONE_CAMERA
    only_two = build_dataset("caviar", fake_root, split_id=2, single_camera_train=False)
    assert (only_two.num_train_pids, only_two.num_train_imgs) == (25, 500)
    assert only_two.query == ds.query and only_two.gallery == ds.gallery


def test_joint_keeps_labels_apart_and_chooses_the_test_set(fake_root):
    joint = build_dataset("reid_small_joint", fake_root, split_id=4, test="grid")
    members = {n: build_dataset(n, fake_root, split_id=4) for n in SMALL}
    assert joint.query == members["grid"].query and joint.gallery == members["grid"].gallery
    offset = cam_offset = 0
    for n in SMALL:  # each member's train records, shifted by the members before it
        shifted = [(r.img_path, r.pid + offset, r.camid + cam_offset) for r in members[n].train]
        assert [tuple(r) for r in joint.train if r.img_path in {p for p, _, _ in shifted}] == shifted
        assert joint.pid_offsets[n] == offset
        offset += members[n].num_train_pids
        cam_offset += {"grid": 8}.get(n, 2)
        assert joint.test_set(n) == (members[n].query, members[n].gallery)
    assert joint.num_train_pids == offset == 588
    # no test image of any member is a training image of the union
    test_paths = {r.img_path for n in SMALL for split in joint.test_set(n) for r in split}
    assert not test_paths & {r.img_path for r in joint.train}
    assert "grid" in joint.protocol and "<- query/gallery" in joint.summary()
    with pytest.raises(ValueError, match="test must be one of viper, prid2011, grid, caviar4reid"):
        build_dataset("reid_small_joint", fake_root, test="market1501")
    with pytest.raises(ValueError, match="no member 'cuhk03'"):
        joint.test_set("cuhk03")


def test_joint_batches_draw_every_image_of_two_image_identities(fake_root):
    # docs/datasets.md, "K on these datasets": an identity with fewer than K images gives one
    # group holding each of its images, filled up by draws with replacement
    joint = build_dataset("reid_small_joint", fake_root)
    pids = [r.pid for r in joint.train]
    sampler = PKSampler(pids, P=16, K=4, seed=0)
    count = Counter(pids)
    for batch in sampler.batches(0):
        for g in range(16):
            group = batch[4 * g:4 * (g + 1)]
            pid = pids[group[0]]
            if count[pid] < 4:
                assert len(set(group)) == count[pid]


# ---------------------------------------------------------------------------- GRID's partition file
def test_grid_partition_file_gives_its_splits(tmp_path):
    savemat = pytest.importorskip("scipy.io").savemat
    data_dir = write_grid(tmp_path)
    rng = np.random.default_rng(0)
    chosen = [sorted(rng.choice(np.arange(1, 251), 125, replace=False).tolist()) for _ in range(10)]
    cells = np.empty((1, 10), dtype=object)
    for s, ids in enumerate(chosen):  # the release's layout: a struct whose third field is the list
        cells[0, s] = {"idxProbe": np.arange(3.0), "idxGallery": np.arange(4.0), "idx": np.array([ids], float)}
    savemat(data_dir / "features_and_partitions.mat", {"trainIdxAll": cells})
    for s in (0, 9):
        ds = build_dataset("grid", tmp_path, split_id=s)
        assert ds.split_source == "features_and_partitions.mat" and ds.train_ids == chosen[s]
        assert "features_and_partitions.mat" in ds.protocol
        check_protocol(ds, "grid", s)
    with pytest.raises(ValueError, match="split_id must be one of 0..9, got 10"):
        build_dataset("grid", tmp_path, split_id=10)
    # plain numeric entries are read too; a person the folders lack is named
    cells = np.empty((1, 1), dtype=object)
    cells[0, 0] = np.array([[1.0, 2.0, 999.0]])
    savemat(data_dir / "features_and_partitions.mat", {"trainIdxAll": cells})
    with pytest.raises(DatasetError, match=r"names person\(s\) \[999\] that probe/ lacks"):
        build_dataset("grid", tmp_path)
    savemat(data_dir / "features_and_partitions.mat", {"other": np.zeros(2)})
    with pytest.raises(DatasetError, match="has no 'trainIdxAll'; found \\['other'\\]"):
        build_dataset("grid", tmp_path)


def test_grid_without_partition_file_says_so(fake_root):
    ds = build_dataset("grid", fake_root)
    assert ds.split_source == "seeded random"
    assert "no features_and_partitions.mat" in ds.summary()


# ---------------------------------------------------------------------------- layouts and bad input
@pytest.mark.parametrize("name,sub,writer", [
    ("viper", "viper/VIPeR", write_viper), ("viper", "VIPeR", write_viper), ("viper", "", write_viper),
    ("prid2011", "prid2011/prid_2011/single_shot", write_prid), ("prid2011", "prid_2011/single_shot", write_prid),
    ("prid2011", "", write_prid),
    ("grid", "grid/underground_reid", write_grid), ("grid", "underground_reid", write_grid), ("grid", "", write_grid),
    ("caviar4reid", "caviar4reid", write_caviar), ("caviar4reid", "CAVIARa", write_caviar),
    ("caviar4reid", "", write_caviar),
])
def test_accepted_layouts(tmp_path, name, sub, writer):
    written = writer(tmp_path / "tmp")
    target = tmp_path / "root" / sub
    target.parent.mkdir(parents=True, exist_ok=True)
    written.rename(target)
    ds = build_dataset(name, tmp_path / "root")
    assert ds.data_dir == str(target.resolve())
    check_protocol(ds, name, 0)


@pytest.mark.parametrize("name,layout", [
    ("viper", "viper/VIPeR/cam_a"), ("prid2011", "prid2011/prid_2011/single_shot/cam_a"),
    ("grid", "grid/underground_reid/probe"), ("caviar4reid", "caviar4reid/"), ("reid_small_joint", "viper/"),
])
def test_wrong_root_is_one_line_naming_path_and_layout(tmp_path, name, layout):
    with pytest.raises(DatasetNotFoundError) as info:
        build_dataset(name, tmp_path / "nowhere")
    msg = str(info.value)
    assert "\n" not in msg and str(tmp_path / "nowhere") in msg and layout in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError) as info:
        build_dataset(name, tmp_path / "empty")
    msg = str(info.value)
    assert "\n" not in msg and "nothing found under" in msg and layout in msg and "looked in" in msg


def test_viper_bad_trees(tmp_path):
    root = write_viper(tmp_path)
    n = VIPER_NUMBERS[5]
    in_a, in_b = (next((root / cam).glob(f"{n:03d}_*.bmp")) for cam in ("cam_a", "cam_b"))
    in_b.unlink()
    with pytest.raises(DatasetError, match=rf"1 person\(s\) of .*cam_a have no image in .*cam_b, e.g. {in_a.name}"):
        build_dataset("viper", tmp_path)
    in_b.touch()
    extra = root / "cam_a" / f"{n:03d}_0.bmp"
    extra.touch()
    with pytest.raises(DatasetError, match=f"two images of person {n} in .*cam_a: {extra.name} and {in_a.name}"):
        build_dataset("viper", tmp_path)
    extra.unlink()
    (root / "cam_a" / "Thumbs.db").touch()  # not an image: ignored
    build_dataset("viper", tmp_path)
    (root / "cam_a" / "person.bmp").touch()
    with pytest.raises(DatasetError, match="cannot parse the file name .*person.bmp; expected names like 000_45.bmp"):
        build_dataset("viper", tmp_path)
    (root / "cam_a" / "person.bmp").unlink()
    shutil.rmtree(root / "cam_b")
    with pytest.raises(DatasetNotFoundError, match="found .*cam_a but not .*cam_b"):
        build_dataset("viper", tmp_path)


def test_prid_needs_persons_1_to_200_in_both_views(tmp_path):
    write_prid(tmp_path, num_a=150)
    with pytest.raises(DatasetError, match=r"50 of persons 1-200 have no image in .*cam_a, e.g. person_0151.png"):
        build_dataset("prid2011", tmp_path)


def test_grid_bad_trees(tmp_path):
    root = write_grid(tmp_path)
    (root / "probe" / "0000_1_1_1_1_1_1.jpeg").touch()
    with pytest.raises(DatasetError, match="is a distractor .* in probe/"):
        build_dataset("grid", tmp_path)
    (root / "probe" / "0000_1_1_1_1_1_1.jpeg").unlink()
    (root / "gallery" / "0300_2_1_1_1_1_1.jpeg").touch()
    with pytest.raises(DatasetError, match="gallery image .*0300_2.* of person 300 has no probe image"):
        build_dataset("grid", tmp_path)
    (root / "gallery" / "0300_2_1_1_1_1_1.jpeg").unlink()
    (root / "gallery" / "0007_9_1_1_1_1_1.jpeg").touch()
    with pytest.raises(DatasetError, match="camera 9 in file name .* is outside 1..8"):
        build_dataset("grid", tmp_path)
    (root / "gallery" / "0007_9_1_1_1_1_1.jpeg").unlink()
    next((root / "gallery").glob("0007_*")).unlink()
    with pytest.raises(DatasetError, match=r"1 probe person\(s\) have no gallery image, e.g. .*0007_"):
        build_dataset("grid", tmp_path)


def test_caviar_bad_image_number(tmp_path):
    root = write_caviar(tmp_path)
    (root / "0003_021.jpg").touch()
    with pytest.raises(DatasetError, match="image number 21 in file name .*0003_021.jpg is outside 1..20"):
        build_dataset("caviar4reid", tmp_path)


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_bad_split_id(fake_root, bad):
    with pytest.raises(ValueError, match=r"viper: split_id must be an integer >= 0"):
        build_dataset("viper", fake_root, split_id=bad)


def test_unknown_option_lists_the_options(fake_root):
    with pytest.raises(ValueError, match="'viper' has no option 'split'; its options: split_id, swap, verify"):
        build_dataset("viper", fake_root, split=1)
    with pytest.raises(ValueError, match="dataset 'market1501' has no option 'split_id'; its options: verify"):
        build_dataset("market1501", fake_root, split_id=1)


def test_verify_decodes_the_images(tmp_path):
    write_viper(tmp_path, images=True)
    ds = build_dataset("viper", tmp_path, verify=True)
    img, pid, camid, _ = ImageDataset(ds.query)[0]
    assert img.size == (4, 8) and pid == ds.query[0].pid and camid == 0
    Path(ds.gallery[3].img_path).write_bytes(b"not a bitmap")
    with pytest.raises(DatasetError, match="1 unreadable image"):
        build_dataset("viper", tmp_path, verify=True)


def test_statistics_and_cli(fake_root, capsys):
    stats = dataset_statistics("prid", fake_root, split_id=1)
    assert "gallery distractors (no query of their identity): 549" in stats
    assert cli_main(["datasets", "--name", "viper", "--root", str(fake_root)]) == 0
    out = capsys.readouterr().out
    rows = {ln.split("|")[0].strip(): [int(x) for x in ln.split("|")[1:]] for ln in out.splitlines()
            if "|" in ln and ln.strip().startswith(("train ", "query ", "gallery "))}
    assert rows == {"train": [316, 632, 2], "query": [316, 316, 1], "gallery": [316, 316, 1]}
    assert cli_main(["datasets", "--name", "reid_small_joint", "--root", str(fake_root), "--split-id", "2",
                     "--option", "test=caviar4reid"]) == 0
    out = capsys.readouterr().out
    assert "|   588 |     1802 |" in out and "split 2" in out and "caviar4reid" in out
    assert cli_main(["datasets", "--name", "viper", "--root", str(fake_root), "--option", "swap"]) == 2
    assert "--option 'swap' must look like KEY=VALUE" in capsys.readouterr().err


def test_a_decodable_tree_goes_through_image_dataset(tmp_path):
    write_caviar(tmp_path, images=True)
    ds = build_dataset("caviar4reid", tmp_path)
    assert len(ImageDataset(ds.train)) == 720 and ImageDataset(ds.train)[0][0].size == (4, 8)


# ---------------------------------------------------------------------------- the real images
@pytest.mark.skipif(not REID_SMALL.is_dir(), reason=f"real data absent: no {REID_SMALL} (../shared/data/reid-small)")
@pytest.mark.parametrize("name", [*SMALL, "reid_small_joint"])
def test_real_folder_matches_the_readme_for_every_split(name):
    for split_id in range(10):
        ds = build_dataset(name, REID_SMALL, split_id=split_id)
        check_protocol(ds, name, split_id)
    if name == "grid":
        assert ds.split_source == "seeded random"  # the copy has no features_and_partitions.mat
    # a few real images decode
    for split in ("train", "query", "gallery"):
        img = ImageDataset(ds.split(split))[0][0]
        assert img.mode == "RGB" and min(img.size) >= 20
