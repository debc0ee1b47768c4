"""evaluate_rank and the distance helpers against plain, loop-based re-statements.

The references below are written from the protocol's definition (torchreid's eval_market1501,
fast-reid's mINP, the Market-1501 MATLAB compute_AP, torchreid's eval_cuhk03), with obvious
per-query and per-position loops, and with ties broken by gallery index (stable argsort).
"""
import math
import warnings

import numpy as np
import pytest
import torch

from hrnet_pyg.evaluation import (
    RankResult,
    cosine_distance,
    euclidean_distance,
    evaluate_rank,
    single_shot_keys,
    topk_neighbours,
)


# ------------------------------------------------------------------------------------------
# Plain references
# ------------------------------------------------------------------------------------------
def kept_ranking(dist_row, q_pid, q_cam, g_pids, g_cams):
    """Gallery indices in rank order with the query's same-identity same-camera images removed."""
    order = np.argsort(dist_row, kind="stable")
    return [g for g in order if not (g_pids[g] == q_pid and g_cams[g] == q_cam)]


def reference_evaluate(distmat, q_pids, g_pids, q_cams, g_cams, max_rank, ap_mode="torchreid"):
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    cmcs, aps, inps = [], [], []
    for q in range(num_q):
        kept = kept_ranking(distmat[q], q_pids[q], q_cams[q], g_pids, g_cams)
        match = [1 if g_pids[g] == q_pids[q] else 0 for g in kept]
        n_good = sum(match)
        if n_good == 0:
            aps.append(float("nan"))
            inps.append(float("nan"))
            continue
        # CMC: 1 from the first true match on.
        cmc = []
        found = 0
        for pos in range(max_rank):
            if pos < len(match) and match[pos]:
                found = 1
            cmc.append(found)
        cmcs.append(cmc)
        if ap_mode == "torchreid":
            # Non-interpolated AP: precision at each true match, averaged.
            hits, ap = 0, 0.0
            for pos, m in enumerate(match):
                if m:
                    hits += 1
                    ap += hits / (pos + 1)
            aps.append(ap / n_good)
        else:
            # Market-1501 MATLAB compute_AP: trapezoids between successive precisions.
            ap, old_recall, old_precision, hits = 0.0, 0.0, 1.0, 0
            for pos, m in enumerate(match):
                hits += m
                recall = hits / n_good
                precision = hits / (pos + 1)
                ap += (recall - old_recall) * (old_precision + precision) / 2
                old_recall, old_precision = recall, precision
                if hits == n_good:
                    break
            aps.append(ap)
        # INP = (number of true matches) / (position of the last one, 1-based).
        last = max(pos for pos, m in enumerate(match) if m)
        inps.append(n_good / (last + 1))
    aps, inps = np.array(aps), np.array(inps)
    ok = ~np.isnan(aps)
    return np.mean(np.array(cmcs, dtype=np.float64), 0), aps[ok].mean(), inps[ok].mean(), aps


def reference_single_shot(distmat, q_pids, g_pids, q_cams, g_cams, max_rank, repeats, seed):
    num_q, num_g = distmat.shape
    total = np.zeros(max_rank)
    n_valid = 0
    for q in range(num_q):
        valid = [g for g in range(num_g) if not (g_pids[g] == q_pids[q] and g_cams[g] == q_cams[q])]
        if not any(g_pids[g] == q_pids[q] for g in valid):
            continue
        n_valid += 1
        for rep in range(repeats):
            by_pid = {}
            for g in valid:
                by_pid.setdefault(g_pids[g], []).append(g)
            chosen = []
            for _pid, items in by_pid.items():
                keys = [int(single_shot_keys(seed, rep, q, g)) for g in items]
                chosen.append(items[int(np.argmin(keys))])
            chosen.sort()  # gallery order, so the stable sort breaks ties by index
            ranked = [chosen[i] for i in np.argsort(distmat[q, chosen], kind="stable")]
            first = next(i for i, g in enumerate(ranked) if g_pids[g] == q_pids[q])
            total += np.array([1.0 if first <= k else 0.0 for k in range(max_rank)])
    return total / (n_valid * repeats)


def random_problem(rng, num_q, num_g, num_ids, num_cams, ties=False, distractors=0):
    q_pids = rng.integers(1, num_ids + 1, num_q)
    g_pids = rng.integers(1, num_ids + 1, num_g)
    g_pids[rng.choice(num_g, distractors, replace=False)] = 0  # distractors: gallery only
    q_cams = rng.integers(0, num_cams, num_q)
    g_cams = rng.integers(0, num_cams, num_g)
    if ties:
        dist = rng.integers(0, 4, (num_q, num_g)).astype(np.float64)
    else:
        dist = rng.random((num_q, num_g)).astype(np.float32)
    return dist, q_pids, g_pids, q_cams, g_cams


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# ------------------------------------------------------------------------------------------
# evaluate_rank vs the loop reference
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ap_mode", ["torchreid", "market_trapezoid"])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_loop_reference(ap_mode, ties, seed):
    rng = np.random.default_rng(seed)
    dist, qp, gp, qc, gc = random_problem(rng, 25, 90, 12, 3, ties=ties, distractors=10)
    ref_cmc, ref_map, ref_minp, ref_aps = reference_evaluate(dist, qp, gp, qc, gc, 20, ap_mode)
    for chunk in (None, 1, 7):
        r = quiet(
            evaluate_rank, dist, qp, gp, qc, gc, max_rank=20, ap_mode=ap_mode, chunk_size=chunk
        )
        np.testing.assert_allclose(r.cmc, ref_cmc, atol=1e-6)
        assert abs(r.mAP - ref_map) < 1e-6
        assert abs(r.mINP - ref_minp) < 1e-6
        np.testing.assert_allclose(r.all_AP, ref_aps, atol=1e-6)  # NaN where skipped
        assert r.num_valid_queries == int(np.sum(~np.isnan(ref_aps)))


def test_accelerator_code_path_matches(monkeypatch):
    # Tensors on an accelerator are sorted and searched with torch on their device; run that
    # path on CPU tensors (normally converted to numpy) to check it gives the same numbers.
    import hrnet_pyg.evaluation as ev

    monkeypatch.setattr(ev, "_as_distmat", lambda d: torch.as_tensor(d))
    rng = np.random.default_rng(12)
    for ties in (False, True):
        dist, qp, gp, qc, gc = random_problem(rng, 20, 70, 9, 3, ties=ties, distractors=5)
        ref_cmc, ref_map, ref_minp, _ = reference_evaluate(dist, qp, gp, qc, gc, 15)
        r = quiet(ev.evaluate_rank, dist, qp, gp, qc, gc, max_rank=15, chunk_size=6)
        np.testing.assert_allclose(r.cmc, ref_cmc, atol=1e-6)
        assert abs(r.mAP - ref_map) < 1e-6 and abs(r.mINP - ref_minp) < 1e-6


def test_skipped_queries_warn_and_are_excluded():
    rng = np.random.default_rng(3)
    dist, qp, gp, qc, gc = random_problem(rng, 20, 60, 8, 2)
    qp[:3] = 99  # identity absent from the gallery
    gp[gp == qp[3]] = 0
    gp[5], gc[5] = qp[3], qc[3]  # its only gallery image is junk (same camera)
    with pytest.warns(UserWarning, match=r"4 of 20 queries have no valid true match"):
        r = evaluate_rank(dist, qp, gp, qc, gc, max_rank=10)
    assert r.num_valid_queries == 16
    assert np.isnan(r.all_AP[:4]).all() and not np.isnan(r.all_AP[4:]).any()
    ref_cmc, ref_map, ref_minp, _ = reference_evaluate(dist, qp, gp, qc, gc, 10)
    np.testing.assert_allclose(r.cmc, ref_cmc, atol=1e-6)
    assert abs(r.mAP - ref_map) < 1e-6 and abs(r.mINP - ref_minp) < 1e-6


def test_max_rank_larger_than_gallery_is_clipped_with_warning():
    rng = np.random.default_rng(4)
    dist, qp, gp, qc, gc = random_problem(rng, 10, 15, 3, 3)
    with pytest.warns(UserWarning, match="max_rank clipped to 15"):
        r = evaluate_rank(dist, qp, gp, qc, gc, max_rank=50)
    assert r.cmc.shape == (15,)
    ref_cmc, ref_map, _, _ = reference_evaluate(dist, qp, gp, qc, gc, 50)
    np.testing.assert_allclose(r.cmc, ref_cmc, atol=1e-6)
    assert abs(r.mAP - ref_map) < 1e-6


def test_trapezoid_never_exceeds_torchreid_ap():
    rng = np.random.default_rng(5)
    dist, qp, gp, qc, gc = random_problem(rng, 30, 100, 10, 4)
    a = quiet(evaluate_rank, dist, qp, gp, qc, gc, ap_mode="torchreid")
    b = quiet(evaluate_rank, dist, qp, gp, qc, gc, ap_mode="market_trapezoid")
    ok = ~np.isnan(a.all_AP)
    assert np.all(b.all_AP[ok] <= a.all_AP[ok] + 1e-12)
    assert b.mAP < a.mAP
    np.testing.assert_array_equal(a.cmc, b.cmc)


def test_hand_worked_example():
    # Query 0: pid 1, camera 0.  Gallery (index: pid, camera, distance):
    #   g0: 1, 0, 0.10  junk (same pid, same camera) -> removed
    #   g1: 2, 1, 0.20
    #   g2: 1, 1, 0.30  true match
    #   g3: 3, 1, 0.40
    #   g4: 1, 2, 0.50  true match
    #   g5: 0, 1, 0.05  distractor
    # Kept ranking: g5, g1, g2, g3, g4 -> true matches at 0-based positions 2 and 4.
    #   CMC = [0, 0, 1, 1, 1];  AP = (1/3 + 2/5) / 2 = 11/30;  INP = 2 / 5.
    #   Trapezoid AP = ((0/2 + 1/3)/2 + (1/4 + 2/5)/2) / 2 = (1/6 + 13/40) / 2 = 59/240.
    # Query 1: pid 2, camera 1: its only gallery image g1 is junk -> skipped.
    dist = np.array(
        [[0.10, 0.20, 0.30, 0.40, 0.50, 0.05], [0.3, 0.1, 0.2, 0.4, 0.5, 0.6]], dtype=np.float32
    )
    q_pids, q_cams = [1, 2], [0, 1]
    g_pids, g_cams = [1, 2, 1, 3, 1, 0], [0, 1, 1, 1, 2, 1]
    with pytest.warns(UserWarning, match="1 of 2 queries"):
        r = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=5)
    np.testing.assert_allclose(r.cmc, [0, 0, 1, 1, 1])
    assert r.mAP == pytest.approx(11 / 30, abs=1e-12)
    assert r.mINP == pytest.approx(0.4, abs=1e-12)
    assert r.num_valid_queries == 1 and np.isnan(r.all_AP[1])
    with pytest.warns(UserWarning):
        t = evaluate_rank(
            dist, q_pids, g_pids, q_cams, g_cams, max_rank=5, ap_mode="market_trapezoid"
        )
    assert t.mAP == pytest.approx(59 / 240, abs=1e-12)


def test_ties_are_ordered_by_gallery_index():
    # A true match and a non-match at the same distance: the lower gallery index ranks first.
    dist = np.array([[0.5, 0.5]])
    r = evaluate_rank(dist, [1], [2, 1], [0], [1, 1], max_rank=2)
    assert r.mAP == pytest.approx(0.5) and list(r.cmc) == [0.0, 1.0]
    r = evaluate_rank(dist, [1], [1, 2], [0], [1, 1], max_rank=2)
    assert r.mAP == pytest.approx(1.0) and list(r.cmc) == [1.0, 1.0]


def test_torch_input_float64_and_string_labels():
    rng = np.random.default_rng(6)
    dist, qp, gp, qc, gc = random_problem(rng, 15, 50, 6, 3)
    base = quiet(evaluate_rank, dist, qp, gp, qc, gc, max_rank=10)
    r = quiet(
        evaluate_rank,
        torch.from_numpy(dist.astype(np.float64)),
        torch.from_numpy(qp),
        torch.from_numpy(gp),
        torch.from_numpy(qc),
        torch.from_numpy(gc),
        max_rank=10,
    )
    np.testing.assert_allclose(r.cmc, base.cmc)
    assert r.mAP == pytest.approx(base.mAP, abs=1e-12)
    s = quiet(
        evaluate_rank,
        dist,
        [f"id{p}" for p in qp],
        [f"id{p}" for p in gp],
        [f"cam{c}" for c in qc],
        [f"cam{c}" for c in gc],
        max_rank=10,
    )
    assert s.mAP == pytest.approx(base.mAP, abs=1e-12)


def test_query_permutation_invariance():
    rng = np.random.default_rng(7)
    dist, qp, gp, qc, gc = random_problem(rng, 20, 70, 8, 3)
    a = quiet(evaluate_rank, dist, qp, gp, qc, gc, max_rank=10)
    p = rng.permutation(20)
    b = quiet(evaluate_rank, dist[p], qp[p], gp, qc[p], gc, max_rank=10)
    np.testing.assert_allclose(b.cmc, a.cmc, atol=1e-12)
    np.testing.assert_allclose(b.all_AP, a.all_AP[p], atol=1e-12)


def test_no_camera_ids_warns_and_keeps_same_camera_matches():
    rng = np.random.default_rng(8)
    dist, qp, gp, qc, gc = random_problem(rng, 12, 40, 5, 2)
    with pytest.warns(UserWarning, match="no camera ids"):
        r = evaluate_rank(dist, qp, gp, max_rank=10)
    # Same as giving every gallery image a camera no query has.
    ref_cmc, ref_map, _, _ = reference_evaluate(dist, qp, gp, np.zeros(12), np.ones(40), 10)
    np.testing.assert_allclose(r.cmc, ref_cmc, atol=1e-6)
    assert abs(r.mAP - ref_map) < 1e-6


def test_single_shot_cuhk03_matches_loop_reference():
    rng = np.random.default_rng(9)
    dist, qp, gp, qc, gc = random_problem(rng, 12, 45, 6, 2, ties=True, distractors=0)
    r = quiet(
        evaluate_rank, dist, qp, gp, qc, gc, max_rank=8, protocol="cuhk03_single_shot",
        num_repeats=3, seed=11, chunk_size=5,
    )
    ref = reference_single_shot(dist, qp, gp, qc, gc, 8, 3, 11)
    np.testing.assert_allclose(r.cmc, ref, atol=1e-6)
    # mAP / mINP are the full-ranking ones, as torchreid computes them for CUHK03.
    m = quiet(evaluate_rank, dist, qp, gp, qc, gc, max_rank=8)
    assert r.mAP == pytest.approx(m.mAP) and r.mINP == pytest.approx(m.mINP)
    # Seeded: same seed same curve, another seed (almost surely) another curve.
    again = quiet(
        evaluate_rank, dist, qp, gp, qc, gc, max_rank=8, protocol="cuhk03_single_shot",
        num_repeats=3, seed=11,
    )
    np.testing.assert_array_equal(again.cmc, r.cmc)


def test_single_shot_keys_are_uniform_choices():
    # Over many repeats each of 3 candidates is the minimum about a third of the time.
    keys = np.stack([single_shot_keys(0, rep, 5, np.arange(3)) for rep in range(3000)])
    freq = np.bincount(keys.argmin(1), minlength=3) / 3000
    assert np.all(np.abs(freq - 1 / 3) < 0.04)


def test_result_dict_access_and_str():
    rng = np.random.default_rng(10)
    dist, qp, gp, qc, gc = random_problem(rng, 10, 30, 4, 2)
    r = quiet(evaluate_rank, dist, qp, gp, qc, gc, max_rank=10)
    assert isinstance(r, RankResult)
    assert r["mAP"] == r.mAP and "cmc" in r and set(r.keys()) >= {"cmc", "mAP", "mINP"}
    assert r.rank(1) == r.cmc[0]
    assert "mAP" in str(r)
    with pytest.raises(KeyError, match="valid keys"):
        r["map"]


def test_bad_inputs_raise_clear_errors():
    d = np.random.default_rng(0).random((3, 5))
    pids, gp = [1, 2, 3], [1, 2, 3, 1, 2]
    cams, gc = [0, 0, 0], [1, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="q_pids has 2 entries"):
        evaluate_rank(d, [1, 2], gp, cams, gc)
    with pytest.raises(ValueError, match="g_camids has 4 entries"):
        evaluate_rank(d, pids, gp, cams, gc[:4])
    with pytest.raises(ValueError, match="both q_camids and g_camids"):
        evaluate_rank(d, pids, gp, cams, None)
    with pytest.raises(ValueError, match="ap_mode"):
        evaluate_rank(d, pids, gp, cams, gc, ap_mode="voc")
    with pytest.raises(ValueError, match="protocol"):
        evaluate_rank(d, pids, gp, cams, gc, protocol="cuhk")
    with pytest.raises(ValueError, match="2-D"):
        evaluate_rank(d[0], pids, gp, cams, gc)
    bad = d.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate_rank(bad, pids, gp, cams, gc, max_rank=5)
    with pytest.raises(ValueError, match="no query has a valid true match"):
        evaluate_rank(d, [7, 8, 9], gp, cams, gc, max_rank=5)


# ------------------------------------------------------------------------------------------
# Distance helpers
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_euclidean_distance_matches_cdist(chunk):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(23, 16, generator=g), torch.randn(31, 16, generator=g)
    ref = torch.cdist(a.double(), b.double())
    out = euclidean_distance(a, b, chunk_size=chunk)
    assert out.dtype == torch.float32 and out.shape == (23, 31)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    sq = euclidean_distance(a.numpy(), b.numpy(), chunk_size=chunk, squared=True)
    torch.testing.assert_close(sq.double(), ref**2, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("chunk", [1, 5, 4096])
def test_cosine_distance_matches_plain_formula(chunk):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(9, 8, generator=g), torch.randn(13, 8, generator=g)
    ref = torch.empty(9, 13, dtype=torch.float64)
    for i in range(9):
        for j in range(13):
            ai, bj = a[i].double(), b[j].double()
            ref[i, j] = 1 - (ai @ bj) / (ai.norm() * bj.norm())
    out = cosine_distance(a, b, chunk_size=chunk)
    torch.testing.assert_close(out.double(), ref, atol=1e-6, rtol=1e-6)
    out64 = cosine_distance(a.double().numpy(), b.double().numpy(), chunk_size=chunk)
    assert out64.dtype == torch.float32
    torch.testing.assert_close(out64.double(), ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_topk_neighbours_matches_full_sort(metric):
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(17, 6, generator=g), torch.randn(40, 6, generator=g)
    full = cosine_distance(a, b) if metric == "cosine" else euclidean_distance(a, b)
    vals, idx = topk_neighbours(a, b, 5, metric=metric, chunk_size=4)
    ref_vals, ref_idx = torch.sort(full, dim=1)
    torch.testing.assert_close(vals, ref_vals[:, :5], atol=1e-6, rtol=0)
    assert torch.equal(idx, ref_idx[:, :5])  # continuous random data: no ties


def test_distance_helpers_reject_bad_input():
    a = torch.randn(3, 4)
    with pytest.raises(ValueError, match="feature dims differ"):
        cosine_distance(a, torch.randn(2, 5))
    with pytest.raises(ValueError, match="must be 2-D"):
        euclidean_distance(a[0], a)
    with pytest.raises(ValueError, match="chunk_size"):
        euclidean_distance(a, a, chunk_size=0)
    with pytest.raises(ValueError, match="k must lie"):
        topk_neighbours(a, a, 4)
    bad = a.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match="b contains NaN"):
        cosine_distance(a, bad)
