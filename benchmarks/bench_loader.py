"""The training data loader alone: images/s from JPEG files to (pinned) batches on the device.

The model's side of a training step is measured by ``bench_train_step.py`` on a batch that already
lives on the device; this script measures the other side, the one the training loop waits for when
the model is faster: decoding generated Market-1501-format JPEGs (``hrnet_pyg.data.synthetic``,
256 x 128 by default), the training transform (resize, flip, pad + crop, normalise), P x K batches
from :class:`~hrnet_pyg.data.PKSampler` (11 x 6 = 66), ``num_workers`` worker processes with
persistent workers, ``pin_memory`` on a GPU, and the ``non_blocking`` copy to the device that
``engine.fit`` does, exactly as ``experiment.build_loaders`` builds the loader.

Timing starts once every worker has delivered its first batch (worker start-up excluded) and
runs over ``--batches`` batches (epochs of the sampler follow each other as in training).

    python benchmarks/bench_loader.py --device cuda --workers 16
    python benchmarks/bench_loader.py --device cpu --workers 2 --ids 40 --size 128 64 --batches 10

Prints ``loader: <images/s> images/s`` (a plain number: there is no side-by-side reference).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hrnet_pyg.data import ImageDataset, PKSampler, build_dataset, build_transforms  # noqa: E402
from hrnet_pyg.runtime import resolve_device  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    ap.add_argument("--workers", type=int, default=16, help="DataLoader worker processes (default 16)")
    ap.add_argument("--ids", type=int, default=100, help="training identities generated (default 100)")
    ap.add_argument("--imgs-per-id", type=int, default=12, help="images per identity (default 12)")
    ap.add_argument("--size", type=int, nargs=2, default=(256, 128), metavar=("H", "W"),
                    help="JPEG and transform size (default 256 128)")
    ap.add_argument("--batch", type=int, nargs=2, default=(11, 6), metavar=("P", "K"))
    ap.add_argument("--batches", type=int, default=60, help="timed batches (default 60)")
    ap.add_argument("--root", default=None, help="where the JPEGs go (default: a temporary folder)")
    args = ap.parse_args()
    dev = resolve_device(args.device)
    h, w = args.size
    p, k = args.batch

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else Path(tmp)
        t0 = time.perf_counter()
        ds = build_dataset("synthetic", root, num_train_ids=args.ids, num_test_ids=2, num_cams=6,
                           imgs_per_id=args.imgs_per_id, queries_per_id=1, num_distractors=0,
                           num_junk=0, height=h, width=w, progress=False)
        t_gen = time.perf_counter() - t0
        sampler = PKSampler([r.pid for r in ds.train], P=p, K=k, seed=0)
        pin = dev.type == "cuda"
        loader = DataLoader(
            ImageDataset(ds.train, build_transforms(h, w, is_train=True)), batch_sampler=sampler,
            num_workers=args.workers, pin_memory=pin, persistent_workers=args.workers > 0,
        )
        print(f"{len(ds.train)} generated {h} x {w} JPEGs ({args.ids} identities) in {t_gen:.1f} s; "
              f"P x K = {p} x {k}, {len(sampler)} batches per epoch; {args.workers} workers, "
              f"pin_memory={pin}, device {dev}; {os.cpu_count()} cores, load average "
              f"{os.getloadavg()[0]:.1f}")

        def batches(loader):
            epoch = 0
            while True:
                sampler.set_epoch(epoch)
                yield from loader
                epoch += 1

        it = batches(loader)
        t0 = time.perf_counter()
        for _ in range(max(1, args.workers)):  # every worker's first batch: start-up excluded
            images = next(it)[0].to(dev, non_blocking=True)
        t_start = time.perf_counter() - t0
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        n = 0
        t0 = time.perf_counter()
        for _ in range(args.batches):
            images = next(it)[0].to(dev, non_blocking=True)
            n += images.size(0)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        elapsed = time.perf_counter() - t0
        print(f"start-up (first {max(1, args.workers)} batches): {t_start:.1f} s")
        print(f"loader: {n / elapsed:.0f} images/s ({args.batches} batches of {p * k} in {elapsed:.2f} s, "
              f"{args.workers} workers)")
        del it, loader  # stop the persistent workers before the folder goes


if __name__ == "__main__":
    main()
