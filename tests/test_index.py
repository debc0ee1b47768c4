"""The persistent gallery index (hrnet_pyg/index/, ``hrnet-pyg index``, ``search --index``)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hrnet_pyg import HRNet, HRNetConfig
from hrnet_pyg.cli import main
from hrnet_pyg.index import GalleryIndex, GalleryIndexError, exact_shortlist, faiss_available, search_index
from hrnet_pyg.protocol import RerankConfig
from hrnet_pyg.search import ImageFeatures, extract_images, search


def tiny_model(seed: int = 0) -> HRNet:
    torch.manual_seed(seed)
    cfg = HRNetConfig(backbone="resnet18", pretrained=False, image_size=(64, 32), k=3)
    model = HRNet(cfg, num_classes=3, rerank_config=RerankConfig(shortlist=6))
    bn = model.bnneck.bn  # non-trivial BN statistics: BN(F) differs from F
    g = torch.Generator().manual_seed(seed + 1)
    bn.running_mean.copy_(torch.rand(bn.num_features, generator=g) * 0.5)
    bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
    return model.eval()


def write_images(folder: Path, names, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    base = {}
    for name in names:
        pid = name.split("_")[0]  # one identity: one base pattern plus noise, so ranks have structure
        base.setdefault(pid, rng.integers(0, 256, (40, 20, 3)))
        img = np.clip(base[pid] + rng.normal(0, 40, (40, 20, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / name)


GALLERY = [f"{pid:04d}_c{cam}s1_{i:06d}_00.jpg" for pid in (1, 2, 3, 4, 5) for cam, i in ((1, 1), (2, 2), (3, 3))]
QUERY = ["0001_c4s1_000009_00.jpg", "0003_c5s1_000009_00.jpg", "0005_c6s1_000009_00.jpg"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("index")
    write_images(tmp / "gallery", GALLERY, seed=0)
    write_images(tmp / "query", QUERY, seed=0)
    model = tiny_model()
    ckpt = tmp / "model.pth"
    model.save(ckpt)
    other = tmp / "other.pth"
    tiny_model(seed=5).save(other)
    return tmp, model, ckpt, other


def _ranked(result):
    return [[result.gallery_paths[j] for j in row] for row in result.indices.tolist()]


def test_index_search_equals_gallery_search(data, tmp_path):
    tmp, model, ckpt, _ = data
    index = GalleryIndex.build(tmp_path / "g.idx", model, tmp / "gallery", faiss_type="none", checkpoint=str(ckpt),
                               device="cpu", progress=False)
    assert len(index) == 15 and index.meta["has_pids"] and index.faiss_type == "none"
    assert isinstance(index.rows(np.arange(3)), np.ndarray)
    assert isinstance(np.load(tmp_path / "g.idx" / "feats_00000.npy", mmap_mode="r"), np.memmap)
    for rerank in (True, False):
        ref = search(model, tmp / "query", tmp / "gallery", topk=10, rerank=rerank, device="cpu", progress=False)
        got = search_index(model, tmp / "query", tmp_path / "g.idx", topk=10, rerank=rerank, device="cpu",
                           progress=False)
        assert got.reranked == ref.reranked == rerank
        assert _ranked(got) == _ranked(ref)
        torch.testing.assert_close(got.cosine_distance, ref.cosine_distance, atol=1e-5, rtol=1e-5)
        if rerank:  # 6 re-scored (top_k_rerank), the other 4 in cosine order with no score
            assert torch.isnan(got.relational_score[:, 6:]).all() and not torch.isnan(got.relational_score[:, :6]).any()
            torch.testing.assert_close(got.relational_score, ref.relational_score, atol=1e-5, rtol=1e-5, equal_nan=True)
        g_pids = [int(Path(p).name[:4]) for p in got.gallery_paths]
        assert got.g_pids.tolist() == g_pids and got.q_pids.tolist() == [1, 3, 5]


def spy_rows(monkeypatch) -> list[tuple[str, tuple[int, ...]]]:
    """(kind, shape of the row indices) of every GalleryIndex.rows call from now on."""
    seen = []
    rows = GalleryIndex.rows

    def spy(self, idx, kind="feats"):
        seen.append((kind, np.asarray(idx).shape))
        return rows(self, idx, kind)

    monkeypatch.setattr(GalleryIndex, "rows", spy)
    return seen


def test_reranking_reads_only_the_shortlist(data, tmp_path, monkeypatch):
    tmp, model, _, _ = data
    index = GalleryIndex.build(tmp_path / "g.idx", model, tmp / "gallery", faiss_type="none", device="cpu",
                               progress=False)
    seen = spy_rows(monkeypatch)
    search_index(model, tmp / "query", index, topk=3, device="cpu", progress=False)
    assert seen == [("feats", (3, 6))]  # 3 queries x their 6 shortlisted rows of F, nothing else


def test_an_index_reranks_with_the_paper_or_gallery_protocol_only(data, tmp_path):
    """k-reciprocal re-ranking needs the queries and the whole gallery in one set, which an index
    does not keep: a clear error (the gallery protocol's inductive form: tests/test_index_gallery.py);
    ``protocol="none"`` is the cosine ranking."""
    tmp, model, _, _ = data
    index = GalleryIndex.build(tmp_path / "g.idx", model, tmp / "gallery", faiss_type="none", device="cpu",
                               progress=False)
    for protocol in ("gallery+kreciprocal", "kreciprocal"):
        with pytest.raises(ValueError, match="^" + re.escape(f"rerank.protocol='{protocol}': a gallery index "
                                                             "re-ranks with the paper's protocol or the gallery "
                                                             "protocol's inductive form;")):
            search_index(model, tmp / "query", index, rerank_config=RerankConfig(protocol=protocol), device="cpu",
                         progress=False)
    plain = search_index(model, tmp / "query", index, topk=5, rerank=False, device="cpu", progress=False)
    none = search_index(model, tmp / "query", index, topk=5, rerank_config=RerankConfig(protocol="none"),
                        device="cpu", progress=False)
    assert _ranked(none) == _ranked(plain) and not none.reranked


def test_add_float16_and_skip_known_paths(data, tmp_path):
    tmp, model, ckpt, _ = data
    half = tmp_path / "half"
    half.mkdir()
    for name in GALLERY[:7]:
        shutil.copy(tmp / "gallery" / name, half / name)
    index = GalleryIndex.build(tmp_path / "g.idx", model, half, dtype="float16", faiss_type="none", device="cpu",
                               progress=False)
    assert np.load(tmp_path / "g.idx" / "feats_00000.npy", mmap_mode="r").dtype == np.float16
    for name in GALLERY[7:]:
        shutil.copy(tmp / "gallery" / name, half / name)
    assert index.add(model, half, device="cpu", progress=False) == (8, 7)
    assert len(index) == 15 and len(index.shards) == 2
    assert index.add(model, half, device="cpu", progress=False) == (0, 15)
    reopened = GalleryIndex(tmp_path / "g.idx")
    assert len(reopened) == 15 and reopened.paths == index.paths
    full = extract_images(model, half, device="cpu", progress=False)
    order = [full.paths.index(p) for p in reopened.paths]
    stored = torch.from_numpy(reopened.rows(np.arange(15)))
    torch.testing.assert_close(stored, full.features[order], atol=2e-3, rtol=2e-3)  # float16 storage
    # The search of the reopened index is the search of the float16-rounded features.
    rounded = ImageFeatures(full.features[order].half().float(), list(reopened.paths))
    for rerank in (False, True):
        got = search_index(model, tmp / "query", reopened, topk=3, rerank=rerank, device="cpu", progress=False)
        ref = search(model, tmp / "query", rounded, topk=3, rerank=rerank, device="cpu", progress=False)
        assert _ranked(got) == _ranked(ref)


def test_mismatched_checkpoint_is_refused(data, tmp_path, capsys):
    tmp, model, ckpt, other = data
    GalleryIndex.build(tmp_path / "g.idx", model, tmp / "gallery", faiss_type="none", checkpoint=str(ckpt),
                       device="cpu", progress=False)
    rc = main(["search", "--checkpoint", str(other), "--query", str(tmp / "query"), "--index", str(tmp_path / "g.idx"),
               "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "holds features of another model" in err and str(ckpt) in err
    rc = main(["index", "add", "--checkpoint", str(other), "--index", str(tmp_path / "g.idx"), "--images",
               str(tmp / "query"), "--device", "cpu", "--no-progress"])
    assert rc == 2 and "holds features of another model" in capsys.readouterr().err
    assert len(GalleryIndex(tmp_path / "g.idx")) == 15  # nothing was added
    # query features from another model, given as an .npz, are refused too
    extract_images(tiny_model(seed=5), tmp / "query", device="cpu", progress=False).save(tmp_path / "q.npz")
    with pytest.raises(GalleryIndexError, match="query features were extracted by another model"):
        search_index(model, tmp_path / "q.npz", tmp_path / "g.idx", device="cpu", progress=False)


def test_build_never_overwrites_silently(data, tmp_path, capsys):
    tmp, model, ckpt, _ = data
    out = tmp_path / "g.idx"
    args = ["index", "build", "--checkpoint", str(ckpt), "--images", str(tmp / "query"), "--out", str(out),
            "--faiss", "none", "--device", "cpu", "--no-progress"]
    assert main(args) == 0 and "wrote" in capsys.readouterr().out
    assert main(args) == 2
    assert "exists; append images to it with hrnet-pyg index add" in capsys.readouterr().err
    assert len(GalleryIndex(out)) == 3
    assert main(args[:5] + [str(tmp / "gallery")] + args[6:] + ["--force"]) == 0
    assert len(GalleryIndex(out)) == 15
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.idx"]  # no temporary folder left
    assert main(["index", "info", "--index", str(out)]) == 0
    info = capsys.readouterr().out
    assert "15 in 1 shard(s)" in info and "exact blocked matrix product" in info
    assert main(["index", "info", "--index", str(tmp_path / "nowhere.idx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (out / "meta.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(GalleryIndexError, match="not an hrnet_pyg gallery index"):
        GalleryIndex(out)


def test_cli_build_add_search(data, tmp_path, capsys):
    tmp, _, ckpt, _ = data
    out = tmp_path / "g.idx"
    first = tmp_path / "first.csv"
    first.write_text("path\n" + "".join(f"{tmp / 'gallery' / n}\n" for n in GALLERY[:7]))
    assert main(["index", "build", "--checkpoint", str(ckpt), "--images", str(first), "--out", str(out),
                 "--faiss", "none", "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["index", "add", "--checkpoint", str(ckpt), "--images", str(tmp / "gallery"), "--index", str(out),
                 "--labels", "none", "--device", "cpu", "--no-progress"]) == 0
    assert "added 8 images to" in capsys.readouterr().out and "(15 in all, 7 already in the index and skipped)"
    csv = tmp_path / "ranks.csv"
    # --ef-search only concerns an HNSW part; with none the exact shortlist is taken as before
    assert main(["search", "--checkpoint", str(ckpt), "--query", str(tmp / "query"), "--index", str(out),
                 "--topk", "4", "--csv", str(csv), "--ef-search", "512", "--device", "cpu", "--no-progress"]) == 0
    assert "shortlist from exact over 15 indexed images" in capsys.readouterr().out
    import pandas as pd

    df = pd.read_csv(csv)
    assert len(df) == 12 and set(df["rank"]) == {1, 2, 3, 4}
    ref = search(HRNet.load(ckpt), tmp / "query", tmp / "gallery", topk=4, device="cpu", progress=False)
    assert list(df["gallery"]) == [p for row in _ranked(ref) for p in row]
    assert main(["search", "--checkpoint", str(ckpt), "--query", str(tmp / "query"), "--device", "cpu"]) == 2
    assert "give --gallery" in capsys.readouterr().err


def _random_index(tmp_path, faiss_type, n=600, d=64, nlist=None):
    torch.manual_seed(0)
    model = HRNet(HRNetConfig(backbone=None, feat_dim=d, k=3), num_classes=3).eval()
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(30, d, generator=g)
    feats = centers[torch.randint(0, 30, (n,), generator=g)] + 0.5 * torch.randn(n, d, generator=g)
    gallery = ImageFeatures(feats, [f"/g/{i}.jpg" for i in range(n)])
    index = GalleryIndex.build(tmp_path / f"{faiss_type}.idx", model, gallery, faiss_type=faiss_type, nlist=nlist,
                               chunk=250, device="cpu", progress=False)
    noisy = feats[:40] + 0.3 * torch.randn(40, d, generator=g)
    queries = torch.nn.functional.normalize(model.retrieval_features(noisy), dim=1)
    return index, queries


def test_exact_shortlist_blocks_equal_one_product():
    g = torch.Generator().manual_seed(0)
    q, x = torch.randn(5, 16, generator=g), torch.randn(300, 16, generator=g)
    blocks = ((s, x[s : s + 64].numpy()) for s in range(0, 300, 64))
    sims, idx = exact_shortlist(q, blocks, 20)
    ref_s, ref_i = (q @ x.T).topk(20, dim=1)
    assert torch.equal(idx, ref_i)
    torch.testing.assert_close(sims, ref_s)


@pytest.mark.skipif(not faiss_available(), reason="faiss-cpu not installed (pip install hrnet_pyg[search])")
def test_exact_and_faiss_flat_give_the_same_shortlist(tmp_path):
    index, queries = _random_index(tmp_path, "flat")
    assert len(index.shards) == 3 and index.meta["faiss"]["ntotal"] == 600
    ex_s, ex_i, how_ex = index.shortlist(queries, 120, exact=True)
    fa_s, fa_i, how_fa = index.shortlist(queries, 120)
    assert (how_ex, how_fa) == ("exact", "faiss flat")
    # the same 120 images per query, the same similarities; the order agrees up to ties within
    # float rounding (faiss's and torch's GEMMs sum in different orders)
    assert all(set(a) == set(b) for a, b in zip(fa_i.tolist(), ex_i.tolist(), strict=False))
    torch.testing.assert_close(fa_s, ex_s, atol=1e-5, rtol=1e-5)
    gap = (ex_s[:, :-1] - ex_s[:, 1:]) > 1e-5  # position r is unambiguous when it differs from r + 1
    clear = torch.cat([gap[:, :1], gap[:, 1:] & gap[:, :-1]], dim=1)
    assert clear.float().mean() > 0.8 and torch.equal(fa_i[:, :-1][clear], ex_i[:, :-1][clear])


@pytest.mark.skipif(not faiss_available(), reason="faiss-cpu not installed (pip install hrnet_pyg[search])")
def test_faiss_ivf_and_hnsw(tmp_path):
    index, queries = _random_index(tmp_path, "ivf", nlist=8)
    _, ex_i, _ = index.shortlist(queries, 120, exact=True)
    _, all_i, _ = index.shortlist(queries, 120, nprobe=8)  # every cell visited: exact
    assert all(set(a) == set(b) for a, b in zip(all_i.tolist(), ex_i.tolist(), strict=False))
    _, few_i, how = index.shortlist(queries, 120, nprobe=2)
    recall = np.mean([len(set(a) & set(b)) / 120 for a, b in zip(few_i.tolist(), ex_i.tolist(), strict=False)])
    assert how == "faiss ivf" and 0.3 < recall < 1.0  # approximate, measured in benchmarks/bench_index.py
    hnsw, queries = _random_index(tmp_path, "hnsw")
    _, ex_i, _ = hnsw.shortlist(queries, 120, exact=True)
    _, h_i, how = hnsw.shortlist(queries, 120)
    recall = np.mean([len(set(a) & set(b)) / 120 for a, b in zip(h_i.tolist(), ex_i.tolist(), strict=False)])
    assert how == "faiss hnsw" and recall > 0.9
    assert hnsw.meta["faiss"]["ef_search"] == 384  # a small gallery's default (1,000,000 images: 768)
    # a longer candidate list finds at least as many of the exact 120 (here every one: 600 images)
    _, wide_i, _ = hnsw.shortlist(queries, 120, ef_search=600)
    wide = np.mean([len(set(a) & set(b)) / 120 for a, b in zip(wide_i.tolist(), ex_i.tolist(), strict=True)])
    assert wide >= recall and wide > 0.99


@pytest.mark.skipif(not faiss_available(), reason="faiss-cpu not installed (pip install hrnet_pyg[search])")
def test_faiss_file_out_of_step_falls_back_to_exact(tmp_path):
    index, queries = _random_index(tmp_path, "flat")
    meta = json.loads((index.path / "meta.json").read_text())
    meta["shards"] = meta["shards"][:2]  # as if an add had written faiss.index but not meta.json
    (index.path / "meta.json").write_text(json.dumps(meta))
    reopened = GalleryIndex(index.path)
    _, _, how = reopened.shortlist(queries, 10)
    assert how == "exact" and "holds 600 vectors, the index 500" in reopened.notes[0]


@pytest.mark.skipif(not faiss_available(), reason="faiss-cpu not installed (pip install hrnet_pyg[search])")
def test_add_extends_the_faiss_part_and_build_faiss_rebuilds_it(tmp_path):
    index, queries = _random_index(tmp_path, "ivf", nlist=8)
    torch.manual_seed(0)
    model = HRNet(HRNetConfig(backbone=None, feat_dim=64, k=3), num_classes=3).eval()  # same weights as the index's
    extra = ImageFeatures(torch.randn(50, 64).relu(), [f"/g/extra_{i}.jpg" for i in range(50)])
    assert index.add(model, extra, device="cpu", progress=False) == (50, 0)
    assert index.meta["faiss"]["ntotal"] == 650 and index.meta["faiss"]["nlist"] == 8
    _, ex_i, _ = index.shortlist(queries, 30, exact=True)
    _, iv_i, _ = index.shortlist(queries, 30, nprobe=8)
    assert all(set(a) == set(b) for a, b in zip(iv_i.tolist(), ex_i.tolist(), strict=False))
    index.build_faiss("flat")
    reopened = GalleryIndex(index.path)
    assert reopened.faiss_type == "flat" and reopened.meta["faiss"]["ntotal"] == 650
    _, fl_i, how = reopened.shortlist(queries, 30)
    assert how == "faiss flat" and all(set(a) == set(b) for a, b in zip(fl_i.tolist(), ex_i.tolist(), strict=False))
    reopened.build_faiss("none")
    assert GalleryIndex(index.path).shortlist(queries, 5)[2] == "exact"
