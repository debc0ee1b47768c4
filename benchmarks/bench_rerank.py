"""Test-time relational re-ranking (Sec. 4.2) at Market-1501 size vs k-reciprocal re-ranking.

Random features shaped like Market-1501's (3,368 queries, 15,913 gallery images, d = 2048,
non-negative like GAP outputs, clustered by 751 identities) go end to end from CNN features F to
the final (Q, G) distance matrix through

* ``hrnet_pyg.rerank.relational_rerank`` with a full HRNet (IR + CNC + PR + IGP, paper defaults,
  random weights: timing does not depend on them), top-120 shortlist;
* ``hrnet_pyg.kreciprocal.k_reciprocal_rerank_features`` (k1 = 20, k2 = 6, lambda = 0.3) on the
  same features;
* ``hrnet_pyg.gallery.gallery_rerank`` (``rerank.protocol=gallery``, not in the paper: the same
  model's IR layer once over the kNN graph of all Q + G images, ranked by the cosine of BN(V'),
  ``output="distances"``); torchreid-style dense k-reciprocal (``--torchreid``) and the
  MSMT17-size memory (``--msmt17``) come from ``bench_gallery.py``, the index latency
  (``--index``) from ``bench_index.py``;
* a large fp32 ``torch.mm`` (4096^3), the machine's practical matrix-product speed right now.

The four are interleaved (mm, relational, mm, k-reciprocal, mm, gallery, ...) so that load on a
shared machine hits all alike; medians are reported.

Useful FLOPs of the relational re-ranking are the matrix products its math needs, counted at their
minimum (``docs/performance.md``): the cosine shortlist 2 Q G d; per image X W_s and F W_p
(2 d^2 each); per query the kNN distance block M(M-1) d, the kNN aggregation 2 M k_ir d, the
row-n aggregation G F W_p 2 (M-1) M d, v'_q W_l plus v'_i W_r for the M-1 gallery nodes:
2 M d^2, and with the projected verification head (``pr_head="projected"``, the default) the
product u'_{q,i} W_h of Eq. 13's head for the M-1 pair nodes of the query's row: 2 (M-1) d d_h.
That last product is per pair (u' passes through a ReLU, so it cannot be factored into per-image
terms) and as large as V' W_r; the diagonal head has none. Elementwise work, the softmaxes and the
top-k are not counted.

Also checked and timed on a few queries: the per-graph path (every weight matrix applied inside
each query graph, IR by message passing: what ``score_query_graphs`` did before the per-image
precomputation) must give the same scores.

    python benchmarks/bench_rerank.py            # Market-1501 size, ~4-6 min on 2 busy cores
    python benchmarks/bench_rerank.py --quick    # 300 x 1,500: the CI-sized run, < 1 min
    python benchmarks/bench_rerank.py --device cuda --tf32 both   # on a GPU, TF32 off and on

On a GPU (``--device cuda[:N]``) every timed call ends with a synchronisation, the relational
re-ranking's time includes copying its (Q, G) result to the CPU (what ``evaluate_rank`` and the
users get), and peak GPU memory is reported. ``--tf32 off|on|both``: matmuls in full fp32 (torch's
default), with TF32 (10-bit mantissa inputs, fp32 accumulation), or first off then on, printing
how far the two rankings agree (rank-1, identical top-10, largest distance difference, mAP of each
against the features' identities) and ``RATIO rerank_tf32_speedup``.

Prints ``RATIO rerank_flop_efficiency=<useful FLOP/s / mm FLOP/s>`` (target >= 0.5),
``RATIO rerank_speedup_vs_kreciprocal=<t_kreciprocal / t_relational>`` (target >= 2 at Market size:
k-reciprocal grows with (Q+G)^2, relational re-ranking with Q, so the ratio of a smaller problem
says little about Market's), ``RATIO rerank_speedup_vs_per_graph``, and the gallery protocol's
``RATIO gallery_speedup_vs_paper`` (target >= 5) and ``RATIO gallery_speedup_vs_kreciprocal``
(target >= 1) unless ``--skip-gallery``; with ``--torchreid`` also torchreid-style dense
k-reciprocal re-ranking in the rounds (``bench_gallery.torchreid_style_re_ranking``) and
``RATIO gallery_speedup_vs_torchreid_kreciprocal``.

``--msmt17`` first measures the gallery protocol's peak memory at MSMT17 size (11,659 x 82,161,
d = 2048, ``output="topk"``) in a child process, as ``bench_gallery.py --msmt17`` does (the same
function, ``bench_gallery.run_msmt17``), and prints ``RATIO gallery_msmt17_peak_rss_gib`` (target
< 16; ~10 min). ``--msmt17-size Q G`` runs that path at another size, for a smoke test.

    python benchmarks/bench_rerank.py --msmt17 --skip-kreciprocal --skip-gallery   # the memory line, then Market

``--index N`` then measures the inductive form's query latency in a persistent index of N
generated images (the issue's 200,000), as ``bench_index.py --gallery-protocol`` does (the same
function, ``bench_index.run_gallery_protocol``: one query at a time, interleaved with the paper
protocol's search), and prints ``RATIO index_gallery_latency_ms`` and
``RATIO index_gallery_speedup_vs_paper``. The index is written to a temporary folder (1.6 GB at
200,000 x 2048 in float32) and removed.

    python benchmarks/bench_rerank.py --msmt17 --index 200000 --torchreid   # every line of the gallery protocol
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as Fn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hrnet_pyg.config import HRNetConfig  # noqa: E402
from hrnet_pyg.evaluation import evaluate_rank  # noqa: E402
from hrnet_pyg.gallery import gallery_rerank, options_of  # noqa: E402
from hrnet_pyg.graphs import pair_mask  # noqa: E402
from hrnet_pyg.kreciprocal import k_reciprocal_rerank_features  # noqa: E402
from hrnet_pyg.model import HRNetModule as HRNet  # noqa: E402
from hrnet_pyg.protocol import RerankConfig  # noqa: E402
from hrnet_pyg.rerank import relational_rerank  # noqa: E402
from hrnet_pyg.runtime import resolve_device  # noqa: E402
from hrnet_pyg.scoring import fuse_scores, fusion_of, score_query_graphs  # noqa: E402

# The gallery protocol as users select it: rerank.protocol=gallery with its measured defaults.
GALLERY = options_of(RerankConfig(protocol="gallery"))


def make_features(num_q: int, num_g: int, d: int, num_ids: int, seed: int, with_ids: bool = False):
    """Non-negative features clustered by identity (GAP outputs are post-ReLU)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_ids, d, generator=gen)
    q_ids = torch.randint(0, num_ids, (num_q,), generator=gen)
    g_ids = torch.randint(0, num_ids, (num_g,), generator=gen)
    qf = (centres[q_ids] + 1.5 * torch.randn(num_q, d, generator=gen)).relu_()
    gf = (centres[g_ids] + 1.5 * torch.randn(num_g, d, generator=gen)).relu_()
    if with_ids:
        return qf, gf, q_ids, g_ids
    return qf, gf


@torch.no_grad()
def per_graph_scores(model: HRNet, graph: torch.Tensor) -> torch.Tensor:
    """The per-graph formulation (no per-image precomputation): every weight matrix is applied
    inside each query graph, the IR layer runs by message passing over the graphs' union; the two
    modules' terms fused as the model's test protocol says (``fuse_scores``)."""
    b, m, d = graph.shape
    cfg = model.config
    flat = graph.reshape(b * m, d)
    batch = torch.arange(b, device=graph.device).repeat_interleave(m)
    edge_index = model.individual_edges(flat, batch=batch, k=min(cfg.k, m - 1))
    v = model.ir(flat, edge_index, batch=batch).view(b, m, -1)

    def query_cosine(x: torch.Tensor) -> torch.Tensor:
        xn = Fn.normalize(x, dim=-1)
        return (xn[:, :1] * xn[:, 1:]).sum(-1)

    mask = pair_mask(graph, model.pr_edges_for(m)) if cfg.pr_edges else None
    u = model.pr.forward_dense(graph, v, mask=mask, rows=torch.zeros(1, dtype=torch.long, device=graph.device))
    logit = model.verifier(u)[:, 0, 1:]
    bn_v = model.ir_neck.bn(v.reshape(b * m, -1)).view(b, m, -1)
    parts = {"ir_cosine": query_cosine(v), "ir_bn_cosine": query_cosine(bn_v),
             "pr_logit": logit, "pr_prob": torch.sigmoid(logit)}
    return fuse_scores(parts, **fusion_of(model.rerank_config))


def useful_flops(num_q: int, num_g: int, d: int, shortlist: int, k_ir: int, head_channels: int = 0) -> dict[str, float]:
    """``head_channels``: d_h of the projected verification head's W_h (0: the diagonal head)."""
    m = min(shortlist, num_g) + 1
    flops = {
        "cosine shortlist": 2.0 * num_q * num_g * d,
        "per-image X W_s, F W_p": 2.0 * 2.0 * (num_q + num_g) * d * d,
        "kNN distance blocks": float(num_q) * m * (m - 1) * d,
        "IR aggregation (k edges)": 2.0 * num_q * m * min(k_ir, m - 1) * d,
        "PR aggregation G F W_p": 2.0 * num_q * (m - 1) * m * d,
        "V' W_r, v'_q W_l": 2.0 * num_q * m * d * d,
    }
    if head_channels:
        flops["verification head u' W_h"] = 2.0 * num_q * (m - 1) * d * head_channels
    return flops


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def ranking_agreement(a: torch.Tensor, b: torch.Tensor, shortlist: int) -> dict[str, float]:
    """How far two (Q, G) re-ranked distance matrices order the gallery alike."""
    oa, ob = a.argsort(dim=1, stable=True), b.argsort(dim=1, stable=True)
    short = oa[:, :shortlist]
    return {
        "rank1": float((oa[:, 0] == ob[:, 0]).double().mean()),
        "top10": float((oa[:, :10] == ob[:, :10]).all(dim=1).double().mean()),
        "max_diff": float((a.gather(1, short) - b.gather(1, short)).abs().max()),
    }


def run_index(n: int, d: int, threads: int | None) -> None:
    """``bench_index.py --gallery-protocol`` at ``n`` images of ``d`` dims, in a temporary folder."""
    from bench_index import run_gallery_protocol

    run_gallery_protocol(argparse.Namespace(dim=d, dtype="float32", chunk=50000, queries=40, threads=threads,
                                            workdir=None), n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=3368)
    ap.add_argument("--gallery", type=int, default=15913)
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--shortlist", "--top-k", type=int, default=120, help="re-ranking shortlist length (paper: 120)")
    ap.add_argument("--queries-per-pass", type=int, default=None,
                    help="(default: relational_rerank's own choice)")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default 1; quick: 3; GPU: 3)")
    ap.add_argument("--check-queries", type=int, default=16,
                    help="queries re-scored by the per-graph path for the check and its timing")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, auto")
    ap.add_argument("--tf32", default="off", choices=("off", "on", "both"),
                    help="TF32 matmuls on a GPU: off (default), on, or both (and their agreement)")
    ap.add_argument("--skip-kreciprocal", action="store_true", help="time the relational re-ranking only")
    ap.add_argument("--skip-gallery", action="store_true", help="leave out the gallery protocol (gallery_rerank)")
    ap.add_argument("--mm-size", type=int, default=4096, help="side of the reference torch.mm (default 4096)")
    ap.add_argument("--quick", action="store_true", help="300 queries x 1,500 gallery (CI size)")
    ap.add_argument("--msmt17", action="store_true",
                    help="first, the gallery protocol's peak memory at MSMT17 size in a child process (~10 min)")
    ap.add_argument("--msmt17-size", type=int, nargs=2, metavar=("Q", "G"), default=None,
                    help="queries and gallery images of the --msmt17 run (default: MSMT17's 11659 82161; "
                         "smaller for a smoke test)")
    ap.add_argument("--torchreid", action="store_true",
                    help="also torchreid-style dense k-reciprocal re-ranking in the interleaved rounds "
                         "(bench_gallery's re-implementation, CPU; ~10 GiB and ~1 min at Market size)")
    ap.add_argument("--index", type=int, default=0, metavar="N",
                    help="also the gallery protocol's query latency in an index of N images (200000: the "
                         "issue's size; bench_index.py --gallery-protocol's measurement)")
    ap.add_argument("--pr-head", choices=("projected", "diagonal"), default=None,
                    help="verification head (default: the config's, projected)")
    args = ap.parse_args()
    if args.msmt17_size is not None and not args.msmt17:
        ap.error("--msmt17-size is the size of the --msmt17 run; pass --msmt17 too")
    if args.index < 0:
        ap.error(f"--index: images in the index, at least 1, got {args.index}")
    if args.msmt17:  # first, while this process is small: a child's ru_maxrss starts at its parent's size
        from bench_gallery import MSMT17_SIZE, run_msmt17  # bench_gallery imports this module: not at the top
        run_msmt17(args.d, args.threads, tuple(args.msmt17_size or MSMT17_SIZE))
    if args.index:
        run_index(args.index, args.d, args.threads)
    if args.quick:
        args.queries, args.gallery = 300, 1500
    dev = resolve_device(args.device)
    cuda = dev.type == "cuda"
    repeats = args.repeats or (3 if args.quick or cuda else 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    if cuda and dev.index is not None:
        torch.cuda.set_device(dev)
    nq, ng, d, shortlist = args.queries, args.gallery, args.d, args.shortlist

    def set_tf32(on: bool) -> None:
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    set_tf32(args.tf32 == "on")
    torch.manual_seed(0)
    head_over = {"pr_head": args.pr_head} if args.pr_head else {}
    cfg = HRNetConfig.from_row("HRNet", backbone=None, feat_dim=d, pretrained=False, **head_over)
    model = HRNet(cfg, num_classes=751, rerank_config=RerankConfig(shortlist=shortlist)).eval()
    qf, gf, q_ids, g_ids = make_features(nq, ng, d, num_ids=751, seed=0, with_ids=True)
    load0 = os.getloadavg()
    where = f"{dev} ({torch.cuda.get_device_name(dev)})" if cuda else "CPU"
    print(f"relational re-ranking (HRNet: IR k={cfg.k} + PR + IGP, {cfg.pr_head} verification head), "
          f"{nq} queries x {ng} gallery, "
          f"d={d}, top-{shortlist}; k-reciprocal k1=20 k2=6 lambda=0.3; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {where}, {repeats} timed round(s), "
          f"TF32 matmuls {'on' if args.tf32 == 'on' else 'off'}")
    print(f"load average {load0[0]:.1f} / {load0[1]:.1f} / {load0[2]:.1f} on {os.cpu_count()} cores")

    sz = args.mm_size
    a = torch.randn(sz, sz, device=dev)
    b = torch.randn(sz, sz, device=dev)
    mm_flop = 2.0 * sz**3
    qf_dev, gf_dev = qf.to(dev), gf.to(dev)

    def run_mm():
        torch.mm(a, b)
        sync()

    def run_rel():
        return relational_rerank(model, qf_dev, gf_dev, queries_per_pass=args.queries_per_pass,
                                 device=dev, progress=False)

    def run_kr():
        out = k_reciprocal_rerank_features(qf_dev, gf_dev, k1=20, k2=6, lambda_value=0.3, progress=False)
        sync()
        return out

    def run_gal():
        return gallery_rerank(model, qf_dev, gf_dev, **GALLERY, output="distances", device=dev, progress=False)

    def run_tr():
        from bench_gallery import torchreid_style_from_features  # bench_gallery imports this module

        return torchreid_style_from_features(qf, gf)

    # Warm-up (small problems: allocator, MKL and OpenMP pools, CUDA kernels), then interleaved rounds.
    run_mm()
    relational_rerank(model, qf_dev[:64], gf_dev[:2000], device=dev, progress=False)
    if not args.skip_kreciprocal:
        k_reciprocal_rerank_features(qf_dev[:200], gf_dev[:800], progress=False)
    if not args.skip_gallery:
        gallery_rerank(model, qf_dev[:50], gf_dev[:400], **GALLERY, output="distances", device=dev, progress=False)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    times: dict[str, list[float]] = {"mm": [], "rel": [], "kr": [], "gal": [], "tr": []}
    fns: dict[str, Callable] = {"mm": run_mm, "rel": run_rel, "kr": run_kr, "gal": run_gal, "tr": run_tr}
    rss: dict[str, float] = {}
    order = ("mm", "rel") + (() if args.skip_kreciprocal else ("mm", "kr"))
    order += () if args.skip_gallery else ("mm", "gal")
    order += ("mm", "tr") if args.torchreid else ()
    rel_out = None
    for _ in range(repeats):
        for name in order:
            t0 = time.perf_counter()
            out = fns[name]()
            times[name].append(time.perf_counter() - t0)
            if name != "mm":
                rss[name] = maxrss_mib()
            if name == "rel":
                rel_out = out
            del out
    med = {k: statistics.median(v) for k, v in times.items() if v}
    gpu_peak = torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else None

    # Check: the per-image precomputed path against the per-graph path on a few queries.
    c = min(args.check_queries, nq)
    model = model.to(dev)
    ret = Fn.normalize(model.retrieval_features(torch.cat([qf_dev[:c], gf_dev])), dim=1)
    top = (ret[:c] @ ret[c:].T).topk(min(shortlist, ng), dim=1).indices
    graph = torch.cat([qf_dev[:c].unsqueeze(1), gf_dev[top]], dim=1)  # (c, M, d)
    with torch.no_grad():
        sync()
        t0 = time.perf_counter()
        ref = per_graph_scores(model, graph)
        sync()
        t_pg = time.perf_counter() - t0
        t0 = time.perf_counter()
        fast = score_query_graphs(model, graph)
        sync()
        t_fast_graphs = time.perf_counter() - t0
        dist = relational_rerank(model, qf_dev[:c], gf_dev, device=dev, progress=False)
    err = float((fast - ref).abs().max())
    # relational_rerank's shortlist distance is lowest score - score - 1 (rerank.py)
    ref_cpu = ref.cpu()
    err_rr = float((dist.gather(1, top.cpu()) + 1.0 + ref_cpu - ref_cpu.amin(dim=1, keepdim=True)).abs().max())
    tol = 1e-3 if args.tf32 == "on" else 1e-4
    ok = err <= tol and err_rr <= tol
    print(f"check on {c} queries: |fast - per-graph| max {err:.1e} (score_query_graphs), "
          f"{err_rr:.1e} (relational_rerank) -> {'MATCH' if ok else 'MISMATCH'} "
          f"(d={d}: float32 sums of 2048 products; the tests check 1e-5 at small d)")

    head = model.verifier
    flops = useful_flops(nq, ng, d, shortlist, cfg.k, head.hidden_channels if head.projection else 0)
    total = sum(flops.values())
    mm_rate = mm_flop / med["mm"]
    rel_rate = total / med["rel"]
    print(f"useful FLOPs of the relational re-ranking: {total / 1e12:.3f} TFLOP")
    for k, v in flops.items():
        print(f"  {k:>26}: {v / 1e9:9.1f} GFLOP ({100 * v / total:4.1f}%)")
    print(f"torch.mm {sz}^3 fp32: median {1e3 * med['mm']:.2f} ms -> {mm_rate / 1e9:.1f} GFLOP/s")
    print(f"relational re-ranking: median {med['rel']:.3f} s (range {min(times['rel']):.3f}-"
          f"{max(times['rel']):.3f}) end to end (features on {dev.type} -> (Q, G) distances on the CPU) "
          f"-> {rel_rate / 1e9:.1f} useful GFLOP/s; {1e3 * med['rel'] / nq:.3f} ms per query; "
          f"peak RSS {rss['rel']:.0f} MiB" + (f"; peak GPU memory {gpu_peak:.0f} MiB" if cuda else ""))
    if "kr" in med:
        print(f"k-reciprocal:          median {med['kr']:.3f} s (range {min(times['kr']):.3f}-"
              f"{max(times['kr']):.3f}); peak RSS so far {rss['kr']:.0f} MiB")
    if "gal" in med:
        print(f"gallery protocol:      median {med['gal']:.3f} s (range {min(times['gal']):.3f}-"
              f"{max(times['gal']):.3f}; k={GALLERY['k']}, one round); peak RSS so far {rss['gal']:.0f} MiB")
    if "tr" in med:
        print(f"torchreid-style dense k-reciprocal: median {med['tr']:.3f} s (range {min(times['tr']):.3f}-"
              f"{max(times['tr']):.3f}); peak RSS so far {rss['tr']:.0f} MiB")
    print(f"per-graph path on {c} query graphs: {t_pg:.3f} s vs score_query_graphs on the same "
          f"graphs {t_fast_graphs:.3f} s (image terms computed per graph node there too)")
    per_query_pg = t_pg / c
    print(f"per-graph path extrapolated to {nq} queries (+ the same shortlist): "
          f"{per_query_pg * nq:.1f} s")

    if args.tf32 == "both":
        set_tf32(True)
        run_rel()  # warm-up: TF32 kernels
        t_on: list[float] = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            on_out = run_rel()
            t_on.append(time.perf_counter() - t0)
        set_tf32(False)
        agree = ranking_agreement(rel_out, on_out, min(shortlist, ng))
        qc, gc = np.zeros(nq, dtype=np.int64), np.ones(ng, dtype=np.int64)  # no same-camera junk
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # queries without a match in a small gallery: the same for both
            m_off = evaluate_rank(rel_out, q_ids.numpy(), g_ids.numpy(), qc, gc).mAP
            m_on = evaluate_rank(on_out, q_ids.numpy(), g_ids.numpy(), qc, gc).mAP
        if not cuda:
            print("note: TF32 is a GPU mode; on the CPU both runs compute the same thing")
        print(f"TF32 on: relational re-ranking median {statistics.median(t_on):.3f} s (off: {med['rel']:.3f} s); "
              f"agreement with TF32 off: rank-1 {100 * agree['rank1']:.2f}% of queries, identical top-10 "
              f"{100 * agree['top10']:.2f}%, largest shortlist distance difference {agree['max_diff']:.2e}; "
              f"mAP {100 * m_off:.3f} (off) vs {100 * m_on:.3f} (on)")
        print(f"RATIO rerank_tf32_speedup={med['rel'] / statistics.median(t_on):.2f}")
    load1 = os.getloadavg()
    print(f"load average at the end {load1[0]:.1f} / {load1[1]:.1f} / {load1[2]:.1f}")
    if args.quick:
        print("note: --quick size; rerank_speedup_vs_kreciprocal is a Market-size target "
              "(k-reciprocal grows with (Q+G)^2, relational re-ranking with Q)")
    print(f"RATIO rerank_flop_efficiency={rel_rate / mm_rate:.2f}")
    if "kr" in med:
        print(f"RATIO rerank_speedup_vs_kreciprocal={med['kr'] / med['rel']:.2f}")
    print(f"RATIO rerank_speedup_vs_per_graph={per_query_pg * nq / med['rel']:.2f}")
    if "gal" in med:
        print(f"RATIO gallery_speedup_vs_paper={med['rel'] / med['gal']:.2f}")
        if "kr" in med:
            print(f"RATIO gallery_speedup_vs_kreciprocal={med['kr'] / med['gal']:.2f}")
        if "tr" in med:
            print(f"RATIO gallery_speedup_vs_torchreid_kreciprocal={med['tr'] / med['gal']:.2f}")
    if not ok:
        raise SystemExit("fast and per-graph re-ranking scores differ")


if __name__ == "__main__":
    main()
