"""Dataset parsers on generated folder trees with each dataset's exact naming, and bad input."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reid_trees import (
    CUHK03NP_FILES,
    DUKE_FILES,
    MARKET_FILES,
    MSMT_GALLERY,
    MSMT_QUERY,
    MSMT_TRAIN,
    MSMT_VAL,
    market_like_expected,
    write_cuhk03_mat,
    write_image,
    write_msmt,
    write_tree,
)

from hrnet_pyg.data import (
    DatasetError,
    DatasetNotFoundError,
    FeatureDataset,
    ImageDataset,
    ReIDDataset,
    ReIDRecord,
    build_dataset,
    build_transforms,
    dataset_statistics,
)


def _as_sorted(records):
    return sorted(tuple(r) for r in records)


def _check(ds, expected):
    train, query, gallery = expected
    assert _as_sorted(ds.train) == train
    assert _as_sorted(ds.query) == query
    assert _as_sorted(ds.gallery) == gallery
    for split in (ds.train, ds.query, ds.gallery):
        assert all(isinstance(r, ReIDRecord) for r in split)
        assert all(type(r.pid) is int and type(r.camid) is int for r in split)


# ---------------------------------------------------------------------------------------------
# Market-1501 and DukeMTMC-reID
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sub", ["market1501/Market-1501-v15.09.15", "market1501", "Market-1501-v15.09.15", ""]
)
def test_market1501_layouts(tmp_path, sub):
    data_dir = tmp_path / sub if sub else tmp_path
    write_tree(data_dir, MARKET_FILES)
    ds = build_dataset("market1501", tmp_path)
    _check(ds, market_like_expected(MARKET_FILES, data_dir.resolve()))
    # written out by hand as well: pids 2, 7, 10 -> 0, 1, 2; cameras 1-based -> 0-based
    assert sorted({(r.pid, r.camid) for r in ds.train}) == [(0, 0), (0, 1), (1, 0), (1, 2),
                                                            (2, 5)]
    assert ds.num_train_pids == 3 and ds.num_train_cams == 4
    assert -1 not in {r.pid for r in ds.gallery}  # junk dropped
    assert sum(r.pid == 0 for r in ds.gallery) == 2  # distractors kept
    assert ds.num_gallery_pids == 3 and ds.num_query_pids == 2
    assert len(ds.gallery) == 4 and ds.num_gallery_imgs == 4


def test_market_root_must_point_at_the_right_level(tmp_path):
    write_tree(tmp_path / "market1501" / "Market-1501-v15.09.15", MARKET_FILES)
    # the torchreid-style nested folder is preferred over a stray outer one
    (tmp_path / "market1501" / "bounding_box_train").mkdir()
    ds = build_dataset("market1501", tmp_path)
    assert "Market-1501-v15.09.15" in ds.data_dir


@pytest.mark.parametrize("sub", ["dukemtmc-reid/DukeMTMC-reID", "dukemtmc-reid", ""])
def test_dukemtmc_layouts(tmp_path, sub):
    data_dir = tmp_path / sub if sub else tmp_path
    write_tree(data_dir, DUKE_FILES)
    ds = build_dataset("dukemtmcreid", tmp_path)
    _check(ds, market_like_expected(DUKE_FILES, data_dir.resolve()))
    assert {r.camid for r in ds.query} == {1, 6}  # c2, c7
    assert ds.num_train_pids == 3


def test_summary_table(tmp_path):
    write_tree(tmp_path, MARKET_FILES)
    ds = build_dataset("market1501", tmp_path)
    text = ds.summary()
    lines = text.splitlines()
    assert "subset   | # ids | # images | # cameras" in text
    row = {ln.split("|")[0].strip(): [int(x) for x in ln.split("|")[1:]] for ln in lines
           if ln.strip().startswith(("train", "query", "gallery"))}
    assert row == {"train": [3, 5, 4], "query": [2, 2, 2], "gallery": [3, 4, 4]}
    stats = dataset_statistics("market1501", tmp_path)
    assert text in stats and "images per id" in stats and "distractors (pid 0): 2" in stats


def test_unknown_name_lists_valid_names(tmp_path):
    with pytest.raises(ValueError, match="valid names: market1501, dukemtmcreid, cuhk03"):
        build_dataset("market", tmp_path)
    # spelling variants of the same name are accepted
    write_tree(tmp_path, DUKE_FILES)
    assert build_dataset("DukeMTMC-reID", tmp_path).num_train_pids == 3


# ---------------------------------------------------------------------------------------------
# CUHK03
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sub", ["cuhk03/cuhk03-np/detected", "cuhk03-np/detected", "cuhk03/detected", ""]
)
def test_cuhk03_np_layouts(tmp_path, sub):
    data_dir = tmp_path / sub if sub else tmp_path
    write_tree(data_dir, CUHK03NP_FILES)
    ds = build_dataset("cuhk03", tmp_path)
    assert ds.variant == "np"
    _check(ds, market_like_expected(CUHK03NP_FILES, data_dir.resolve()))
    assert ds.num_train_pids == 2 and ds.num_train_cams == 2


def test_cuhk03_np_labeled(tmp_path):
    write_tree(tmp_path / "cuhk03-np" / "detected", CUHK03NP_FILES)
    labeled = {k: v[:-1] for k, v in CUHK03NP_FILES.items()}
    write_tree(tmp_path / "cuhk03-np" / "labeled", labeled)
    ds = build_dataset("cuhk03", tmp_path, cuhk03_labeled=True)
    assert all("/labeled/" in r.img_path for r in ds.train + ds.query + ds.gallery)
    assert len(ds.train) == 3


def test_cuhk03_original_release(tmp_path):
    pytest.importorskip("h5py")
    pytest.importorskip("scipy")
    base = tmp_path / "cuhk03"
    expected, names, labels, train_idx, query_idx, gallery_idx = write_cuhk03_mat(
        base, np.random.default_rng(0)
    )
    ds = build_dataset("cuhk03", tmp_path, progress=False)
    assert ds.variant == "mat"
    img_dir = base / "images_detected"
    # every non-empty cell extracted once, with torchreid's name, pixels in (H, W, 3) order
    written = sorted(p.name for p in img_dir.glob("*.png"))
    assert written == sorted(expected)
    for name, img in expected.items():
        np.testing.assert_array_equal(np.asarray(Image.open(img_dir / name)), img)
    # the protocol: 1-based indices, train relabelled in sorted label order, view -> camid
    def rows(idxs, relabel):
        sub = sorted({int(labels[i]) for i in idxs})
        lab = {p: i for i, p in enumerate(sub)}
        return sorted(
            (str((img_dir / names[i]).resolve()),
             lab[int(labels[i])] if relabel else int(labels[i]),
             int(names[i].split("_")[2]) - 1)
            for i in idxs
        )
    assert _as_sorted(ds.train) == rows(train_idx, True)
    assert _as_sorted(ds.query) == rows(query_idx, False)
    assert _as_sorted(ds.gallery) == rows(gallery_idx, False)
    # the second build reuses the extracted images (the marker file)
    marker = img_dir / ".extracted.json"
    stamp = marker.stat().st_mtime_ns
    (img_dir / written[0]).unlink()
    with pytest.raises(DatasetNotFoundError, match=written[0]):
        build_dataset("cuhk03", tmp_path, progress=False)
    assert marker.stat().st_mtime_ns == stamp


def test_cuhk03_original_release_without_protocol_file(tmp_path):
    (tmp_path / "cuhk03" / "cuhk03_release").mkdir(parents=True)
    (tmp_path / "cuhk03" / "cuhk03_release" / "cuhk-03.mat").write_bytes(b"x")
    with pytest.raises(DatasetNotFoundError, match="cuhk03_new_protocol_config_detected.mat"):
        build_dataset("cuhk03", tmp_path)


def test_cuhk03_h5py_missing_message(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_h5py(name, *args, **kwargs):
        if name == "h5py":
            raise ImportError("No module named 'h5py'")
        return real_import(name, *args, **kwargs)

    release = tmp_path / "cuhk03" / "cuhk03_release"
    release.mkdir(parents=True)
    (release / "cuhk-03.mat").write_bytes(b"x")
    (tmp_path / "cuhk03" / "cuhk03_new_protocol_config_detected.mat").write_bytes(b"x")
    monkeypatch.setattr(builtins, "__import__", no_h5py)
    with pytest.raises(ImportError, match="pip install h5py"):
        build_dataset("cuhk03", tmp_path, progress=False)


def test_cuhk03_nothing_found(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="cuhk03-np") as err:
        build_dataset("cuhk03", tmp_path)
    assert "cuhk-03.mat" in str(err.value)
    with pytest.raises(DatasetNotFoundError, match="cuhk03-np"):
        build_dataset("cuhk03", tmp_path, variant="np")


# ---------------------------------------------------------------------------------------------
# MSMT17
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "version,sub,dirs",
    [
        ("MSMT17_V1", "msmt17/MSMT17_V1", ("train", "test")),
        ("MSMT17_V2", "msmt17/MSMT17_V2", ("mask_train_v2", "mask_test_v2")),
        ("MSMT17_V1", "MSMT17_V1", ("train", "test")),
        ("MSMT17_V2", "MSMT17_V2", ("mask_train_v2", "mask_test_v2")),
    ],
)
def test_msmt17_versions(tmp_path, version, sub, dirs):
    main = tmp_path / sub
    write_msmt(main, *dirs)
    ds = build_dataset("msmt17", tmp_path)
    assert ds.version == version
    main = main.resolve()

    def rows(items, folder):
        return [(str(main / folder / rel), pid, int(rel.split("/")[1].split("_")[2]) - 1)
                for rel, pid in items]

    train = rows(MSMT_TRAIN + MSMT_VAL, dirs[0])  # list_train + list_val, as in the paper
    lab = {p: i for i, p in enumerate(sorted({r[1] for r in train}))}
    assert _as_sorted(ds.train) == sorted((p, lab[pid], c) for p, pid, c in train)
    assert _as_sorted(ds.query) == sorted(rows(MSMT_QUERY, dirs[1]))
    assert _as_sorted(ds.gallery) == sorted(rows(MSMT_GALLERY, dirs[1]))
    assert ds.num_train_pids == 3 and len(ds.train) == 5
    assert {r.camid for r in ds.train} == {0, 4, 14, 2, 6}
    only_train = build_dataset("msmt17", tmp_path, combine_val=False)
    assert len(only_train.train) == 3 and only_train.num_train_pids == 2


def test_msmt17_root_is_version_folder(tmp_path):
    write_msmt(tmp_path / "MSMT17_V2", "mask_train_v2", "mask_test_v2")
    ds = build_dataset("msmt17", tmp_path / "MSMT17_V2")
    assert len(ds.gallery) == 3


def test_msmt17_bad_inputs(tmp_path):
    main = tmp_path / "msmt17" / "MSMT17_V1"
    write_msmt(main, "train", "test")
    (main / "list_val.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="list_val.txt"):
        build_dataset("msmt17", tmp_path)
    (main / "list_val.txt").write_text("0000/0000_002_03_0303afternoon_0200_0.jpg\n")
    with pytest.raises(DatasetError, match=r"line 1 of .*list_val.txt"):
        build_dataset("msmt17", tmp_path)
    (main / "list_val.txt").write_text("0009/0009_000_01_0303noon_0001_0.jpg 9\n")
    with pytest.raises(DatasetNotFoundError, match="0009_000_01_0303noon_0001_0.jpg"):
        build_dataset("msmt17", tmp_path)
    (main / "list_val.txt").write_text("0000/0000_000_01_0303morning_0015_0.jpg 0\n")
    (main / "list_query.txt").write_text("")
    with pytest.raises(DatasetError, match="list_query.txt is empty"):
        build_dataset("msmt17", tmp_path)
    import shutil
    shutil.rmtree(main / "test")
    with pytest.raises(DatasetNotFoundError, match=r"MSMT17_V1/test"):
        build_dataset("msmt17", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="looked for MSMT17_V1") as err:
        build_dataset("msmt17", tmp_path / "empty")
    assert str((tmp_path / "empty" / "msmt17" / "MSMT17_V2").resolve()) in str(err.value)


# ---------------------------------------------------------------------------------------------
# bad input: Market-style parsers
# ---------------------------------------------------------------------------------------------


def test_missing_split_folder(tmp_path):
    files = {k: v for k, v in MARKET_FILES.items() if k != "query"}
    write_tree(tmp_path / "market1501", files)
    with pytest.raises(DatasetNotFoundError) as err:
        build_dataset("market1501", tmp_path)
    assert str((tmp_path / "market1501" / "query").resolve()) in str(err.value)
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, ValueError)


def test_nothing_found_lists_candidates(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        build_dataset("market1501", tmp_path)
    assert "Market-1501-v15.09.15" in str(err.value) and "bounding_box_train" in str(err.value)
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        build_dataset("market1501", tmp_path / "absent")


def test_unparseable_name(tmp_path):
    files = dict(MARKET_FILES)
    files["bounding_box_train"] = files["bounding_box_train"] + ["person2_cam1.jpg"]
    write_tree(tmp_path, files)
    with pytest.raises(DatasetError) as err:
        build_dataset("market1501", tmp_path)
    assert str(tmp_path.resolve() / "bounding_box_train" / "person2_cam1.jpg") in str(err.value)
    assert "0002_c1s1_000451_03.jpg" in str(err.value)  # says what was expected


def test_camera_out_of_range(tmp_path):
    files = dict(MARKET_FILES)
    files["query"] = files["query"] + ["0004_c7s1_000001_00.jpg"]
    write_tree(tmp_path, files)
    with pytest.raises(DatasetError, match=r"0004_c7s1_000001_00.jpg is outside c1..c6"):
        build_dataset("market1501", tmp_path)


@pytest.mark.parametrize("content", [[], ["Thumbs.db"], ["-1_c1s1_000001_01.jpg"]])
def test_empty_split(tmp_path, content):
    files = dict(MARKET_FILES)
    files["query"] = content
    write_tree(tmp_path, files)
    with pytest.raises(DatasetError) as err:
        build_dataset("market1501", tmp_path)
    assert str((tmp_path / "query").resolve()) in str(err.value)


def test_corrupt_image(tmp_path):
    write_tree(tmp_path, MARKET_FILES)
    bad = tmp_path / "query" / "0001_c1s1_001051_00.jpg"
    good = (tmp_path / "bounding_box_train" / "0002_c1s1_000451_03.jpg").read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # truncated JPEG
    ds = build_dataset("market1501", tmp_path)  # parsing does not decode
    with pytest.raises(DatasetError, match="0001_c1s1_001051_00.jpg") as err:
        build_dataset("market1501", tmp_path, verify=True)
    assert "1 unreadable image" in str(err.value)
    loader = ImageDataset(ds.query)
    i = [r.img_path for r in ds.query].index(str(bad.resolve()))
    with pytest.raises(DatasetError, match=str(bad.resolve())):
        loader[i]
    bad.write_text("definitely not a jpeg")
    with pytest.raises(DatasetError, match="corrupt or not an image"):
        loader[i]
    bad.unlink()
    with pytest.raises(FileNotFoundError, match=str(bad.resolve())):
        loader[i]


# ---------------------------------------------------------------------------------------------
# torch datasets
# ---------------------------------------------------------------------------------------------


def test_image_dataset_items(tmp_path):
    write_tree(tmp_path, MARKET_FILES)
    ds = build_dataset("market1501", tmp_path)
    data = ImageDataset(ds.train, transform=build_transforms(32, 16, is_train=False))
    img, pid, camid, index = data[3]
    assert img.shape == (3, 32, 16) and img.dtype == torch.float32
    assert (pid, camid, index) == (ds.train[3].pid, ds.train[3].camid, 3)
    assert data.pids == [r.pid for r in ds.train] and len(data) == len(ds.train)
    raw, *_ = ImageDataset(ds.train)[0]
    assert isinstance(raw, Image.Image) and raw.mode == "RGB"


def test_feature_dataset():
    feats = torch.randn(5, 3)
    ds = FeatureDataset(feats, [3, 3, 1, 1, 2], camids=torch.tensor([0, 1, 0, 1, 0]))
    f, pid, camid, idx = ds[2]
    assert torch.equal(f, feats[2]) and (pid, camid, idx) == (1, 0, 2)
    assert ds.pids == [3, 3, 1, 1, 2] and ds.has_camids
    assert FeatureDataset(feats, np.arange(5)).camids == [0] * 5
    with pytest.raises(ValueError, match="pids must hold 5"):
        FeatureDataset(feats, [1, 2])
    with pytest.raises(ValueError, match="camids must hold 5"):
        FeatureDataset(feats, [1] * 5, camids=[0])
    with pytest.raises(ValueError, match="2-D"):
        FeatureDataset(torch.randn(5), [1] * 5)


def test_base_class_rejects_unrelabelled_train():
    with pytest.raises(DatasetError, match="relabelled"):
        ReIDDataset([("a.jpg", 3, 0)], [], [])


# ---------------------------------------------------------------------------------------------
# custom CSV and folder datasets
# ---------------------------------------------------------------------------------------------


def _csv(path: Path, rows, header="path,pid,camid"):
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))


def test_custom_csv(tmp_path):
    imgs = tmp_path / "imgs"
    for n in ["a", "b", "c", "d", "q1", "q2", "g1", "g2", "g3"]:
        write_image(imgs / f"{n}.jpg")
    _csv(tmp_path / "train.csv", [("imgs/a.jpg", 40, 1), ("imgs/b.jpg", 40, 2),
                                  ("imgs/c.jpg", 7, 1), (str(imgs / "d.jpg"), 12, 3)])
    _csv(tmp_path / "query.csv", [("imgs/q1.jpg", 5, 0), ("imgs/q2.jpg", 9, 1)])
    _csv(tmp_path / "gallery.csv", [("imgs/g1.jpg", 5, 1), ("imgs/g2.jpg", 9, 0),
                                    ("imgs/g3.jpg", -1, 0)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all query ids are in the gallery: no warning
        ds = build_dataset("custom", tmp_path)
    root = tmp_path.resolve()
    assert _as_sorted(ds.train) == sorted([
        (str(root / "imgs/a.jpg"), 2, 1), (str(root / "imgs/b.jpg"), 2, 2),
        (str(root / "imgs/c.jpg"), 0, 1), (str(imgs / "d.jpg"), 1, 3)])
    assert _as_sorted(ds.query) == [(str(root / "imgs/q1.jpg"), 5, 0),
                                    (str(root / "imgs/q2.jpg"), 9, 1)]
    assert len(ds.gallery) == 2  # pid -1 dropped
    assert ds.has_camids


def test_custom_csv_without_camids_and_named_ids(tmp_path):
    for n in ["a", "b", "q", "g", "h"]:
        write_image(tmp_path / "sub" / f"{n}.png")
    _csv(tmp_path / "sub" / "tr.csv", [("a.png", "alice"), ("b.png", "bob")], "path,pid")
    _csv(tmp_path / "q.csv", [("sub/q.png", "carol"), ("sub/h.png", "erin")], "path,pid")
    _csv(tmp_path / "g.csv", [("sub/g.png", "carol")], "path,pid")
    with pytest.warns(UserWarning) as record:
        ds = build_dataset("custom", tmp_path, train="sub/tr.csv", query="q.csv",
                           gallery=tmp_path / "g.csv")
    messages = [str(w.message) for w in record]
    assert any("1 of 2 query identities (1 query images) have no image in the gallery" in m
               for m in messages)
    assert any("no camera ids" in m for m in messages)
    assert not ds.has_camids and "no camera ids" in ds.summary()
    # paths relative to the CSV's folder; names -> sorted integers
    assert _as_sorted(ds.train) == sorted([(str(tmp_path.resolve() / "sub/a.png"), 0, 0),
                                           (str(tmp_path.resolve() / "sub/b.png"), 1, 0)])
    assert {r.pid for r in ds.query} == {0, 1} and [r.pid for r in ds.gallery] == [0]


def test_custom_csv_errors(tmp_path):
    for n in ["a", "b"]:
        write_image(tmp_path / f"{n}.jpg")
    _csv(tmp_path / "train.csv", [("a.jpg", 1, 0), ("b.jpg", 2, 0)])
    _csv(tmp_path / "query.csv", [("a.jpg", 1, 0)])
    _csv(tmp_path / "gallery.csv", [("b.jpg", 1, 0)])
    dup = r"(?s)duplicate .*a.jpg \(in .*train.csv and .*query.csv\)"
    with pytest.raises(DatasetError, match=dup):
        build_dataset("custom", tmp_path)
    _csv(tmp_path / "train.csv", [("a.jpg", 1, 0), ("a.jpg", 1, 1)])
    with pytest.raises(DatasetError, match="duplicate"):
        build_dataset("custom", tmp_path, query=None, gallery=None)
    _csv(tmp_path / "train.csv", [("a.jpg", 1, 0), ("missing.jpg", 2, 0)])
    with pytest.raises(DatasetNotFoundError, match=r"missing.jpg \(listed in .*train.csv\)"):
        build_dataset("custom", tmp_path, query=None, gallery=None)
    _csv(tmp_path / "train.csv", [("a.jpg", 1)], header="file,pid")
    with pytest.raises(DatasetError, match=r"train.csv has no 'path' column"):
        build_dataset("custom", tmp_path, query=None, gallery=None)
    _csv(tmp_path / "train.csv", [("a.jpg", 1, "x")])
    with pytest.raises(DatasetError, match="'camid' of .*train.csv must hold integers"):
        build_dataset("custom", tmp_path, query=None, gallery=None)
    _csv(tmp_path / "train.csv", [("a.jpg", "", 0)])
    with pytest.raises(DatasetError, match="empty 'pid' on line 2"):
        build_dataset("custom", tmp_path, query=None, gallery=None)
    with pytest.raises(DatasetNotFoundError, match="nope.csv does not exist"):
        build_dataset("custom", tmp_path, train="nope.csv")
    _csv(tmp_path / "train.csv", [("a.jpg", 1, 0)])
    with pytest.raises(DatasetError, match="both query and gallery"):
        build_dataset("custom", tmp_path, gallery=None)
    ds = build_dataset("custom", tmp_path, query=None, gallery=None)  # training only
    assert len(ds.train) == 1 and ds.query == [] and ds.gallery == []


def test_folder_dataset(tmp_path):
    for ident, n in (("zed", 2), ("amy", 3), ("bob", 1)):
        for i in range(n):
            write_image(tmp_path / "flat" / ident / f"{i}.jpg")
    ds = build_dataset("folder", tmp_path / "flat")
    assert sorted(r.pid for r in ds.train) == [0, 0, 0, 1, 2, 2]  # amy, bob, zed
    assert ds.query == [] and not ds.has_camids and all(r.camid == 0 for r in ds.train)

    split = tmp_path / "split"
    for s, ids in (("train", ["1", "2"]), ("query", ["10", "11"]), ("gallery", ["10", "11"])):
        for ident in ids:
            write_image(split / s / ident / "x.jpg")
            write_image(split / s / ident / "y.jpg")
    with pytest.warns(UserWarning, match="no camera ids"):
        ds = build_dataset("folder", split)
    assert ds.num_train_pids == 2 and {r.pid for r in ds.query} == {10, 11}
    assert len(ds.gallery) == 4

    (split / "gallery" / "12").mkdir()
    with pytest.raises(DatasetError, match=r"identity folder .*gallery/12 holds no images"):
        build_dataset("folder", split)
    write_image(tmp_path / "flat" / "loose.jpg")
    with pytest.raises(DatasetError, match="holds images directly"):
        build_dataset("folder", tmp_path / "flat")


# ---------------------------------------------------------------------------------------------
# Names as torchreid and fast-reid spell them
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["DukeMTMC", "dukemtmcreid", "DukeMTMC-reID", "dukemtmc_reid"])
def test_duke_aliases(tmp_path, name):
    data_dir = tmp_path / "dukemtmc-reid" / "DukeMTMC-reID"
    write_tree(data_dir, DUKE_FILES)
    ds = build_dataset(name, tmp_path)
    assert ds.name == "dukemtmcreid"
    _check(ds, market_like_expected(DUKE_FILES, data_dir.resolve()))


@pytest.mark.parametrize("name", ["msmt17_v2", "MSMT17_V2", "msmt17-v2"])
def test_msmt17_v2_alias_reads_the_v2_folder(tmp_path, name):
    write_msmt(tmp_path / "msmt17" / "MSMT17_V1", "train", "test")
    write_msmt(tmp_path / "msmt17" / "MSMT17_V2", "mask_train_v2", "mask_test_v2")
    assert build_dataset("msmt17", tmp_path).version == "MSMT17_V1"  # the plain name takes V1 first
    ds = build_dataset(name, tmp_path)
    assert ds.version == "MSMT17_V2"
    assert all("/MSMT17_V2/mask_" in r.img_path for r in ds.train + ds.query + ds.gallery)
    assert build_dataset("msmt17_v1", tmp_path).version == "MSMT17_V1"


def test_msmt17_v2_alias_without_v2_folder(tmp_path):
    write_msmt(tmp_path / "msmt17" / "MSMT17_V1", "train", "test")
    with pytest.raises(DatasetNotFoundError, match=r"looked for MSMT17_V2 \(mask_train_v2/, mask_test_v2/\)"):
        build_dataset("msmt17_v2", tmp_path)


def test_cuhk03_labeled_and_detected_aliases(tmp_path):
    write_tree(tmp_path / "cuhk03-np" / "detected", CUHK03NP_FILES)
    write_tree(tmp_path / "cuhk03-np" / "labeled", {k: v[:-1] for k, v in CUHK03NP_FILES.items()})
    labeled = build_dataset("cuhk03_labeled", tmp_path)
    assert labeled.kind == "labeled" and len(labeled.train) == 3
    assert all("/labeled/" in r.img_path for r in labeled.train + labeled.query + labeled.gallery)
    detected = build_dataset("CUHK03-detected", tmp_path)
    assert detected.kind == "detected"
    assert _as_sorted(detected.train) == _as_sorted(build_dataset("cuhk03", tmp_path).train)
    with pytest.raises(ValueError, match=r"'cuhk03_labeled' means cuhk03_labeled=True"):
        build_dataset("cuhk03_labeled", tmp_path, cuhk03_labeled=False)


def test_unknown_name_lists_aliases(tmp_path):
    with pytest.raises(ValueError, match=r"aliases: DukeMTMC, msmt17_v1, msmt17_v2, cuhk03_detected, cuhk03_labeled, "
                                         r"prid, caviar, CAVIARa, reid_small\)"):
        build_dataset("ilids", tmp_path)
