"""k-reciprocal re-ranking: dense classic vs a plain loop re-statement, memory-bounded vs dense."""

import numpy as np
import pytest
import torch

from hrnet_pyg.evaluation import cosine_distance, euclidean_distance, evaluate_rank
from hrnet_pyg.kreciprocal import k_reciprocal_rerank, k_reciprocal_rerank_features


def loop_rerank(q_g, q_q, g_g, k1, k2, lam):
    """Zhong et al. 2017 as the reference re_ranking() states it, with plain loops.

    Only change: a stable argsort, so that neighbour ties (none here) would be ordered by index.
    """
    num_q = q_g.shape[0]
    full = np.block([[q_q, q_g], [q_g.T, g_g]])
    d2 = (full**2).astype(np.float32)
    n = d2.shape[0]
    colmax = d2.max(axis=0)
    od = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        for j in range(n):
            od[i, j] = d2[j, i] / colmax[i]
    rank = np.argsort(od, axis=1, kind="stable")

    def reciprocal(i, k):
        return [j for j in rank[i, : k + 1] if i in rank[j, : k + 1]]

    V = np.zeros((n, n), dtype=np.float32)
    half = int(np.around(k1 / 2.0))
    for i in range(n):
        r = reciprocal(i, k1)
        members = set(r)
        for c in r:
            rc = reciprocal(c, half)
            if len(set(rc) & set(r)) > 2.0 / 3 * len(rc):
                members |= set(rc)
        members = sorted(members)
        w = np.exp(-od[i, members])
        V[i, members] = w / w.sum()
    if k2 != 1:
        Vq = np.zeros_like(V)
        for i in range(n):
            Vq[i] = V[rank[i, :k2]].mean(axis=0)
        V = Vq
    out = np.zeros((num_q, n - num_q), dtype=np.float32)
    for i in range(num_q):
        for j in range(num_q, n):
            m = sum(min(V[i, k], V[j, k]) for k in range(n))
            jac = 1 - m / (2 - m)
            out[i, j - num_q] = (1 - lam) * jac + lam * od[i, j]
    return out


def clustered(num, centres, noise, gen):
    ids = torch.randint(0, centres.shape[0], (num,), generator=gen)
    return centres[ids] + noise * torch.randn(num, centres.shape[1], generator=gen), ids


@pytest.mark.parametrize(
    "k1,k2,lam",
    [(20, 6, 0.3), (5, 1, 0.5), (7, 3, 0.0), (4, 2, 1.0)],  # k1=5: round(2.5) = 2 (banker's)
)
def test_dense_matches_loop_restatement(k1, k2, lam):
    g = torch.Generator().manual_seed(k1)
    centres = torch.randn(5, 8, generator=g)
    qf, _ = clustered(7, centres, 0.8, g)
    gf, _ = clustered(19, centres, 0.8, g)
    qg, qq, gg = (
        euclidean_distance(a, b).double().numpy() for a, b in ((qf, gf), (qf, qf), (gf, gf))
    )
    ref = loop_rerank(qg, qq, gg, k1, k2, lam)
    out = k_reciprocal_rerank(qg, qq, gg, k1=k1, k2=k2, lambda_value=lam)
    assert out.shape == (7, 19) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), ref, atol=2e-6, rtol=0)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("chunk", [4096, 17, 1])
def test_features_version_matches_dense(metric, chunk):
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(8, 16, generator=g)
    qf, _ = clustered(30, centres, 0.7, g)
    gf, _ = clustered(80, centres, 0.7, g)
    dist = euclidean_distance if metric == "euclidean" else cosine_distance
    dense = k_reciprocal_rerank(dist(qf, gf), dist(qf, qf), dist(gf, gf))
    feat = k_reciprocal_rerank_features(qf, gf, chunk_size=chunk, metric=metric, progress=False)
    assert feat.shape == (30, 80) and feat.dtype == torch.float32
    torch.testing.assert_close(feat, dense, atol=1e-5, rtol=0)


def test_features_version_params_and_float64():
    g = torch.Generator().manual_seed(4)
    centres = torch.randn(6, 12, generator=g)
    qf, _ = clustered(15, centres, 0.9, g)
    gf, _ = clustered(50, centres, 0.9, g)
    for k1, k2, lam in [(9, 1, 0.5), (6, 4, 0.1)]:
        dense = k_reciprocal_rerank(
            euclidean_distance(qf, gf), euclidean_distance(qf, qf), euclidean_distance(gf, gf),
            k1=k1, k2=k2, lambda_value=lam,
        )
        feat = k_reciprocal_rerank_features(
            qf.double().numpy(), gf.double().numpy(), k1=k1, k2=k2, lambda_value=lam,
            chunk_size=13, progress=False,
        )
        torch.testing.assert_close(feat, dense, atol=1e-5, rtol=0)


def test_features_version_never_builds_the_full_matrix(monkeypatch):
    from torch.utils._python_dispatch import TorchDispatchMode

    import hrnet_pyg.kreciprocal as kr

    # Small work chunks, so that every temporary is bounded by a chunk, not by (Q+G).
    monkeypatch.setattr(kr, "_ROW_CHUNK", 64)
    monkeypatch.setattr(kr, "_TRIPLE_BUDGET", 4096)

    class LargestTensor(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    LargestTensor.largest = max(LargestTensor.largest, t.numel())
            return out

    g = torch.Generator().manual_seed(5)
    centres = torch.randn(20, 16, generator=g)
    qf, _ = clustered(60, centres, 0.8, g)
    gf, _ = clustered(340, centres, 0.8, g)
    with LargestTensor():
        out = k_reciprocal_rerank_features(qf, gf, chunk_size=100, progress=False)
    assert out.shape == (60, 340)
    # Nothing near (Q+G)^2 = 160,000 entries: the largest tensors are the output (20,400) and
    # the per-chunk reciprocal check (64 rows x 21 x 21 neighbours = 28,224).
    assert LargestTensor.largest <= max(60 * 340, 64 * 21 * 21), LargestTensor.largest
    dense = k_reciprocal_rerank(
        euclidean_distance(qf, gf), euclidean_distance(qf, qf), euclidean_distance(gf, gf)
    )
    torch.testing.assert_close(out, dense, atol=1e-5, rtol=0)


def test_reranking_helps_on_clustered_features():
    g = torch.Generator().manual_seed(6)
    centres = torch.randn(30, 32, generator=g)
    q_ids = torch.arange(30).repeat(2)
    g_ids = torch.arange(30).repeat_interleave(6)
    qf = centres[q_ids] + 1.3 * torch.randn(60, 32, generator=g)
    gf = centres[g_ids] + 1.3 * torch.randn(180, 32, generator=g)
    qc, gc = torch.zeros(60, dtype=torch.long), torch.ones(180, dtype=torch.long)
    base = evaluate_rank(euclidean_distance(qf, gf), q_ids, g_ids, qc, gc, max_rank=10)
    rr = evaluate_rank(
        k_reciprocal_rerank_features(qf, gf, progress=False), q_ids, g_ids, qc, gc, max_rank=10
    )
    assert 0.2 < base.mAP < 0.9  # a non-trivial problem
    assert rr.mAP > base.mAP + 0.02  # the classic gain of k-reciprocal re-ranking


def test_bad_inputs():
    a, b = torch.randn(4, 3), torch.randn(6, 3)
    with pytest.raises(ValueError, match="feature dims differ"):
        k_reciprocal_rerank_features(a, torch.randn(6, 5), progress=False)
    with pytest.raises(ValueError, match="k1 must be"):
        k_reciprocal_rerank_features(a, b, k1=0, progress=False)
    with pytest.raises(ValueError, match="lambda_value"):
        k_reciprocal_rerank_features(a, b, lambda_value=1.5, progress=False)
    with pytest.raises(ValueError, match="metric"):
        k_reciprocal_rerank_features(a, b, metric="manhattan", progress=False)
    with pytest.raises(ValueError, match=r"g_g_dist must be \(6, 6\)"):
        k_reciprocal_rerank(torch.rand(4, 6), torch.rand(4, 4), torch.rand(5, 5))
    bad = b.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="gallery_feats contains NaN"):
        k_reciprocal_rerank_features(a, bad, progress=False)
