"""One optimisation step of the full HRNet vs the CNN baseline: time and peak memory.

Both models share the backbone (ResNet-50, last stride 1, ``pretrained=False``: the weights do not
change the cost), the batch (P x K = 11 x 6 = 66 images, the paper's), the precision (fp32 on the
CPU; bf16/fp16 autocast on a GPU), the optimiser (Adam, lr 3.5e-4, weight decay 5e-4, Sec. 4.2) and
the step: ``model(images, pids).loss.backward(); optimizer.step()``. The full HRNet adds the IR
layer + CNC, the PR layer + IGP + verification head and their losses (Eq. 14); the CNN baseline
is the Table 1 "CNN" row (BNNeck, L_cl + L_tr).

Timing: both models live in one process; after one warm-up step each, steps alternate
(CNN, HRNet, CNN, ...) so that load on a shared machine hits both alike; medians are reported.
Also timed: the graph modules alone (the same HRNet step on pre-extracted features,
``backbone=None``), the part that the overhead ratio measures.

Peak memory: each model runs its steps in a fresh subprocess, started before this process
allocates anything large. On the CPU: the subprocess's resident-set high-water mark (``VmHWM`` of
``/proc/self/status``: the interpreter, torch, weights, optimiser state and activations; not
``ru_maxrss``, which Linux carries over from the parent across fork + exec); on a GPU:
``torch.cuda.max_memory_allocated``.

The default image size is the paper's 256 x 128. ``--quick`` (the CI-sized run) uses 128 x 64:
the backbone then costs a quarter, the graph modules the same, so its overhead ratio is
pessimistic (up to 4x the graph modules' share), and its peak-memory ratio too (the CNN's
activations shrink 4x, the graph modules' weights and Adam state do not).

    python benchmarks/bench_train_step.py            # 256 x 128, 4 timed steps each, ~3 min quiet
    python benchmarks/bench_train_step.py --quick    # 128 x 64, 3 timed steps each, ~1 min quiet

Prints ``RATIO train_step_overhead=<HRNet step / CNN step>`` (target <= 1.05) and
``RATIO train_peak_mem=<HRNet peak / CNN peak>`` (target <= 1.2).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hrnet_pyg.config import HRNetConfig  # noqa: E402
from hrnet_pyg.model import HRNet  # noqa: E402

NUM_CLASSES = 751  # Market-1501 training identities


def build(row: str, device: torch.device,
          backbone: Optional[str] = "resnet50") -> Tuple[HRNet, torch.optim.Optimizer]:
    torch.manual_seed(0)
    cfg = HRNetConfig.from_row(row, backbone=backbone, pretrained=False)
    model = HRNet(cfg, num_classes=NUM_CLASSES).to(device).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                           lr=cfg.lr, weight_decay=cfg.weight_decay)
    return model, opt


def make_batch(h: int, w: int, device: torch.device, p: int = 11, k: int = 6):
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(p * k, 3, h, w, generator=gen).to(device)
    pids = torch.arange(p).repeat_interleave(k).to(device)
    return images, pids


def autocast(device: torch.device):
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def step(model: HRNet, opt: torch.optim.Optimizer, inputs: torch.Tensor, pids: torch.Tensor,
         device: torch.device) -> float:
    """One optimisation step; returns its wall time (synchronised on a GPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with autocast(device):
        out = model(inputs, pids)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()  # fp16 loss scaling is irrelevant to the cost; bf16 needs none
    opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def rss_high_water_mib() -> Tuple[float, str]:
    """This process's own resident-set high-water mark (Linux ``VmHWM``), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0, "VmHWM"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "ru_maxrss"


def measure_memory(row: str, h: int, w: int, steps: int, device: torch.device) -> Dict[str, float]:
    """Child process: peak memory of ``steps`` optimisation steps of one model."""
    model, opt = build(row, device)
    inputs, pids = make_batch(h, w, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(steps):
        step(model, opt, inputs, pids, device)
    if device.type == "cuda":
        return {"peak_mib": torch.cuda.max_memory_allocated(device) / 2**20,
                "what": "cuda max_memory_allocated"}
    peak, what = rss_high_water_mib()
    return {"peak_mib": peak, "what": what}


def peak_in_subprocess(row: str, h: int, w: int, steps: int, device: str) -> Dict[str, float]:
    cmd = [sys.executable, __file__, "--child-memory", row, "--image-size", str(h), str(w),
           "--memory-steps", str(steps), "--device", device]
    if torch.get_num_threads() and "--threads" in sys.argv:
        cmd += ["--threads", str(torch.get_num_threads())]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"memory subprocess for {row} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                    help="default: 256 128 (the paper's); --quick: 128 64")
    ap.add_argument("--repeats", type=int, default=None, help="timed steps per model (default 4; quick: 3)")
    ap.add_argument("--memory-steps", type=int, default=2, help="steps per memory subprocess")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--quick", action="store_true", help="CI size: 128 x 64, 3 timed steps per model")
    ap.add_argument("--child-memory", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    h, w = args.image_size or ((128, 64) if args.quick else (256, 128))
    if args.child_memory:
        print(json.dumps(measure_memory(args.child_memory, h, w, args.memory_steps, device)))
        return
    repeats = args.repeats or (3 if args.quick else 4)

    load = os.getloadavg()
    prec = "autocast bf16/fp16" if device.type == "cuda" else "fp32"
    print(f"one optimisation step, batch 66 (11 x 6), {h} x {w} images, ResNet-50 last stride 1 "
          f"(pretrained=False), Adam, {prec}; {device.type}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} cores")
    if (h, w) != (256, 128):
        print(f"note: {h} x {w} instead of the paper's 256 x 128: the backbone costs "
              f"{h * w / (256 * 128):.2f}x of its paper-size cost, the graph modules the same, so the "
              f"overhead ratio below is pessimistic")

    # Memory first, in fresh subprocesses, while this process is still small.
    mem = {row: peak_in_subprocess(row, h, w, args.memory_steps, device.type) for row in ("CNN", "HRNet")}

    models = {row: build(row, device) for row in ("CNN", "HRNet")}
    inputs, pids = make_batch(h, w, device)
    times: Dict[str, List[float]] = {"CNN": [], "HRNet": []}
    for row, (model, opt) in models.items():  # warm-up
        step(model, opt, inputs, pids, device)
    for _ in range(repeats):
        for row, (model, opt) in models.items():
            times[row].append(step(model, opt, inputs, pids, device))
    med = {row: statistics.median(t) for row, t in times.items()}
    del models

    # The graph modules alone: HRNet's step on the backbone's output shape (no backbone).
    head, head_opt = build("HRNet", device, backbone=None)
    base, base_opt = build("CNN", device, backbone=None)
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(66, 2048, generator=gen).relu_().to(device)
    head_t: Dict[str, List[float]] = {"HRNet": [], "CNN": []}
    for i in range(repeats + 1):
        for row, (m, o) in (("CNN", (base, base_opt)), ("HRNet", (head, head_opt))):
            t = step(m, o, feats, pids, device)
            if i:
                head_t[row].append(t)
    graph_s = statistics.median(head_t["HRNet"]) - statistics.median(head_t["CNN"])

    imgs = {row: 66 / med[row] for row in med}
    for row in ("CNN", "HRNet"):
        t = times[row]
        print(f"{row:>6}: step median {med[row]:.3f} s (range {min(t):.3f}-{max(t):.3f}, {len(t)} steps), "
              f"{imgs[row]:.1f} images/s; peak memory {mem[row]['peak_mib']:.0f} MiB ({mem[row]['what']})")
    print(f"graph modules + their losses alone (HRNet minus CNN head on 66 x 2048 features): "
          f"{1e3 * graph_s:.1f} ms per step = {100 * graph_s / med['CNN']:.1f}% of the CNN step")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    print(f"RATIO train_step_overhead={med['HRNet'] / med['CNN']:.3f}")
    print(f"RATIO train_peak_mem={mem['HRNet']['peak_mib'] / mem['CNN']['peak_mib']:.3f}")


if __name__ == "__main__":
    main()
