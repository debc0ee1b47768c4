"""Benchmark: vectorised ``evaluate_rank`` vs a plain per-query loop of the same protocol.

Market-1501-sized problem (3,368 queries x 15,913 gallery images, 750 identities, 6 cameras,
2,793 distractors of pid 0, about 14 valid true matches per query); distances are cosine
distances of random clustered features, so the numbers look like a trained model's.

The loop baseline is the plain torchreid-style evaluation: per query an argsort of its row,
removal of same-identity same-camera images, cumulative sums for CMC / AP / INP (numpy inside
each query, no Python loop over gallery items).  Two variants:

* ``stable``: ``np.argsort(kind="stable")``, exactly this project's protocol (ties ordered by
  gallery index): the reference of ``RATIO eval_speedup``;
* ``quicksort``: numpy's default argsort as torchreid calls it, which orders ties arbitrarily
  (the same numbers here, since random float distances have no ties): reported as
  ``RATIO eval_speedup_vs_quicksort_loop``.

Prints ``RATIO eval_speedup=<x>`` (target >= 10) and the median timings.

``--device cuda[:N]`` hands ``evaluate_rank`` the distance matrix as a tensor on that GPU (its
sorts and searches then run there; the time includes the transfer of its small results); the
loop baselines stay on the CPU. ``--skip-loops`` times ``evaluate_rank`` alone.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hrnet_pyg.evaluation import cosine_distance, evaluate_rank  # noqa: E402
from hrnet_pyg.runtime import resolve_device  # noqa: E402


def make_problem(
    num_q: int, num_g: int, num_ids: int, num_cams: int, num_distractors: int, seed: int
):
    rng = np.random.default_rng(seed)
    g_pids = np.concatenate(
        [
            np.zeros(num_distractors, dtype=np.int64),
            rng.integers(1, num_ids + 1, num_g - num_distractors),
        ]
    )
    rng.shuffle(g_pids)
    g_cams = rng.integers(0, num_cams, num_g)
    q_pids = rng.integers(1, num_ids + 1, num_q)
    q_cams = rng.integers(0, num_cams, num_q)
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_ids + 1, 64, generator=gen)
    qf = centres[torch.from_numpy(q_pids)] + 1.2 * torch.randn(num_q, 64, generator=gen)
    gf = centres[torch.from_numpy(g_pids)] + 1.2 * torch.randn(num_g, 64, generator=gen)
    n_distractors = int((g_pids == 0).sum())
    gf[torch.from_numpy(g_pids == 0)] = 2.0 * torch.randn(n_distractors, 64, generator=gen)
    dist = cosine_distance(qf, gf).numpy()
    return dist, q_pids, g_pids, q_cams, g_cams


def loop_evaluate(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=50, kind="stable"):
    """Plain per-query loop (torchreid's eval_market1501 + fast-reid's mINP)."""
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    all_cmc, all_ap, all_inp = [], [], []
    for q in range(num_q):
        order = np.argsort(distmat[q], kind=kind)
        pids, cams = g_pids[order], g_cams[order]
        keep = ~((pids == q_pids[q]) & (cams == q_cams[q]))
        match = pids[keep] == q_pids[q]
        if not match.any():
            continue
        hits = np.cumsum(match)
        pos = np.flatnonzero(match)
        all_inp.append(len(pos) / (pos[-1] + 1.0))
        all_cmc.append(np.minimum(hits[:max_rank], 1))
        all_ap.append(np.mean(np.arange(1, len(pos) + 1) / (pos + 1.0)))
    cmc = np.mean(np.asarray(all_cmc, dtype=np.float64), 0)
    return cmc, float(np.mean(all_ap)), float(np.mean(all_inp))


def timed(fn, repeats: int, warmup: int = 1):
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller problem (800 x 4,000)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed runs per method (default: 5, quick: 3)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the problem (default: 0)")
    parser.add_argument("--device", default="cpu", help="where evaluate_rank's distances live (default: cpu)")
    parser.add_argument("--queries", type=int, default=None, help="override the problem's query count")
    parser.add_argument("--gallery", type=int, default=None, help="override the problem's gallery size")
    parser.add_argument("--skip-loops", action="store_true", help="time evaluate_rank only (no RATIO)")
    args = parser.parse_args()
    dev = resolve_device(args.device)

    if args.quick:
        sizes = dict(num_q=800, num_g=4000, num_ids=190, num_cams=6, num_distractors=700)
    else:
        sizes = dict(num_q=3368, num_g=15913, num_ids=750, num_cams=6, num_distractors=2793)
    if args.queries:
        sizes["num_q"] = args.queries
    if args.gallery:
        sizes["num_g"] = args.gallery
        sizes["num_distractors"] = min(sizes["num_distractors"], args.gallery // 5)
    repeats = args.repeats or (3 if args.quick else 5)
    dist, qp, gp, qc, gc = make_problem(**sizes, seed=args.seed)
    where = "numpy on the CPU" if dev.type == "cpu" else f"a tensor on {dev}"
    print(
        f"problem: {dist.shape[0]} queries x {dist.shape[1]} gallery, {sizes['num_ids']} ids, "
        f"{sizes['num_cams']} cameras, {sizes['num_distractors']} distractors; "
        f"torch threads {torch.get_num_threads()}; {repeats} timed runs, median; "
        f"evaluate_rank's distances: {where}"
    )
    d_in = dist if dev.type == "cpu" else torch.from_numpy(dist).to(dev)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skipped-query notes; identical for every method
        t_fast, res = timed(lambda: evaluate_rank(d_in, qp, gp, qc, gc, max_rank=50), repeats)
    if args.skip_loops:
        print(f"evaluate_rank: mAP {100 * res.mAP:.4f}  mINP {100 * res.mINP:.4f}  R1 {100 * res.cmc[0]:.4f}")
        print(f"time evaluate_rank      {1000 * t_fast:9.1f} ms")
        return
    t_stable, ref = timed(lambda: loop_evaluate(dist, qp, gp, qc, gc, kind="stable"), repeats)
    t_quick, ref_q = timed(lambda: loop_evaluate(dist, qp, gp, qc, gc, kind="quicksort"), repeats)

    def max_diff(other) -> float:
        cmc, m_ap, m_inp = other
        return float(max(np.abs(res.cmc - cmc).max(), abs(res.mAP - m_ap), abs(res.mINP - m_inp)))

    diff_stable, diff_quick = max_diff(ref), max_diff(ref_q)
    print(
        f"evaluate_rank: mAP {100 * res.mAP:.4f}  mINP {100 * res.mINP:.4f}  "
        f"R1 {100 * res.cmc[0]:.4f}  ({res.num_valid_queries} valid queries)"
    )
    print(
        f"loop (stable): mAP {100 * ref[1]:.4f}  mINP {100 * ref[2]:.4f}  "
        f"R1 {100 * ref[0][0]:.4f}"
    )
    print(
        f"max |difference| over CMC, mAP, mINP: vs stable loop {diff_stable:.3g}, "
        f"vs quicksort loop {diff_quick:.3g} (float32 distances do tie; quicksort orders ties "
        f"arbitrarily)"
    )
    if diff_stable > 1e-9:
        raise SystemExit("results differ between evaluate_rank and the loop reference")
    print(f"time evaluate_rank      {1000 * t_fast:9.1f} ms")
    print(f"time loop (stable sort) {1000 * t_stable:9.1f} ms")
    print(f"time loop (quicksort)   {1000 * t_quick:9.1f} ms")
    print(f"RATIO eval_speedup={t_stable / t_fast:.2f}")
    print(f"RATIO eval_speedup_vs_quicksort_loop={t_quick / t_fast:.2f}")


if __name__ == "__main__":
    main()
