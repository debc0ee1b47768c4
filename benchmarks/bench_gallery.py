"""The gallery-graph protocol (hrnet_pyg.gallery) at Market-1501 size, side by side with the
paper's per-query graphs, the project's k-reciprocal and torchreid-style dense k-reciprocal; its
peak memory at MSMT17 size.

Random features shaped like Market-1501's (3,368 queries, 15,913 gallery images, d = 2048,
non-negative, clustered by 751 identities; ``bench_rerank.make_features``) and an HRNet with the
trained model's shapes (IR + CNC + PR + IGP at d = 2048, random weights: the timing does not
depend on them) go from CNN features F to the final (Q, G) distances through

* ``hrnet_pyg.gallery.gallery_rerank`` (``rerank.protocol=gallery`` with its defaults: k = 5,
  neighbours "all", one round, ranked by the cosine of BN(V'); ``output="distances"``, what
  evaluation reads);
* ``hrnet_pyg.rerank.relational_rerank`` (the paper's top-120 query graphs, both modules);
* ``hrnet_pyg.kreciprocal.k_reciprocal_rerank_features`` (k1 = 20, k2 = 6, lambda = 0.3);
* :func:`torchreid_style_re_ranking` below: a re-implementation, for timing only, of the dense
  reference that torchreid, reid-strong-baseline and fast-reid ship (Zhong et al.'s code): the
  three distance matrices stacked into (Q+G)^2, a full argsort of every row, per-image Python
  loops, a dense V and its query expansion, an inverted index from V's columns.

Each method runs once (the long ones take minutes on two cores), gallery first and again last, so
that drifting load shows. Prints ``RATIO gallery_speedup_vs_paper`` (target >= 5),
``RATIO gallery_speedup_vs_kreciprocal`` (target >= 1: no slower than the project's k-reciprocal)
and ``RATIO gallery_speedup_vs_torchreid_kreciprocal``. ``--msmt17`` first runs the gallery protocol
at MSMT17 size (11,659 x 82,161, d = 2048) with ``output="topk"`` (top-100) in a child process and
prints its peak resident memory (``getrusage`` maxrss, and Linux's ``VmHWM``) as
``RATIO gallery_msmt17_peak_rss_gib`` (target < 16). It runs before anything else: a child's
``ru_maxrss`` starts at its parent's resident size at the fork.

    python benchmarks/bench_gallery.py --quick            # 300 x 1,500: < 1 min
    python benchmarks/bench_gallery.py                    # Market size: ~10 min on 2 busy cores
    python benchmarks/bench_gallery.py --msmt17           # the MSMT17-size memory (~10 min) first
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_rerank import GALLERY, make_features  # noqa: E402

from hrnet_pyg.config import HRNetConfig  # noqa: E402
from hrnet_pyg.distances import euclidean_distance  # noqa: E402
from hrnet_pyg.gallery import gallery_rerank  # noqa: E402
from hrnet_pyg.kreciprocal import k_reciprocal_rerank_features  # noqa: E402
from hrnet_pyg.model import HRNetModule  # noqa: E402
from hrnet_pyg.rerank import relational_rerank  # noqa: E402


def torchreid_style_re_ranking(q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray, k1: int = 20, k2: int = 6,
                               lambda_value: float = 0.3) -> np.ndarray:
    """k-reciprocal re-ranking as the dense reference computes it (torchreid's
    ``utils/rerank.py:re_ranking``, after Zhong et al.'s code): every step on (Q+G)^2 arrays, the
    k-reciprocal sets and the Jaccard sums in Python loops. Written here for timing only; the
    package's :func:`~hrnet_pyg.kreciprocal.k_reciprocal_rerank` is tested against the reference."""
    num_q = q_g.shape[0]
    dist = np.concatenate([np.concatenate([q_q, q_g], axis=1), np.concatenate([q_g.T, g_g], axis=1)], axis=0)
    dist = np.power(dist, 2).astype(np.float32)
    dist = np.transpose(dist / np.max(dist, axis=0))  # column-normalised, then rows = images
    n = dist.shape[0]
    v = np.zeros_like(dist, dtype=np.float32)
    rank = np.argsort(dist).astype(np.int32)  # the full ranking of every image
    half = int(np.around(k1 / 2.0))
    for i in range(n):
        fwd = rank[i, :k1 + 1]
        recip = fwd[np.where(rank[fwd, :k1 + 1] == i)[0]]
        grown = recip
        for c in recip:
            c_fwd = rank[c, :half + 1]
            c_recip = c_fwd[np.where(rank[c_fwd, :half + 1] == c)[0]]
            if len(np.intersect1d(c_recip, recip)) > 2.0 / 3 * len(c_recip):
                grown = np.append(grown, c_recip)
        grown = np.unique(grown)
        w = np.exp(-dist[i, grown])
        v[i, grown] = w / np.sum(w)
    dist = dist[:num_q]
    if k2 != 1:
        v_qe = np.zeros_like(v, dtype=np.float32)
        for i in range(n):
            v_qe[i] = np.mean(v[rank[i, :k2]], axis=0)
        v = v_qe
        del v_qe
    del rank
    inv = [np.where(v[:, j] != 0)[0] for j in range(n)]  # images holding column j
    jaccard = np.zeros_like(dist, dtype=np.float32)
    for i in range(num_q):
        acc = np.zeros((1, n), dtype=np.float32)
        nz = np.where(v[i] != 0)[0]
        for j in nz:
            acc[0, inv[j]] += np.minimum(v[i, j], v[inv[j], j])
        jaccard[i] = 1 - acc / (2.0 - acc)
    final = jaccard * (1 - lambda_value) + dist * lambda_value
    return final[:, num_q:]


def torchreid_style_from_features(qf: torch.Tensor, gf: torch.Tensor) -> np.ndarray:
    """The three Euclidean distance matrices (as a user computes them), then the dense re-ranking."""
    q_g = euclidean_distance(qf, gf).numpy()
    q_q = euclidean_distance(qf, qf).numpy()
    g_g = euclidean_distance(gf, gf).numpy()
    return torchreid_style_re_ranking(q_g, q_q, g_g)


def maxrss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def vmhwm_gib() -> float:
    """The peak resident size of this process's own memory map (Linux ``VmHWM``; NaN elsewhere).
    Unlike ``ru_maxrss`` it does not inherit the parent's resident size at the fork."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def make_model(d: int) -> HRNetModule:
    torch.manual_seed(0)
    cfg = HRNetConfig.from_row("HRNet", backbone=None, feat_dim=d, pretrained=False)
    return HRNetModule(cfg, num_classes=751).eval()


def memory_child(num_q: int, num_g: int, d: int) -> None:
    """Child process of ``--msmt17``: the gallery protocol in top-k mode, then its peak RSS."""
    qf, gf = make_features(num_q, num_g, d, num_ids=1041, seed=1)
    model = make_model(d)
    base = maxrss_gib()
    t0 = time.perf_counter()
    top = gallery_rerank(model, qf, gf, **GALLERY, output="topk", top_k=100, progress=True)
    print(f"CHILD seconds={time.perf_counter() - t0:.1f} inputs_rss_gib={base:.2f} peak_rss_gib={maxrss_gib():.2f} "
          f"vmhwm_gib={vmhwm_gib():.2f} ranking={tuple(top.index.shape)}", flush=True)


MSMT17_SIZE = (11659, 82161)  # queries, gallery images


def run_msmt17(d: int = 2048, threads: int = 0, size: tuple[int, int] = MSMT17_SIZE) -> float:
    """The gallery protocol's peak memory at MSMT17 size (``output="topk"``, top-100) in a child
    process (:func:`memory_child`); prints ``RATIO gallery_msmt17_peak_rss_gib`` and returns it.
    ``size``: (queries, gallery images), smaller only for a smoke test of this path. Call it while
    the calling process is small: a child's ``ru_maxrss`` starts at its parent's resident size."""
    num_q, num_g = size
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-memory", "--queries", str(num_q),
           "--gallery", str(num_g), "--d", str(d)]
    if threads:
        cmd += ["--threads", str(threads)]
    print(f"{'MSMT17 size' if size == MSMT17_SIZE else 'NOT MSMT17 size (a smoke test)'} ({num_q:,} x {num_g:,}, "
          f"d={d}), gallery protocol, output='topk' (top-100), in a child process ...", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("CHILD")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"the MSMT17-size child failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    fields = dict(kv.split("=", 1) for kv in line.split()[1:5])
    print(f"  {line[6:]}")
    peak = float(fields["peak_rss_gib"])
    print(f"RATIO gallery_msmt17_peak_rss_gib={peak:.2f}")
    return peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=3368)
    ap.add_argument("--gallery", type=int, default=15913)
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--quick", action="store_true", help="300 queries x 1,500 gallery")
    ap.add_argument("--skip-torchreid", action="store_true", help="leave out the dense torchreid-style k-reciprocal")
    ap.add_argument("--skip-paper", action="store_true", help="leave out the paper's per-query graphs")
    ap.add_argument("--msmt17", action="store_true", help="also the peak memory at MSMT17 size (child process)")
    ap.add_argument("--child-memory", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child_memory:
        memory_child(args.queries, args.gallery, args.d)
        return
    if args.msmt17:  # first, while this process is small: a child's ru_maxrss starts at its parent's size
        run_msmt17(args.d, args.threads)
    if args.quick:
        args.queries, args.gallery = 300, 1500
    nq, ng, d = args.queries, args.gallery, args.d
    model = make_model(d)
    qf, gf = make_features(nq, ng, d, num_ids=751, seed=0)
    load0 = os.getloadavg()
    print(f"gallery protocol (k={GALLERY['k']}, normalize={model.ir.normalize!r}) vs the paper's per-query "
          f"graphs (top-{model.rerank_config.shortlist}) vs k-reciprocal (k1=20 k2=6 lambda=0.3), {nq} queries x {ng} "
          f"gallery, d={d}; torch {torch.__version__}, {torch.get_num_threads()} threads; load average "
          f"{load0[0]:.1f} / {load0[1]:.1f} / {load0[2]:.1f} on {os.cpu_count()} cores", flush=True)
    gallery_rerank(model, qf[:50], gf[:400], **GALLERY, output="distances", progress=False)  # warm-up
    runs = [("gallery", lambda: gallery_rerank(model, qf, gf, **GALLERY, output="distances", progress=False))]
    if not args.skip_paper:
        runs.append(("paper", lambda: relational_rerank(model, qf, gf, device="cpu", progress=False)))
    runs.append(("kreciprocal", lambda: k_reciprocal_rerank_features(qf, gf, progress=False)))
    if not args.skip_torchreid:
        runs.append(("torchreid", lambda: torchreid_style_from_features(qf, gf)))
    runs.append(("gallery again", runs[0][1]))
    times = {}
    for name, run in runs:
        t0 = time.perf_counter()
        run()
        times[name] = time.perf_counter() - t0
        print(f"  {name:>14}: {times[name]:8.2f} s (peak RSS of the process so far {maxrss_gib():.2f} GiB)",
              flush=True)
    load1 = os.getloadavg()
    print(f"load average at the end {load1[0]:.1f} / {load1[1]:.1f} / {load1[2]:.1f}")
    t_gallery = min(times["gallery"], times["gallery again"])
    if args.quick:
        print("note: --quick size; the targets are Market-size ones (k-reciprocal and the kNN pass grow with "
              "(Q+G)^2, the per-query graphs with Q)")
    if "paper" in times:
        print(f"RATIO gallery_speedup_vs_paper={times['paper'] / t_gallery:.2f}")
    print(f"RATIO gallery_speedup_vs_kreciprocal={times['kreciprocal'] / t_gallery:.2f}")
    if "torchreid" in times:
        print(f"RATIO gallery_speedup_vs_torchreid_kreciprocal={times['torchreid'] / t_gallery:.2f}")


if __name__ == "__main__":
    main()
