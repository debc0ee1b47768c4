"""Peak memory of the relational re-ranking on an MSMT17-sized test set.

Generated features (11,659 queries x 82,161 gallery, d = 2048 by default) pass through
``relational_rerank`` with a randomly initialised HRNet (backbone-free: the graph modules and
BNNeck are what the re-ranking runs). Prints the peak resident memory (VmHWM of this process)
against the 16 GiB budget and the time. The k-reciprocal counterpart is
``bench_kreciprocal_memory.py``.

    python benchmarks/bench_rerank_memory.py            # MSMT17 size (about 2-4 minutes on 2 cores)
    python benchmarks/bench_rerank_memory.py --quick    # 1,000 x 8,000
"""
from __future__ import annotations

import argparse
import time

import torch


def vm_hwm_gib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=11659, help="number of queries (default: MSMT17's 11,659)")
    p.add_argument("--gallery", type=int, default=82161, help="gallery size (default: MSMT17's 82,161)")
    p.add_argument("--d", type=int, default=2048, help="feature dimension (default: 2048)")
    p.add_argument("--shortlist", "--top-k", type=int, default=120, help="shortlist length (default: the paper's 120)")
    p.add_argument("--quick", action="store_true", help="1,000 queries x 8,000 gallery")
    args = p.parse_args()
    if args.quick:
        args.queries, args.gallery = 1000, 8000

    from hrnet_pyg.config import HRNetConfig
    from hrnet_pyg.model import HRNetModule as HRNet
    from hrnet_pyg.protocol import RerankConfig
    from hrnet_pyg.rerank import relational_rerank

    torch.manual_seed(0)
    model = HRNet(HRNetConfig(backbone=None, feat_dim=args.d), num_classes=1041).eval()
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3060, args.d, generator=g)
    qf = (
        centres[torch.randint(0, 3060, (args.queries,), generator=g)] + torch.randn(args.queries, args.d, generator=g)
    ).relu_()
    gf = (
        centres[torch.randint(0, 3060, (args.gallery,), generator=g)] + torch.randn(args.gallery, args.d, generator=g)
    ).relu_()
    base = vm_hwm_gib()
    out_gib = args.queries * args.gallery * 4 / 2**30
    inputs_gib = (args.queries + args.gallery) * args.d * 4 / 2**30
    t0 = time.perf_counter()
    dist = relational_rerank(model, qf, gf, RerankConfig(shortlist=args.shortlist), progress=True)
    seconds = time.perf_counter() - t0
    peak = vm_hwm_gib()
    assert dist.shape == (args.queries, args.gallery)
    print(f"queries={args.queries} gallery={args.gallery} d={args.d} shortlist={args.shortlist}")
    print(f"features in memory: {inputs_gib:.2f} GiB; output distance matrix: {out_gib:.2f} GiB")
    print(f"peak RSS before re-ranking: {base:.2f} GiB; peak RSS of the whole run: {peak:.2f} GiB (budget 16 GiB)")
    print(f"time: {seconds:.1f} s")
    print(f"RATIO rerank_peak_mem_over_16GiB={peak / 16:.3f}")


if __name__ == "__main__":
    main()
