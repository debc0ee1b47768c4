"""Test-time relational re-ranking (Sec. 4.2) at Market-1501 size vs k-reciprocal re-ranking.

Random features shaped like Market-1501's (3,368 queries, 15,913 gallery images, d = 2048,
non-negative like GAP outputs, clustered by 751 identities) go end to end from CNN features F to
the final (Q, G) distance matrix through

* ``hrnet_pyg.rerank.relational_rerank`` with a full HRNet (IR + CNC + PR + IGP, paper defaults,
  random weights: timing does not depend on them), top-120 shortlist;
* ``hrnet_pyg.kreciprocal.k_reciprocal_rerank_features`` (k1 = 20, k2 = 6, lambda = 0.3) on the
  same features;
* a large fp32 ``torch.mm`` (4096^3), the machine's practical matrix-product speed right now.

The three are interleaved (mm, relational, k-reciprocal, mm, ...) so that load on a shared
machine hits all alike; medians are reported.

Useful FLOPs of the relational re-ranking are the matrix products its math needs, counted at their
minimum (``docs/performance.md``): the cosine shortlist 2 Q G d; per image X W_s and F W_p
(2 d^2 each); per query the kNN distance block M(M-1) d, the kNN aggregation 2 M k_ir d, the
row-n aggregation G F W_p 2 (M-1) M d, and v'_q W_l plus v'_i W_r for the M-1 gallery nodes:
2 M d^2. Elementwise work, the softmaxes and the top-k are not counted.

Also checked and timed on a few queries: the per-graph path (every weight matrix applied inside
each query graph, IR by message passing: what ``query_graph_scores`` did before the per-image
precomputation) must give the same scores.

    python benchmarks/bench_rerank.py            # Market-1501 size, ~4-6 min on 2 busy cores
    python benchmarks/bench_rerank.py --quick    # 300 x 1,500: the CI-sized run, < 1 min

Prints ``RATIO rerank_flop_efficiency=<useful FLOP/s / mm FLOP/s>`` (target >= 0.5),
``RATIO rerank_speedup_vs_kreciprocal=<t_kreciprocal / t_relational>`` (target >= 2 at Market size:
k-reciprocal grows with (Q+G)^2, relational re-ranking with Q, so the ratio of a smaller problem
says little about Market's) and ``RATIO rerank_speedup_vs_per_graph``.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
import torch.nn.functional as Fn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hrnet_pyg.config import HRNetConfig  # noqa: E402
from hrnet_pyg.graphs import pair_mask  # noqa: E402
from hrnet_pyg.kreciprocal import k_reciprocal_rerank_features  # noqa: E402
from hrnet_pyg.model import HRNet  # noqa: E402
from hrnet_pyg.rerank import relational_rerank  # noqa: E402


def make_features(num_q: int, num_g: int, d: int, num_ids: int, seed: int):
    """Non-negative features clustered by identity (GAP outputs are post-ReLU)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_ids, d, generator=gen)
    q_ids = torch.randint(0, num_ids, (num_q,), generator=gen)
    g_ids = torch.randint(0, num_ids, (num_g,), generator=gen)
    qf = (centres[q_ids] + 1.5 * torch.randn(num_q, d, generator=gen)).relu_()
    gf = (centres[g_ids] + 1.5 * torch.randn(num_g, d, generator=gen)).relu_()
    return qf, gf


@torch.no_grad()
def per_graph_scores(model: HRNet, graph: torch.Tensor) -> torch.Tensor:
    """The per-graph formulation (no per-image precomputation): every weight matrix is applied
    inside each query graph, the IR layer runs by message passing over the graphs' union."""
    b, m, d = graph.shape
    cfg = model.config
    flat = graph.reshape(b * m, d)
    batch = torch.arange(b).repeat_interleave(m)
    edge_index = model.individual_edges(flat, batch=batch, k=min(cfg.k, m - 1))
    v = model.ir(flat, edge_index, batch=batch).view(b, m, -1)
    vn = Fn.normalize(v, dim=-1)
    score = (vn[:, :1] * vn[:, 1:]).sum(-1)
    mask = pair_mask(graph, cfg.pr_edges) if cfg.pr_edges else None
    u = model.pr.forward_dense(graph, v, mask=mask, rows=torch.zeros(1, dtype=torch.long))
    return score + torch.sigmoid(model.verifier(u))[:, 0, 1:]


def useful_flops(num_q: int, num_g: int, d: int, top_k: int, k_ir: int) -> Dict[str, float]:
    m = min(top_k, num_g) + 1
    return {
        "cosine shortlist": 2.0 * num_q * num_g * d,
        "per-image X W_s, F W_p": 2.0 * 2.0 * (num_q + num_g) * d * d,
        "kNN distance blocks": float(num_q) * m * (m - 1) * d,
        "IR aggregation (k edges)": 2.0 * num_q * m * min(k_ir, m - 1) * d,
        "PR aggregation G F W_p": 2.0 * num_q * (m - 1) * m * d,
        "V' W_r, v'_q W_l": 2.0 * num_q * m * d * d,
    }


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=3368)
    ap.add_argument("--gallery", type=int, default=15913)
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--top-k", type=int, default=120)
    ap.add_argument("--queries-per-pass", type=int, default=None,
                    help="(default: relational_rerank's own choice)")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default 1; quick: 3)")
    ap.add_argument("--check-queries", type=int, default=16,
                    help="queries re-scored by the per-graph path for the check and its timing")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--quick", action="store_true", help="300 queries x 1,500 gallery (CI size)")
    args = ap.parse_args()
    if args.quick:
        args.queries, args.gallery = 300, 1500
    repeats = args.repeats or (3 if args.quick else 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    nq, ng, d, top_k = args.queries, args.gallery, args.d, args.top_k

    torch.manual_seed(0)
    cfg = HRNetConfig.from_row("HRNet", backbone=None, feat_dim=d, pretrained=False)
    model = HRNet(cfg, num_classes=751).eval()
    qf, gf = make_features(nq, ng, d, num_ids=751, seed=0)
    load0 = os.getloadavg()
    print(f"relational re-ranking (HRNet: IR k={cfg.k} + PR + IGP), {nq} queries x {ng} gallery, "
          f"d={d}, top-{top_k}; k-reciprocal k1=20 k2=6 lambda=0.3; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, CPU, {repeats} timed round(s)")
    print(f"load average {load0[0]:.1f} / {load0[1]:.1f} / {load0[2]:.1f} on {os.cpu_count()} cores")

    a = torch.randn(4096, 4096)
    b = torch.randn(4096, 4096)
    mm_flop = 2.0 * 4096**3

    def run_mm():
        torch.mm(a, b)

    def run_rel():
        return relational_rerank(model, qf, gf, top_k=top_k, queries_per_pass=args.queries_per_pass,
                                 device="cpu", progress=False)

    def run_kr():
        return k_reciprocal_rerank_features(qf, gf, k1=20, k2=6, lambda_value=0.3, progress=False)

    # Warm-up (small problems: allocator, MKL and OpenMP pools), then interleaved rounds.
    run_mm()
    relational_rerank(model, qf[:64], gf[:2000], top_k=top_k, device="cpu", progress=False)
    k_reciprocal_rerank_features(qf[:200], gf[:800], progress=False)
    times: Dict[str, List[float]] = {"mm": [], "rel": [], "kr": []}
    fns: Dict[str, Callable] = {"mm": run_mm, "rel": run_rel, "kr": run_kr}
    rss: Dict[str, float] = {}
    for _ in range(repeats):
        for name in ("mm", "rel", "mm", "kr"):
            t0 = time.perf_counter()
            out = fns[name]()
            times[name].append(time.perf_counter() - t0)
            if name != "mm":
                rss[name] = maxrss_mib()
            del out
    med = {k: statistics.median(v) for k, v in times.items()}

    # Check: the per-image precomputed path against the per-graph path on a few queries.
    c = min(args.check_queries, nq)
    ret = Fn.normalize(model.retrieval_features(torch.cat([qf[:c], gf])), dim=1)
    top = (ret[:c] @ ret[c:].T).topk(min(top_k, ng), dim=1).indices
    graph = torch.cat([qf[:c].unsqueeze(1), gf[top]], dim=1)  # (c, M, d)
    with torch.no_grad():
        t0 = time.perf_counter()
        ref = per_graph_scores(model, graph)
        t_pg = time.perf_counter() - t0
        t0 = time.perf_counter()
        fast = model.query_graph_scores(graph)
        t_fast_graphs = time.perf_counter() - t0
        dist = relational_rerank(model, qf[:c], gf, top_k=top_k, device="cpu", progress=False)
    err = float((fast - ref).abs().max())
    err_rr = float((dist.gather(1, top) + 3.0 + ref).abs().max())
    ok = err <= 1e-4 and err_rr <= 1e-4
    print(f"check on {c} queries: |fast - per-graph| max {err:.1e} (query_graph_scores), "
          f"{err_rr:.1e} (relational_rerank) -> {'MATCH' if ok else 'MISMATCH'} "
          f"(d={d}: float32 sums of 2048 products; the tests check 1e-5 at small d)")

    flops = useful_flops(nq, ng, d, top_k, cfg.k)
    total = sum(flops.values())
    mm_rate = mm_flop / med["mm"]
    rel_rate = total / med["rel"]
    print(f"useful FLOPs of the relational re-ranking: {total / 1e12:.3f} TFLOP")
    for k, v in flops.items():
        print(f"  {k:>26}: {v / 1e9:9.1f} GFLOP ({100 * v / total:4.1f}%)")
    print(f"torch.mm 4096^3 fp32: median {med['mm']:.3f} s -> {mm_rate / 1e9:.1f} GFLOP/s")
    print(f"relational re-ranking: median {med['rel']:.2f} s (range {min(times['rel']):.2f}-"
          f"{max(times['rel']):.2f}) -> {rel_rate / 1e9:.1f} useful GFLOP/s; "
          f"{1e3 * med['rel'] / nq:.2f} ms per query; peak RSS {rss['rel']:.0f} MiB")
    print(f"k-reciprocal:          median {med['kr']:.2f} s (range {min(times['kr']):.2f}-"
          f"{max(times['kr']):.2f}); peak RSS so far {rss['kr']:.0f} MiB")
    print(f"per-graph path on {c} query graphs: {t_pg:.2f} s vs query_graph_scores on the same "
          f"graphs {t_fast_graphs:.2f} s (image terms computed per graph node there too)")
    per_query_pg = t_pg / c
    print(f"per-graph path extrapolated to {nq} queries (+ the same shortlist): "
          f"{per_query_pg * nq:.1f} s")
    load1 = os.getloadavg()
    print(f"load average at the end {load1[0]:.1f} / {load1[1]:.1f} / {load1[2]:.1f}")
    if args.quick:
        print("note: --quick size; rerank_speedup_vs_kreciprocal is a Market-size target "
              "(k-reciprocal grows with (Q+G)^2, relational re-ranking with Q)")
    print(f"RATIO rerank_flop_efficiency={rel_rate / mm_rate:.2f}")
    print(f"RATIO rerank_speedup_vs_kreciprocal={med['kr'] / med['rel']:.2f}")
    print(f"RATIO rerank_speedup_vs_per_graph={per_query_pg * nq / med['rel']:.2f}")
    if not ok:
        raise SystemExit("fast and per-graph re-ranking scores differ")


if __name__ == "__main__":
    main()
