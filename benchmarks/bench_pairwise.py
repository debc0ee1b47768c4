"""PR + IGP layer (Eq. 6-9), forward + backward: dense factorised path vs message-passing path.

Both paths start from the same image features F and IR outputs V (requires_grad, as in training)
with the same weights, and run forward + backward of a fixed random projection <U', W>. The
message-passing (MP) path includes building its HeteroData (the pair part of ``hybrid_graph``):
that is part of what it costs to go from F to U'.

Timing: one warm-up step per path, then rounds that alternate the two paths (several dense steps,
one MP step per round), so that load on a shared machine hits both alike; medians are reported.

Peak memory: ``ru_maxrss`` (the process's resident-set high-water mark, which sees every torch CPU
allocation) is read before anything runs, after the dense warm-up step and after the MP warm-up
step. The dense path runs first, so its peak is its own; the MP path's peak is the high-water mark
after its step (it is far above the dense one). Both are reported above the same baseline.

    python benchmarks/bench_pairwise.py            # N=66, d=2048 (the paper's batch), ~2 min
    python benchmarks/bench_pairwise.py --quick    # N=33, d=512, seconds

Prints ``RATIO pairwise_speedup=<median MP step / median dense step>`` (target >= 20) and
``RATIO pairwise_peak_mem_mp_over_dense``.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hrnet_pyg.graphs import INTRA, LEFT, RIGHT, hybrid_graph  # noqa: E402
from hrnet_pyg.layers import PairwiseRelationConv  # noqa: E402


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=66, help="images per batch N (default 66)")
    ap.add_argument("--d", type=int, default=2048, help="feature size d (default 2048)")
    ap.add_argument("--repeats", type=int, default=3, help="timed MP steps (default 3)")
    ap.add_argument("--dense-per-round", type=int, default=5, help="dense steps per round")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--quick", action="store_true", help="N=33, d=512: a fast smoke run")
    args = ap.parse_args()
    if args.quick:
        args.n, args.d = 33, 512
    if args.threads:
        torch.set_num_threads(args.threads)
    n, d = args.n, args.d

    torch.manual_seed(0)
    conv = PairwiseRelationConv(d, igp=True)
    f = torch.randn(n, d).relu_().requires_grad_()  # GAP features are non-negative
    v = torch.randn(n, d).requires_grad_()
    w = torch.randn(n, n, d)

    def step(path: str) -> dict:
        f.grad = v.grad = None
        conv.zero_grad(set_to_none=True)
        if path == "dense":
            out = conv.forward_dense(f, v)
        else:
            data = hybrid_graph(f, 1, full=True)  # the N complete pair graphs (and a cheap image graph)
            out = conv(data["pair"].x, data[INTRA].edge_index, v, data[LEFT].edge_index,
                       data[RIGHT].edge_index).view(n, n, d)
        (out * w).sum().backward()
        return {"out": out.detach(), "grad_f": f.grad, "grad_v": v.grad,
                "grad_wp": conv.lin_p.weight.grad}

    print(f"PR+IGP forward+backward, N={n}, d={d}: {n * n} pair nodes, {n**3} intra edges; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    print(f"load average {load:.1f} on {cores} cores"
          + ("  (busy machine: multi-threaded timings are distorted; try --threads 1)"
             if load > cores - 0.5 and torch.get_num_threads() > 1 else ""))
    print(f"one E x d message tensor of the MP path: {n**3 * d * 4 / 1e9:.2f} GB (fp32)")

    base = maxrss_mib()
    res = {"dense": step("dense")}
    peak_dense = maxrss_mib() - base
    res["mp"] = step("mp")
    peak_mp = maxrss_mib() - base

    # Outputs agree to float32 rounding. Gradients pass through the ReLU of Eq. 7: where a
    # pre-activation lies within rounding of 0 the two paths can take different sides of the kink,
    # and that one entry changes whole rows of dL/dW_p and dL/dV (seen here: 1 of 8.9M entries at
    # N=66, d=2048, also between the dense path in float32 and float64). Gradients are therefore
    # compared by relative Frobenius error, which a wrong formula puts at O(1).
    ok = True
    for k, ref in res["mp"].items():
        diff = res["dense"][k] - ref
        if k == "out":
            err = float(diff.abs().max()) / max(1.0, float(ref.abs().max()))
            good = err <= 1e-5
            what = "max abs diff / scale"
        else:
            err = float(diff.norm() / ref.norm())
            good = err <= 1e-2
            what = "relative Frobenius error"
        ok &= good
        print(f"  {k:>7}: {what} {err:.1e} -> {'ok' if good else 'MISMATCH'}")
    print(f"dense vs message passing: {'MATCH' if ok else 'MISMATCH'}")
    del res

    times = {"dense": [], "mp": []}
    for _ in range(args.repeats):
        for _ in range(args.dense_per_round):
            t0 = time.perf_counter()
            step("dense")
            times["dense"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        step("mp")
        times["mp"].append(time.perf_counter() - t0)

    med = {p: statistics.median(t) for p, t in times.items()}
    for p, name, peak in (("dense", "dense/factorised", peak_dense), ("mp", "message passing", peak_mp)):
        spread = f"{min(times[p]) * 1e3:.1f}-{max(times[p]) * 1e3:.1f}"
        print(f"{name:>17}: median {med[p] * 1e3:9.1f} ms over {len(times[p])} steps "
              f"(range {spread} ms); peak RSS {peak:7.0f} MiB above baseline ({base:.0f} MiB)")
    print(f"RATIO pairwise_speedup={med['mp'] / med['dense']:.1f}")
    print(f"RATIO pairwise_peak_mem_mp_over_dense={peak_mp / max(1.0, peak_dense):.1f}")
    if not ok:
        raise SystemExit("dense and message-passing results differ")


if __name__ == "__main__":
    main()
