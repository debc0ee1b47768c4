"""Benchmark: memory and time of k-reciprocal re-ranking from features on an MSMT17-sized test set.

Generates clustered random features shaped like MSMT17's test set (11,659 queries, 82,161
gallery images, d = 2048; float32) and runs ``k_reciprocal_rerank_features`` (k1=20, k2=6,
lambda=0.3).  The dense reference algorithm would hold several (Q+G)^2 = 93,820^2 matrices
(35 GB each in float32); this one keeps the (Q, G) output (3.8 GB) plus sparse parts.

Prints the peak resident memory of the process (``resource.getrusage``), the part of it that
the features account for, and the wall time.  ``--quick`` runs a small problem in seconds;
``--num-query`` / ``--num-gallery`` / ``--dim`` pick any other size.
"""
from __future__ import annotations

import argparse
import resource
import time

import torch

from hrnet_pyg.kreciprocal import k_reciprocal_rerank_features

GIB = 1024**3


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def make_features(num: int, dim: int, num_ids: int, gen: torch.Generator) -> torch.Tensor:
    """Clustered features (identity centre + noise), generated in slices to bound memory."""
    centres = torch.randn(num_ids, dim, generator=gen)
    out = torch.empty(num, dim)
    for s in range(0, num, 8192):
        e = min(s + 8192, num)
        ids = torch.randint(0, num_ids, (e - s,), generator=gen)
        out[s:e] = centres[ids] + 1.2 * torch.randn(e - s, dim, generator=gen)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="small problem (1,000 x 6,000, d=256)")
    add("--num-query", type=int, default=11659, help="queries (default: MSMT17's 11,659)")
    add("--num-gallery", type=int, default=82161, help="gallery images (default: 82,161)")
    add("--dim", type=int, default=2048, help="feature dimension (default: 2048)")
    add("--chunk-size", type=int, default=4096, help="block side of the pass (default: 4096)")
    add("--limit-gib", type=float, default=16.0, help="memory budget (default: 16 GiB)")
    add("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-progress", action="store_true", help="hide the tqdm bars")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.num_query, args.num_gallery, args.dim = 1000, 6000, 256

    gen = torch.Generator().manual_seed(0)
    num_ids = max(2, (args.num_query + args.num_gallery) // 25)
    rss0 = peak_rss_bytes()
    qf = make_features(args.num_query, args.dim, num_ids, gen)
    gf = make_features(args.num_gallery, args.dim, num_ids, gen)
    rss_feats = peak_rss_bytes()
    n = args.num_query + args.num_gallery
    out_gib = 4 * args.num_query * args.num_gallery / GIB
    print(
        f"problem: {args.num_query} queries x {args.num_gallery} gallery, d={args.dim}; "
        f"torch threads {torch.get_num_threads()}; a dense (Q+G)^2 float32 matrix would be "
        f"{4 * n * n / GIB:.1f} GiB, the (Q, G) output is {out_gib:.2f} GiB"
    )

    t0 = time.perf_counter()
    out = k_reciprocal_rerank_features(
        qf, gf, k1=20, k2=6, lambda_value=0.3, chunk_size=args.chunk_size,
        progress=not args.no_progress,
    )
    elapsed = time.perf_counter() - t0
    peak = peak_rss_bytes()
    assert out.shape == (args.num_query, args.num_gallery)
    assert torch.isfinite(out[:: max(1, args.num_query // 100)]).all()
    print(f"RESULT kreciprocal_seconds={elapsed:.1f}")
    print(f"RESULT peak_rss_gib={peak / GIB:.2f}")
    print(f"RESULT features_rss_gib={(rss_feats - rss0) / GIB:.2f}")
    ok = "yes" if peak / GIB <= args.limit_gib else "NO"
    print(f"RESULT within_limit={ok} (limit {args.limit_gib:g} GiB)")


if __name__ == "__main__":
    main()
