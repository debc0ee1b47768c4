"""The gallery protocol's inductive form in the persistent index: the relational part that
``hrnet-pyg index build`` / ``add`` / ``relational`` store and ``search --index --protocol gallery``
reads, against the in-memory inductive form of hrnet_pyg/gallery.py."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from test_index import QUERY, spy_rows, tiny_model, write_images

from hrnet_pyg import HRNet, HRNetConfig
from hrnet_pyg.cli import main
from hrnet_pyg.gallery import (
    GalleryState,
    attach_gathered,
    attach_queries,
    gallery_rerank,
    gallery_state,
    ir_layer,
    retrieval_of,
    search_state,
    source_scores,
)
from hrnet_pyg.image_features import feature_fingerprint
from hrnet_pyg.index import GalleryIndex, GalleryIndexError, search_index
from hrnet_pyg.neighbours import knn_table, knn_table_blocks, squared_norms
from hrnet_pyg.protocol import RerankConfig
from hrnet_pyg.search import ImageFeatures, extract_images

G, Q, D = 60, 7, 32


def feature_model(normalize: str = "all", k: int = 4, use_ir: bool = True) -> HRNet:
    torch.manual_seed(0)
    cfg = HRNetConfig(backbone=None, feat_dim=D, k=3, use_ir=use_ir)
    rc = RerankConfig(protocol="gallery", gallery_k=k, gallery_normalize=normalize, gallery_neighbours="gallery")
    model = HRNet(cfg, num_classes=5, rerank_config=rc)
    if model.ir_neck is not None:  # non-trivial BN statistics: BN(V') differs from V'
        bn = model.ir_neck.bn
        g = torch.Generator().manual_seed(3)
        bn.running_mean.copy_(torch.rand(bn.num_features, generator=g) * 0.5)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
    return model.eval()


def features(n: int, prefix: str, seed: int, model: HRNet) -> ImageFeatures:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(8, D, generator=g)
    x = (centres[torch.randint(0, 8, (n,), generator=g)] + 0.7 * torch.randn(n, D, generator=g)).relu()
    return ImageFeatures(x, [f"/{prefix}/{i:03d}.jpg" for i in range(n)], model_fingerprint=feature_fingerprint(model))


def build(tmp_path, model, gallery, **kw) -> GalleryIndex:
    return GalleryIndex.build(tmp_path / "g.idx", model, gallery, faiss_type="none", chunk=25, device="cpu",
                              progress=False, **kw)


def _rows(result) -> torch.Tensor:
    """Gallery rows (as numbered in the paths) of each ranked list."""
    return torch.tensor([[int(result.gallery_paths[j].split("/")[-1][:3]) for j in row]
                         for row in result.indices.tolist()])


# ------------------------------------------------------------------------------------ the pieces
@pytest.mark.parametrize("normalize", ["all", "neighbors"])
def test_attach_gathered_equals_attach_queries(normalize):
    """Only the k neighbour rows of F and the gallery's source scores: the same V' as attaching to
    the whole kept gallery state."""
    model = feature_model(normalize)
    g, q = features(G, "g", 1, model).features, features(Q, "q", 2, model).features
    state = gallery_state(model, g, k=4, normalize=normalize)
    table = knn_table(q, 4, g)
    got = attach_gathered(model, q, g[table], source_scores(state), normalize=normalize)
    torch.testing.assert_close(got, attach_queries(model, state, q), atol=1e-5, rtol=1e-5)
    # the neighbours' order within a row does not matter
    flipped = attach_gathered(model, q, g[table.flip(1)], source_scores(state), normalize=normalize)
    torch.testing.assert_close(flipped, got, atol=1e-5, rtol=1e-5)
    if normalize == "all":  # the all-node denominator needs every gallery node's score
        with pytest.raises(ValueError, match="normalize='all' needs scores"):
            attach_gathered(model, q, g[table], None, normalize="all")
        # the layer refuses a denominator of the wrong shape, or one that "neighbors" does not use
        layer = ir_layer(model)
        with pytest.raises(ValueError, match="log_denominator is Eq. 2's all-node denominator"):
            layer((g, q), torch.zeros(2, 0, dtype=torch.long), log_denominator=torch.zeros(Q + 1))


def test_knn_table_blocks_equals_knn_table():
    g = torch.Generator().manual_seed(0)
    x, src = torch.randn(9, 16, generator=g), torch.randn(100, 16, generator=g)
    blocks = ((s, src[s : s + 17]) for s in range(0, 100, 17))
    assert torch.equal(knn_table_blocks(x, 5, blocks), knn_table(x, 5, src))
    half = ((s, src[s : s + 30].half()) for s in range(0, 100, 30))  # float16 rows are read as float32
    assert torch.equal(knn_table_blocks(x, 5, half), knn_table(x, 5, src.half().float()))
    kept = ((s, src[s : s + 40], squared_norms(src[s : s + 40])) for s in range(0, 100, 40))  # norms kept
    assert torch.equal(knn_table_blocks(x, 5, kept), knn_table(x, 5, src))
    with pytest.raises(ValueError, match="k=5 neighbours asked of 3 source rows"):
        knn_table_blocks(x, 5, [(0, src[:3])])


# ------------------------------------------------------------------------------------ the index
@pytest.mark.parametrize("normalize", ["all", "neighbors"])
def test_index_search_equals_the_inductive_protocol(tmp_path, normalize):
    model = feature_model(normalize)
    gallery, query = features(G, "g", 1, model), features(Q, "q", 2, model)
    index = build(tmp_path, model, gallery)
    assert len(index.shards) == 3 and index.relational is not None
    assert {k: index.relational[k] for k in ("k", "normalize", "rounds", "reuse_graph")} == \
        dict(k=4, normalize=normalize, rounds=1, reuse_graph=False)
    stored = np.load(tmp_path / "g.idx" / "relational_00001.npy", mmap_mode="r")
    assert stored.shape == (25, D) and stored.dtype == np.float32
    state = gallery_state(model, gallery.features, k=4, normalize=normalize)
    torch.testing.assert_close(torch.from_numpy(index.rows(np.arange(G), "relational")), state.retrieval,
                               atol=1e-5, rtol=1e-5)
    terms = torch.from_numpy(index.whole("graph"))  # per image: Eq. 2's source score, ||F||^2
    torch.testing.assert_close(terms[:, 0], source_scores(state), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(terms[:, 1], (gallery.features ** 2).sum(1), atol=1e-4, rtol=1e-5)

    got = search_index(model, query, index, topk=12, device="cpu", progress=False)
    ref = gallery_rerank(model, query.features, gallery.features, k=4, neighbours="gallery", normalize=normalize,
                         output="distances", progress=False)
    top = ref.topk(12, dim=1, largest=False)
    assert got.reranked and got.protocol == "gallery" and got.ordered_by == "rerank.protocol=gallery"
    assert torch.equal(_rows(got), top.indices)
    torch.testing.assert_close(1.0 - got.relational_score, top.values, atol=1e-5, rtol=1e-5)
    assert torch.equal(_rows(got), search_state(model, state, query.features, top_k=12).index)
    # the listed distance stays the cosine distance of BN(F), as every search lists it
    bnf = torch.nn.functional.normalize(model.retrieval_features(query.features), dim=1)
    gbf = torch.nn.functional.normalize(model.retrieval_features(gallery.features), dim=1)
    torch.testing.assert_close(got.cosine_distance, 1.0 - (bnf @ gbf.T).gather(1, top.indices), atol=1e-5,
                               rtol=1e-5)
    assert any("inductive form" in n for n in got.notes)


def test_search_reads_only_the_neighbours_rows_of_F(tmp_path, monkeypatch):
    """No gallery node but the k neighbours of a query is projected: the rows of F read one by one
    are those of the k neighbours (the kNN pass streams the blocks)."""
    model = feature_model()
    index = build(tmp_path, model, features(G, "g", 1, model))
    seen = spy_rows(monkeypatch)
    search_index(model, features(Q, "q", 2, model), index, topk=5, device="cpu", progress=False)
    assert seen == [("feats", (Q, 4)), ("retrieval", (Q, 5))]


def test_add_attaches_new_images_to_the_stored_gallery(tmp_path):
    model = feature_model("all")
    gallery, extra, query = features(G, "g", 1, model), features(9, "a", 3, model), features(Q, "q", 2, model)
    index = build(tmp_path, model, gallery)
    assert index.add(model, extra, chunk=4, device="cpu", progress=False) == (9, 0)
    assert [s.name for s in index.shards] == ["00000", "00001", "00002", "00003", "00004", "00005"]
    state = gallery_state(model, gallery.features, k=4, normalize="all")
    attached = retrieval_of(model, attach_queries(model, state, extra.features))  # the old gallery alone
    stored = torch.from_numpy(GalleryIndex(index.path).rows(np.arange(G, G + 9), "relational"))
    torch.testing.assert_close(stored, attached, atol=1e-5, rtol=1e-5)
    # a search then attaches to all G + 9 rows of F, the added ones' stored BN(V') ranked with the rest
    both = torch.cat([gallery.features, extra.features])
    layer = ir_layer(model, "all")
    grown = GalleryState(inputs=[both], proj=[layer.project(both)], feats=both,
                         retrieval=torch.cat([state.retrieval, attached]), k=4, normalize="all", rounds=1,
                         reuse_graph=False)
    got = search_index(model, query, index.path, topk=10, device="cpu", progress=False)
    ref = search_state(model, grown, query.features, top_k=10)
    paths = gallery.paths + extra.paths
    assert [[got.gallery_paths[j] for j in row] for row in got.indices.tolist()] == \
        [[paths[j] for j in row] for row in ref.index.tolist()]
    torch.testing.assert_close(1.0 - got.relational_score, ref.dist, atol=1e-5, rtol=1e-5)


def test_an_interrupted_add_leaves_the_index_as_it_was(tmp_path, monkeypatch):
    model = feature_model()
    index = build(tmp_path, model, features(G, "g", 1, model))
    query = features(Q, "q", 2, model)
    before = search_index(model, query, index.path, topk=8, device="cpu", progress=False)
    import hrnet_pyg.index.store as store

    def fail(path, obj):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(store, "write_json", fail)  # the shard files are written, meta.json is not
    with pytest.raises(OSError):
        index.add(model, features(9, "a", 3, model), device="cpu", progress=False)
    monkeypatch.undo()
    reopened = GalleryIndex(index.path)
    assert len(reopened) == G and reopened.relational == index.relational
    after = search_index(model, query, reopened, topk=8, device="cpu", progress=False)
    assert torch.equal(after.indices, before.indices) and after.gallery_paths == before.gallery_paths


# ------------------------------------------------------------------------------------ refusals
def test_refusals_are_one_line(tmp_path):
    model = feature_model()
    gallery, query = features(G, "g", 1, model), features(Q, "q", 2, model)
    index = build(tmp_path, model, gallery)
    gallery_protocol = model.rerank_config
    # other options than the stored part's
    with pytest.raises(GalleryIndexError, match=r"holds relational features computed with k=4, normalize='all', "
                                                r"rounds=1, reuse_graph=False, the gallery protocol asks k=6"):
        search_index(model, query, index, rerank_config=gallery_protocol.replace(gallery_k=6), device="cpu",
                     progress=False)
    for change, message in ((dict(gallery_rounds=2), "rerank.gallery_rounds=2: a gallery index serves"),
                            (dict(gallery_pr_shortlist=5), "rerank.gallery_pr_shortlist=5: a gallery index ranks"),
                            (dict(protocol="gallery+kreciprocal"), "rerank.protocol='gallery+kreciprocal': a gallery "
                                                                   "index re-ranks with the paper's protocol or")):
        with pytest.raises(ValueError, match=re.escape(message)) as info:
            search_index(model, query, index, rerank_config=gallery_protocol.replace(**change), device="cpu",
                         progress=False)
        assert "\n" not in str(info.value)
    # another IR layer (same backbone and BNNeck: the features' fingerprint agrees)
    other = feature_model()
    with torch.no_grad():
        other.ir.lin.weight.mul_(2.0)
    with pytest.raises(GalleryIndexError, match="holds relational features of another IR layer"):
        search_index(other, query, index, device="cpu", progress=False)
    # an index without the relational part (as built before it existed), and its fix
    meta = json.loads((index.path / "meta.json").read_text())
    del meta["relational"]
    (index.path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(GalleryIndexError, match=r"has no relational features .* add them with hrnet-pyg index "
                                                r"relational --index .* or search with --protocol paper"):
        search_index(model, query, index.path, device="cpu", progress=False)
    paper = search_index(model, query, index.path, rerank_config=RerankConfig(), device="cpu", progress=False)
    assert paper.reranked and paper.protocol == "paper"
    old = GalleryIndex(index.path)
    old.build_relational(model, device="cpu")
    got = search_index(model, query, old, topk=6, device="cpu", progress=False)
    state = gallery_state(model, gallery.features, k=4, normalize="all")
    assert torch.equal(_rows(got), search_state(model, state, query.features, top_k=6).index)
    # a model without the IR module: no relational part is built, the protocol is refused
    plain = feature_model(use_ir=False)
    none = build(tmp_path / "plain", plain, features(G, "g", 1, plain))
    assert none.relational is None and "relational  none" in none.summary()
    with pytest.raises(GalleryIndexError, match="the gallery-graph protocol needs the IR module"):
        search_index(plain, features(Q, "q", 2, plain), none, device="cpu", progress=False)


# ------------------------------------------------------------------------------------ CLI
def test_cli_build_relational_search(tmp_path, capsys):
    """``index build`` stores the relational part with the checkpoint's gallery options;
    ``search --index --protocol gallery`` ranks as the inductive protocol on the same features;
    ``index relational`` adds the part to an index built without it; errors are one line, exit 2."""
    write_images(tmp_path / "gallery", [f"{p:04d}_c{c}s1_{i:06d}_00.jpg" for p in range(1, 7) for c, i in
                                        ((1, 1), (2, 2), (3, 3))], seed=0)
    write_images(tmp_path / "query", QUERY, seed=0)
    model = tiny_model()  # HRNet, k=3; its protocol's gallery options: the defaults (gallery_k 5)
    ckpt = tmp_path / "model.pth"
    model.save(ckpt)
    out = tmp_path / "g.idx"
    assert main(["index", "build", "--checkpoint", str(ckpt), "--images", str(tmp_path / "gallery"), "--out",
                 str(out), "--faiss", "none", "--chunk", "10", "--device", "cpu", "--no-progress"]) == 0
    assert "relational features" in capsys.readouterr().out
    csv = tmp_path / "ranks.csv"
    assert main(["search", "--checkpoint", str(ckpt), "--query", str(tmp_path / "query"), "--index", str(out),
                 "--protocol", "gallery", "--topk", "5", "--csv", str(csv), "--device", "cpu", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "ordered by rerank.protocol=gallery" in text and "inductive form" in text
    import pandas as pd

    df = pd.read_csv(csv)
    g = extract_images(model, tmp_path / "gallery", device="cpu", progress=False)
    q = extract_images(model, tmp_path / "query", device="cpu", progress=False)
    ref = gallery_rerank(model, q.features, g.features, k=model.rerank_config.gallery_k, neighbours="gallery",
                         output="distances", progress=False)
    top = ref.topk(5, dim=1, largest=False)
    assert list(df["gallery"]) == [g.paths[j] for row in top.indices.tolist() for j in row]
    torch.testing.assert_close(torch.tensor(1.0 - df["relational_score"].to_numpy()).float(),
                               top.values.reshape(-1), atol=1e-5, rtol=1e-5)
    assert main(["index", "info", "--index", str(out)]) == 0
    assert "relational  BN(V') over the gallery-only kNN graph, k=5" in capsys.readouterr().out  # the default

    bare = tmp_path / "bare.idx"
    assert main(["index", "build", "--checkpoint", str(ckpt), "--images", str(tmp_path / "gallery"), "--out",
                 str(bare), "--faiss", "none", "--no-relational", "--device", "cpu", "--no-progress"]) == 0
    assert "no relational features" in capsys.readouterr().out
    search_bare = ["search", "--checkpoint", str(ckpt), "--query", str(tmp_path / "query"), "--index", str(bare),
                   "--protocol", "gallery", "--csv", str(tmp_path / "bare.csv"), "--topk", "5", "--device", "cpu",
                   "--no-progress"]
    assert main(search_bare) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no relational features" in err and "hrnet-pyg index relational" in err
    assert main(["index", "relational", "--index", str(bare), "--checkpoint", str(ckpt), "--device", "cpu",
                 "--no-progress"]) == 0
    assert "wrote the relational features" in capsys.readouterr().out
    assert main(search_bare) == 0
    assert list(pd.read_csv(tmp_path / "bare.csv")["gallery"]) == list(df["gallery"])
    # another checkpoint with the same features but another IR layer is refused in one line
    other = tiny_model()
    with torch.no_grad():
        other.ir.att_src.mul_(-1.0)
    other.save(tmp_path / "other.pth")
    assert main(search_bare[:2] + [str(tmp_path / "other.pth")] + search_bare[3:] + ["--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "relational features of another IR layer" in err
