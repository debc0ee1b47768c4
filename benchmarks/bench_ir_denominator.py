"""IR layer (Eq. 2-3) forward on one large graph: the literal all-node denominator vs the neighbours.

``normalize="all"`` evaluates the logit of every (target, node) pair of the graph, N^2 scalars
(chunked, so memory stays bounded); ``normalize="neighbors"`` only the E edges' logits. Both runs
use the same layer weights, features and kNN-sized random graph (E = N x degree edges), one warm-up
each, then rounds that alternate the two so that load on a shared machine hits both alike; medians
are reported.

    python benchmarks/bench_ir_denominator.py            # N = 20,000, E = 100,000, d = 64
    python benchmarks/bench_ir_denominator.py --quick    # N = 4,000

Prints ``RATIO ir_all_over_neighbors=<median all / median neighbors>``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hrnet_pyg.layers import IndividualRelationConv  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="nodes N (default 20000)")
    ap.add_argument("--degree", type=int, default=5, help="incoming edges per node (default 5: E = 5 N)")
    ap.add_argument("--d", type=int, default=64, help="feature size d (default 64)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    ap.add_argument("--quick", action="store_true", help="N = 4000: a fast smoke run")
    args = ap.parse_args()
    if args.quick:
        args.n = 4000
    n, d = args.n, args.d
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    src = torch.randint(0, n, (n * args.degree,), generator=g)
    dst = torch.arange(n).repeat_interleave(args.degree)
    edge_index = torch.stack([src, dst])
    convs = {}
    for norm in ("all", "neighbors"):
        torch.manual_seed(1)
        convs[norm] = IndividualRelationConv(d, d, normalize=norm)
    one_graph = torch.zeros(n, dtype=torch.long)  # one graph, said explicitly: no missing-batch check
    times: dict[str, list[float]] = {norm: [] for norm in convs}
    with torch.no_grad():
        for conv in convs.values():  # warm-up
            conv(x, edge_index, batch=one_graph)
        for _ in range(args.rounds):
            for norm, conv in convs.items():
                t0 = time.perf_counter()
                conv(x, edge_index, batch=one_graph)
                times[norm].append(time.perf_counter() - t0)
    t_all, t_nb = statistics.median(times["all"]), statistics.median(times["neighbors"])
    print(f"N = {n}, E = {edge_index.size(1)}, d = {d}, threads = {torch.get_num_threads()}")
    print(f"normalize='all'       median {t_all * 1e3:10.1f} ms")
    print(f"normalize='neighbors' median {t_nb * 1e3:10.1f} ms")
    print(f"RATIO ir_all_over_neighbors={t_all / t_nb:.1f}")


if __name__ == "__main__":
    main()
