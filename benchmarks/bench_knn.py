"""kNN graph of Eq. 1 (k=10): hrnet_pyg.graphs.knn_edges backends, side by side.

1. One re-ID batch, 66 x 2048: the pure-torch path (``backend="torch"``, what ``"auto"`` picks)
   vs a plain ``torch.cdist`` + ``torch.topk`` (the obvious implementation; no deterministic tie
   rule) and, when installed, torch-cluster and pyg-lib.
2. Many re-ranking graphs at once (121 nodes each: a query and its top-120 gallery), one batch
   vector: the vectorised padded-block path vs a Python loop of cdist + topk per graph.

Every variant's edge set is checked against the torch path's, on a float64 copy of the inputs:
in float32 the different summation orders of the variants can swap near-tied k-th and (k+1)-th
neighbours of a few nodes, which says nothing about correctness. Prints ``RATIO`` lines:
``knn_torch_vs_cdist_topk``, ``knn_torch_vs_cluster`` / ``knn_torch_vs_pyg`` (when installed;
values > 1 mean the torch path is faster) and ``knn_batched_vs_loop``.

    python benchmarks/bench_knn.py           # ~20 s
    python benchmarks/bench_knn.py --quick
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hrnet_pyg.graphs import _has_torch_cluster, _pyg_has_knn, knn_edges  # noqa: E402


def bench(fn: Callable[[], torch.Tensor], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def edge_set(ei: torch.Tensor) -> set:
    return set(zip(ei[0].tolist(), ei[1].tolist(), strict=False))


def cdist_topk(x: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(x, x)
    d.fill_diagonal_(float("inf"))
    nbr = d.topk(k, dim=1, largest=False).indices  # (N, k)
    return torch.stack([nbr.reshape(-1), torch.arange(x.size(0)).repeat_interleave(k)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=66)
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--graphs", type=int, default=256, help="re-ranking graphs in part 2")
    ap.add_argument("--graph-size", type=int, default=121)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.graphs, args.repeats = 32, 5
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    k = args.k
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; k={k}")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    print(f"load average {load:.1f} on {cores} cores")

    # 1. one batch
    x = torch.randn(args.n, args.d).relu_()
    x64 = x.double()
    ref = edge_set(knn_edges(x64, k, backend="torch"))
    variants = {"torch": lambda x: knn_edges(x, k, backend="torch"),
                "cdist_topk": lambda x: cdist_topk(x, k)}
    if _has_torch_cluster():
        variants["cluster"] = lambda x: knn_edges(x, k, backend="cluster")
    else:
        print("torch-cluster not installed: its comparison is skipped")
    if _pyg_has_knn():
        variants["pyg"] = lambda x: knn_edges(x, k, backend="pyg")
    else:
        print("pyg-lib knn not available: its comparison is skipped")
    t = {}
    for name, var in variants.items():
        same = edge_set(var(x64)) == ref
        fn = lambda var=var: var(x)  # noqa: E731
        t[name] = bench(fn, args.repeats)
        print(f"  {args.n} x {args.d}: {name:>10} {t[name] * 1e3:8.3f} ms  "
              f"edges {'identical' if same else 'DIFFER'}")
        if not same:
            raise SystemExit(f"{name} edges differ from the torch path")
    for name in ("cdist_topk", "cluster", "pyg"):
        if name in t:
            print(f"RATIO knn_torch_vs_{name}={t[name] / t['torch']:.2f}")

    # 2. many re-ranking graphs
    b, m = args.graphs, args.graph_size
    xb = torch.randn(b * m, args.d)
    batch = torch.arange(b).repeat_interleave(m)

    def loop(xb: torch.Tensor) -> torch.Tensor:
        return torch.cat([cdist_topk(xb[g * m:(g + 1) * m], k) + g * m for g in range(b)], 1)

    xb64 = xb.double()
    same = edge_set(loop(xb64)) == edge_set(knn_edges(xb64, k, batch=batch))
    del xb64
    reps = max(3, args.repeats // 4)
    tb = bench(lambda: knn_edges(xb, k, batch=batch), reps, warmup=1)
    tl = bench(lambda: loop(xb), reps, warmup=1)
    print(f"  {b} graphs x {m} nodes x {args.d}: batched {tb * 1e3:.1f} ms, per-graph loop "
          f"{tl * 1e3:.1f} ms, edges {'identical' if same else 'DIFFER'}")
    if not same:
        raise SystemExit("batched edges differ from the per-graph loop")
    print(f"RATIO knn_batched_vs_loop={tl / tb:.2f}")


if __name__ == "__main__":
    main()
