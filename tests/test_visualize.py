"""Figure 5 matrices and plots, and the ranked-list grid (hrnet_pyg/visualize.py)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hrnet_pyg.config import HRNetConfig
from hrnet_pyg.model import HRNetModule as HRNet
from hrnet_pyg.protocol import RerankConfig
from hrnet_pyg.visualize import (
    BACKGROUND_COLOR,
    MATCH_COLOR,
    MISMATCH_COLOR,
    QUERY_COLOR,
    attention_figure,
    attention_matrices,
    edge_attention_to_dense,
    plot_attention_heatmaps,
    ranked_list_grid,
    ranking_caption,
    sample_pk_batch,
    uniform_deviation,
    visualize_batch,
)

P, K, D = 3, 2, 16
N = P * K


def tiny_model(**kw) -> HRNet:
    cfg = HRNetConfig(backbone=None, feat_dim=D, k=3, num_identities=P, num_instances=K, **kw)
    torch.manual_seed(0)
    return HRNet(cfg, num_classes=P)


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(N, D, generator=g)
    pids = torch.arange(P).repeat_interleave(K)  # identity-major, as in Sec. 4.5
    return feats, pids


def dense_eq2_reference(ir, x: torch.Tensor, k: int) -> torch.Tensor:
    """A∘C written plainly: Eq. 2 over all N nodes (or, with normalize="neighbors", over the k
    neighbours), masked by the brute-force kNN graph C of Eq. 1."""
    n = x.size(0)
    out = torch.zeros(n, n)
    for i in range(n):
        e = [F.leaky_relu(x[i] @ ir.att_dst + x[m] @ ir.att_src, 0.2) for m in range(n)]
        dists = [(float((x[i] - x[j]).norm()), j) for j in range(n) if j != i]  # self not counted
        nbrs = [j for _, j in sorted(dists)[:k]]
        denom = sum(torch.exp(e[m]) for m in (nbrs if ir.normalize == "neighbors" else range(n)))
        for j in nbrs:
            out[i, j] = torch.exp(e[j]) / denom
    return out


def dense_eq6_reference(pr, f: torch.Tensor) -> torch.Tensor:
    """sum_n G^n with g^n_ij = softmax_j mu(u_{n,i}.H_p[:d] + u_{n,j}.H_p[d:]), u_{n,i} = f_n - f_i."""
    n = f.size(0)
    total = torch.zeros(n, n)
    for m in range(n):
        u = [f[m] - f[i] for i in range(n)]
        for i in range(n):
            logits = torch.stack([F.leaky_relu(u[i] @ pr.att_p_dst + u[j] @ pr.att_p_src, 0.2) for j in range(n)])
            total[i] += torch.softmax(logits, dim=0)
    return total


# ---------------------------------------------------------------------------- attention matrices
@torch.no_grad()
@pytest.mark.parametrize("norm", ["all", "neighbors"])
def test_ac_equals_dense_reconstruction_of_forward_attention(norm):
    model = tiny_model(ir_attention_norm=norm)
    feats, pids = batch()
    ac, g_sum = attention_matrices(model, feats, pids)
    assert ac is not None and g_sum is not None and ac.shape == (N, N) and g_sum.shape == (N, N)

    # (1) the (edge_index, alpha) the training forward reports, scattered by a plain loop
    model.train()
    out = model(feats, pids)
    edge_index, alpha = out.ir_attention
    rebuilt = torch.zeros(N, N)
    for e in range(edge_index.size(1)):
        j, i = int(edge_index[0, e]), int(edge_index[1, e])  # edge j -> i: row i = centre
        rebuilt[i, j] += float(alpha.reshape(-1)[e])
    torch.testing.assert_close(ac, rebuilt, atol=1e-6, rtol=1e-5)

    # (2) Eq. 1-2 re-stated densely: k neighbours per row, all-node (or neighbour) denominator
    torch.testing.assert_close(ac, dense_eq2_reference(model.ir, feats, k=3), atol=1e-6, rtol=1e-5)
    assert ((ac > 0).sum(1) == 3).all() and (ac.diagonal() == 0).all()
    if norm == "all":  # Eq. 2 normalises over all N nodes, then masks by C
        assert (ac.sum(1) < 1).all()
    else:
        torch.testing.assert_close(ac.sum(1), torch.ones(N))


@torch.no_grad()
def test_g_sum_matches_eq6_and_rows_sum_to_n():
    model = tiny_model()
    feats, pids = batch(1)
    _, g_sum = attention_matrices(model, feats, pids)
    torch.testing.assert_close(g_sum, dense_eq6_reference(model.pr, feats), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_sum.sum(1), torch.full((N,), float(N)), atol=1e-5, rtol=0)


@torch.no_grad()
def test_pr_edges_mask_keeps_rows_stochastic_and_support_local():
    model = tiny_model(pr_edges=2)
    feats, pids = batch(2)
    _, g_sum = attention_matrices(model, feats, pids)
    torch.testing.assert_close(g_sum.sum(1), torch.full((N,), float(N)), atol=1e-5, rtol=0)
    d = torch.cdist(feats, feats)
    for i in range(N):
        allowed = set(d[i].argsort()[:2].tolist())  # nearest 2 images, i itself included
        assert set(torch.nonzero(g_sum[i]).flatten().tolist()) <= allowed


@torch.no_grad()
def test_ir_star_full_graph_and_neighbor_normalisation():
    model = tiny_model(ir_graph="full", ir_attention_norm="neighbors")
    feats, pids = batch(3)
    ac, _ = attention_matrices(model, feats, pids)
    off = ~torch.eye(N, dtype=torch.bool)
    assert (ac[off] > 0).all()
    torch.testing.assert_close(ac.sum(1), torch.ones(N), atol=1e-5, rtol=0)  # GAT-style softmax


@torch.no_grad()
def test_missing_modules_give_none():
    feats, pids = batch()
    ac, g = attention_matrices(tiny_model(use_ir=False, use_cnc=False), feats, pids)
    assert ac is None and g is not None
    ac, g = attention_matrices(tiny_model(use_pr=False, use_igp=False), feats, pids)
    assert ac is not None and g is None
    ac, g = attention_matrices(tiny_model(use_ir=False, use_cnc=False, use_pr=False, use_igp=False), feats, pids)
    assert ac is None and g is None


def test_attention_matrices_leave_model_state_alone():
    model = tiny_model()
    model.train()
    before = copy.deepcopy(model.state_dict())
    feats, pids = batch()
    attention_matrices(model, feats, pids)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # no BatchNorm statistics updated


def test_attention_matrices_bad_input():
    model = tiny_model()
    feats, pids = batch()
    with pytest.raises(ValueError, match="d = 8"):
        attention_matrices(model, feats[:, :8], pids)
    with pytest.raises(ValueError, match="pids"):
        attention_matrices(model, feats, pids[:3])
    with pytest.raises(ValueError, match="k\\+1"):
        attention_matrices(model, feats[:3], pids[:3])


def test_edge_attention_to_dense_accumulates_and_checks():
    ei = torch.tensor([[1, 2, 1], [0, 0, 0]])
    m = edge_attention_to_dense(ei, torch.tensor([0.1, 0.2, 0.3]), 3)
    assert m[0, 1] == pytest.approx(0.4) and m[0, 2] == pytest.approx(0.2) and m.sum() == pytest.approx(0.6)
    with pytest.raises(ValueError, match="one weight per edge"):
        edge_attention_to_dense(ei, torch.ones(2), 3)


def test_edge_attention_to_dense_equals_an_explicit_scatter():
    g = torch.Generator().manual_seed(0)
    ei = torch.randint(0, 7, (2, 40), generator=g)  # repeated edges and self loops included
    alpha = torch.rand(40, generator=g)
    ref = torch.zeros(7, 7)
    for e in range(40):
        ref[ei[1, e], ei[0, e]] += alpha[e]  # row = target i, column = source j
    torch.testing.assert_close(edge_attention_to_dense(ei, alpha, 7), ref)
    torch.testing.assert_close(edge_attention_to_dense(ei, alpha.unsqueeze(1).repeat(1, 2), 7), ref)  # heads
    assert edge_attention_to_dense(ei[:, :0], alpha[:0], 3).equal(torch.zeros(3, 3))


# ---------------------------------------------------------------------------- heat maps
def test_heatmap_png_written_with_expected_size(tmp_path):
    model = tiny_model()
    feats, pids = batch()
    ac, g = attention_matrices(model, feats, pids)
    path = plot_attention_heatmaps(ac, g, tmp_path / "sub" / "fig5.png", pids=pids, figsize=(8, 4), dpi=50)
    with Image.open(path) as im:
        assert im.size == (400, 200)
        arr = np.asarray(im.convert("RGB"))
    assert arr.std() > 0  # something was drawn

    # a model without IR: the (a) panel says so, the file is still written
    p2 = plot_attention_heatmaps(None, g, tmp_path / "pr_only.png", pids=pids.tolist())
    with Image.open(p2) as im:
        assert im.size == (1200, 550)
    with pytest.raises(ValueError, match="both matrices are None"):
        plot_attention_heatmaps(None, None, tmp_path / "x.png")
    with pytest.raises(ValueError, match="pids"):
        plot_attention_heatmaps(ac, g, tmp_path / "x.png", pids=[0, 1])


def test_fig5b_shows_the_deviation_from_uniform_on_an_honest_scale():
    model = tiny_model()
    feats, pids = batch()
    ac, g = attention_matrices(model, feats, pids)
    fig = attention_figure(ac, g, pids)
    ax_a, ax_b = [ax for ax in fig.axes if ax.images]
    # (b): the percentage by which each entry differs from uniform attention (1 = N/N here),
    # on a colour scale symmetric about 0 whose end is the largest deviation, named in the title
    want = 100.0 * (g.numpy() - 1.0)
    shown = np.asarray(ax_b.images[0].get_array())
    np.testing.assert_allclose(shown, want, atol=1e-3)
    spread = float(np.abs(want).max())
    lo, hi = ax_b.images[0].get_clim()
    assert lo == pytest.approx(-spread, rel=1e-4) and hi == pytest.approx(spread, rel=1e-4)
    assert "deviation from uniform" in ax_b.get_title() and f"±{spread:.2g}%" in ax_b.get_title()
    cbar_b = [ax for ax in fig.axes if not ax.images and ax.get_ylabel().startswith("deviation from uniform, %")]
    assert len(cbar_b) == 1
    # (a): weights from 0, as they are
    np.testing.assert_allclose(np.asarray(ax_a.images[0].get_array()), ac.numpy())
    assert ax_a.images[0].get_clim() == pytest.approx((0.0, float(ac.max())))


@torch.no_grad()
def test_uniform_deviation_uses_the_attended_entries_of_each_row():
    g = torch.tensor([[2.0, 0.0, 1.0, 1.0], [2.0, 2.0, 0.0, 0.0], [1.0, 1.5, 0.5, 1.0], [4.0, 0.0, 0.0, 0.0]])
    dev = uniform_deviation(g)  # rows sum to 4; uniform = 4 / (attended entries of the row): 4/3, 2, 1, 4
    nan = float("nan")
    want = torch.tensor(
        [[50.0, nan, -25.0, -25.0], [0.0, 0.0, nan, nan], [0.0, 50.0, -50.0, 0.0], [0.0, nan, nan, nan]]
    )
    torch.testing.assert_close(dev, want, equal_nan=True)
    model = tiny_model(pr_edges=2)  # masked pair graphs: the unattended entries are blank
    feats, pids = batch(2)
    _, g_sum = attention_matrices(model, feats, pids)
    dev = uniform_deviation(g_sum)
    assert torch.equal(dev.isnan(), g_sum == 0)


# ---------------------------------------------------------------------------- ranked lists
# Solid colours far from the border colours, so a cell's inside identifies the image shown.
_COLOURS = [(10 * i + 20, 60, 120 + 10 * i) for i in range(8)]


def _write_images(root, prefix, n):
    paths = []
    for i in range(n):
        p = root / f"{prefix}{i}.png"
        Image.new("RGB", (20, 40), _COLOURS[i]).save(p)
        paths.append(p)
    return paths


def test_ranked_grid_borders_and_order(tmp_path):
    q_paths = _write_images(tmp_path, "q", 2)
    g_paths = _write_images(tmp_path, "g", 6)
    q_pids = [7, 8]
    g_pids = [7, 8, 7, 9, 8, 7]
    ranking = np.array([[2, 1, 0, 3, 4, 5], [5, 4, 3, 2, 1, 0]])
    grid = ranked_list_grid(q_paths, g_paths, ranking, q_pids, g_pids, tmp_path / "grid.png", topk=4,
                            size=(32, 16), border=3)
    assert grid.gallery == [[2, 1, 0, 3], [5, 4, 3, 2]]
    expected = [[g_pids[j] == q_pids[r] for j in row] for r, row in enumerate(grid.gallery)]
    assert grid.matches == expected == [[True, False, True, False], [False, True, False, False]]
    with Image.open(grid.path) as im:
        img = im.convert("RGB")
    assert img.size == (4 + 22 + 16 + 4 * (22 + 4), 4 + 2 * (14 + 38 + 4))  # 14: the rank numbers
    assert grid.labels == [["query", "1", "2", "3", "4"]] * 2 and grid.caption is None
    for r in range(2):
        boxes = grid.boxes[r]
        x0, y0, x1, y1 = boxes[0]
        assert img.getpixel((x0 + 1, y0 + 1)) == QUERY_COLOR
        assert img.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == _COLOURS[r]
        for c, j in enumerate(grid.gallery[r]):
            x0, y0, x1, y1 = boxes[c + 1]
            want = MATCH_COLOR if expected[r][c] else MISMATCH_COLOR
            for px in [(x0, y0), (x1 - 1, y1 - 1), (x0 + 1, (y0 + y1) // 2), ((x0 + x1) // 2, y0 + 1)]:
                assert img.getpixel(px) == want, (r, c, px)
            assert img.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == _COLOURS[j]
            assert img.getpixel((x1 + 1, (y0 + y1) // 2)) == BACKGROUND_COLOR  # the gap
    assert MATCH_COLOR[1] > MATCH_COLOR[0] and MISMATCH_COLOR[0] > MISMATCH_COLOR[1]  # green / red


def test_ranked_grid_from_distmat_and_camera_filter(tmp_path):
    q_paths = _write_images(tmp_path, "q", 1)
    g_paths = _write_images(tmp_path, "g", 5)
    dist = torch.tensor([[0.5, 0.1, 0.3, 0.2, 0.9]])  # order: 1, 3, 2, 0, 4
    grid = ranked_list_grid(q_paths, g_paths, dist, [1], [1, 1, 2, 1, 3], tmp_path / "a.png", topk=3)
    assert grid.gallery == [[1, 3, 2]] and grid.matches == [[True, True, False]]
    # same identity and same camera as the query: skipped (Market-1501 protocol)
    grid = ranked_list_grid(q_paths, g_paths, dist, [1], [1, 1, 2, 1, 3], tmp_path / "b.png", topk=3,
                            q_camids=[0], g_camids=[1, 0, 0, 1, 1])
    assert grid.gallery == [[3, 2, 0]] and grid.matches == [[True, False, True]]


def test_ranked_grid_has_rank_numbers_and_a_caption(tmp_path):
    q_paths = _write_images(tmp_path, "q", 2)
    g_paths = _write_images(tmp_path, "g", 6)
    ranking = np.array([[2, 1, 0, 3, 4, 5], [5, 4, 3, 2, 1, 0]])
    caption = "Ranked by the relational re-ranking (Sec. 4.2). Rank 1 = best; green border: same identity"
    grid = ranked_list_grid(q_paths, g_paths, ranking, [7, 8], [7, 8, 7, 9, 8, 7], tmp_path / "grid.png", topk=3,
                            size=(32, 16), border=3, caption=caption)
    assert grid.caption == caption
    assert grid.labels == [["query", "1", "2", "3"]] * 2
    with Image.open(grid.path) as im:
        img = np.asarray(im.convert("RGB")).astype(int)
    width = 4 + 22 + 16 + 3 * (22 + 4)
    lines = (img.shape[0] - (4 + 2 * (14 + 38 + 4))) // 14
    assert img.shape[1] == width and lines >= 2  # the caption is wrapped to the grid's width
    top = grid.boxes[0][0][1] - 14  # the first row's rank numbers start here
    assert (img[4:top] < 128).all(axis=2).any()  # dark text in the caption band
    for x0, y0, x1, _ in grid.boxes[1]:  # and above each cell of the second row
        assert (img[y0 - 14 : y0, x0:x1] < 128).all(axis=2).any(), (x0, y0)


def test_ranking_caption_names_the_ranking_drawn():
    hrnet = tiny_model()
    assert ranking_caption(hrnet, num_gallery=50).startswith(
        "Ranked by the relational re-ranking (Sec. 4.2): each query's top 50 by cosine re-scored by the IR and PR "
        "modules. Rank 1 = best"
    )
    assert "(re-ranking off)" in ranking_caption(hrnet, rerank=False)
    cnn = tiny_model(use_ir=False, use_pr=False)
    assert ranking_caption(cnn).startswith(
        "Ranked by cosine distance of BN(F), the CNN features (this model has no relational modules)."
    )
    assert "top 120 by cosine re-scored by the IR module." in ranking_caption(tiny_model(use_pr=False), num_gallery=200)
    assert ranking_caption(hrnet, given=True).startswith("Ranked by the distance matrix passed in.")
    # the shortlist is the test protocol's: the model's, or the one passed in
    assert "top 30 by cosine" in ranking_caption(hrnet, rerank_config=RerankConfig(shortlist=30))
    hrnet.rerank_config = RerankConfig(shortlist=40)
    assert "top 40 by cosine" in ranking_caption(hrnet)


def test_ranked_grid_errors(tmp_path):
    q_paths = _write_images(tmp_path, "q", 1)
    g_paths = _write_images(tmp_path, "g", 3)
    with pytest.raises(ValueError, match="ranking must be"):
        ranked_list_grid(q_paths, g_paths, np.zeros((2, 3)), [0], [0, 1, 2], tmp_path / "x.png")
    with pytest.raises(ValueError, match="outside"):
        ranked_list_grid(q_paths, g_paths, np.array([[0, 5, 1]]), [0], [0, 1, 2], tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        ranked_list_grid([tmp_path / "nope.png"], g_paths, np.array([[0, 1, 2]]), [0], [0, 1, 2], tmp_path / "x.png")
    with pytest.raises(ValueError, match="query index"):
        ranked_list_grid(q_paths, g_paths, np.array([[0, 1, 2]]), [0], [0, 1, 2], tmp_path / "x.png", queries=[3])


def test_sample_pk_batch_is_identity_major_and_seeded():
    records = [(f"img{i}.jpg", i % 5, 0) for i in range(40)] + [("lonely.jpg", 99, 0)]
    idx = sample_pk_batch(records, num_identities=3, num_instances=4, seed=1)
    pids = [records[i][1] for i in idx]
    assert len(idx) == 12 and len(set(idx)) == 12
    blocks = [pids[i:i + 4] for i in range(0, 12, 4)]
    assert all(len(set(b)) == 1 for b in blocks) and len({b[0] for b in blocks}) == 3
    assert 99 not in pids  # fewer than K images
    assert idx == sample_pk_batch(records, 3, 4, seed=1)
    with pytest.raises(ValueError, match="K = 50"):
        sample_pk_batch(records, 3, 50)


# ---------------------------------------------------------------------------- end to end
def test_visualize_batch_on_generated_images(tmp_path):
    from hrnet_pyg.data import build_dataset

    dataset = build_dataset("synthetic", tmp_path / "data", num_train_ids=4, num_test_ids=3, imgs_per_id=6,
                            num_distractors=2, num_junk=0, height=32, width=16, progress=False)
    cfg = HRNetConfig(backbone="resnet18", pretrained=False, image_size=(32, 16), k=3,
                      num_identities=P, num_instances=K)
    torch.manual_seed(0)
    model = HRNet(cfg, num_classes=dataset.num_train_pids, rerank_config=RerankConfig(shortlist=5))
    paths = visualize_batch(model, dataset, tmp_path / "figs", num_queries=2, topk=4, device="cpu", progress=False)
    assert [p.name for p in paths] == ["fig5_attention.png", "ranked_list.png"]
    with Image.open(paths[0]) as im:
        assert im.size == (1200, 550)
    with Image.open(paths[1]) as im:
        # 2 query rows of 128 x 64 images with 4 px borders and 14 px of rank numbers, query + 4
        # gallery images, under a caption of 14 px lines
        width, height = im.size
        assert width == 4 + 72 + 16 + 4 * (72 + 4)
        caption = height - (4 + 2 * (14 + 136 + 4))
        assert caption > 0 and caption % 14 == 0

    feature_model = tiny_model()
    with pytest.raises(ValueError, match="needs a model with a backbone"):
        visualize_batch(feature_model, dataset, tmp_path / "x")
