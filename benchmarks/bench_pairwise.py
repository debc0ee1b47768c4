"""PR + IGP layer (Eq. 6-9), forward + backward: dense factorised path vs message-passing path.

Both paths start from the same image features F and IR outputs V (requires_grad, as in training)
with the same weights, and run forward + backward of a fixed random projection of U'. The
message-passing path includes building its HeteroData (``pair_graph``), since it is part of what
that path costs to go from F to U'. Each path runs in its own child process so that its peak
memory can be measured: the children report ``ru_maxrss`` (peak resident set, which includes every
torch CPU allocation) before and after the timed runs; the difference is the path's own peak.

    python benchmarks/bench_pairwise.py            # N=66, d=2048 (the paper's batch), ~1-2 min
    python benchmarks/bench_pairwise.py --quick    # N=33, d=512, seconds

Prints ``RATIO pairwise_speedup=<median MP time / median dense time>`` (target >= 20).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def child(args: argparse.Namespace) -> None:
    from hrnet_pyg.graphs import pair_graph
    from hrnet_pyg.layers import PairwiseRelationConv

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    conv = PairwiseRelationConv(args.d, igp=True)
    f = torch.randn(args.n, args.d).relu_().requires_grad_()  # GAP features are non-negative
    v = torch.randn(args.n, args.d).requires_grad_()
    w = torch.randn(args.n, args.n, args.d)  # fixed projection: loss = <U', W>

    def step() -> torch.Tensor:
        if args.path == "dense":
            out = conv.forward_dense(f, v)
        else:
            out = conv.forward_hetero(pair_graph(f, v)).view(args.n, args.n, args.d)
        (out * w).sum().backward()
        return out

    before = _maxrss_mib()
    times = []
    for it in range(args.warmup + args.repeats):
        f.grad = v.grad = None
        conv.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out = step()
        dt = time.perf_counter() - t0
        if it >= args.warmup:
            times.append(dt)
    after = _maxrss_mib()
    torch.save({"out": out.detach(), "grad_f": f.grad, "grad_v": v.grad,
                "grad_wp": conv.lin_p.weight.grad}, args.save)
    print(json.dumps({"times": times, "rss_before_mib": before, "rss_peak_mib": after}))


def run_child(path: str, args: argparse.Namespace, save: str) -> dict:
    cmd = [sys.executable, __file__, "--child", path, "--n", str(args.n), "--d", str(args.d),
           "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--save", save,
           "--threads", str(args.threads)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{path} path failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=66, help="images per batch N (default 66)")
    ap.add_argument("--d", type=int, default=2048, help="feature size d (default 2048)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per path (median)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--quick", action="store_true", help="N=33, d=512: a fast smoke run")
    ap.add_argument("--child", choices=["dense", "mp"], help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.path = args.child
        return child(args)
    if args.quick:
        args.n, args.d = 33, 512

    n, d = args.n, args.d
    edges = n**3
    print(f"PR+IGP forward+backward, N={n}, d={d}, {n * n} pair nodes, {edges} intra edges; "
          f"torch {torch.__version__}, {args.threads or torch.get_num_threads()} threads, CPU")
    print(f"message tensor of the MP path: {edges * d * 4 / 1e9:.2f} GB (fp32) per copy")
    with tempfile.TemporaryDirectory() as tmp:
        res = {}
        for path in ("dense", "mp"):
            res[path] = run_child(path, args, os.path.join(tmp, f"{path}.pt"))
        a = torch.load(os.path.join(tmp, "dense.pt"))
        b = torch.load(os.path.join(tmp, "mp.pt"))
    diffs = {k: float((a[k] - b[k]).abs().max()) for k in a}
    scale = {k: float(a[k].abs().max()) for k in a}
    ok = all(diffs[k] <= 1e-4 * max(1.0, scale[k]) for k in a)
    print("max |dense - mp|: " + ", ".join(f"{k}={diffs[k]:.2e} (max {scale[k]:.2e})" for k in a)
          + f" -> {'MATCH' if ok else 'MISMATCH'}")

    med = {p: statistics.median(r["times"]) for p, r in res.items()}
    for p, name in (("dense", "dense/factorised"), ("mp", "message passing")):
        r = res[p]
        print(f"{name:>17}: median {med[p] * 1e3:9.1f} ms over {len(r['times'])} runs "
              f"({', '.join(f'{t * 1e3:.1f}' for t in r['times'])}); peak RSS {r['rss_peak_mib']:.0f} "
              f"MiB, of which {r['rss_peak_mib'] - r['rss_before_mib']:.0f} MiB above the "
              f"process before the path ran")
    print(f"RATIO pairwise_speedup={med['mp'] / med['dense']:.1f}")
    print(f"RATIO pairwise_peak_mem_mp_over_dense="
          f"{(res['mp']['rss_peak_mib'] - res['mp']['rss_before_mib']) / max(1.0, res['dense']['rss_peak_mib'] - res['dense']['rss_before_mib']):.1f}")
    if not ok:
        raise SystemExit("dense and message-passing outputs differ")


if __name__ == "__main__":
    main()
