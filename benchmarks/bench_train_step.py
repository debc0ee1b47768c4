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

Peak memory. On the CPU each model runs its steps in a fresh subprocess, started before this
process allocates anything large: the subprocess's resident-set high-water mark (``VmHWM`` of
``/proc/self/status``: the interpreter, torch, weights, optimiser state and activations; not
``ru_maxrss``, which Linux carries over from the parent across fork + exec). On a GPU in this
process (a subprocess would compile a second time under ``--compile``): each model is built and
warmed up alone, and its peak is ``torch.cuda.max_memory_allocated`` minus what was allocated
before it was built (the input batch, the other model): weights, gradients, Adam state and
activations.

GPU options: ``--device cuda[:N]``, ``--amp bf16|fp16|off`` (default ``auto``: bf16, or fp16
where bf16 is unsupported, on a GPU; fp32 on the CPU; ``--amp bf16`` also on the CPU),
``--channels-last`` (NHWC model and inputs), ``--compile`` (``torch.compile`` of both models; the
step's timing starts after two compiled warm-up steps; ``--compile-backend eager`` traces without
code generation, for a dry run on a CPU), ``--tf32`` (TF32 matmuls; convolutions follow cuDNN's
own default, TF32 on). The input batch is created on the device once: the loader is not
measured (``benchmarks/bench_loader.py`` measures it).

The default image size is the paper's 256 x 128. ``--quick`` (the CI-sized run) uses 128 x 64:
the backbone then costs a quarter, the graph modules the same, so its overhead ratio is
pessimistic (up to 4x the graph modules' share), and its peak-memory ratio too (the CNN's
activations shrink 4x, the graph modules' weights and Adam state do not).

    python benchmarks/bench_train_step.py            # 256 x 128, 4 timed steps each, ~3 min quiet
    python benchmarks/bench_train_step.py --quick    # 128 x 64, 3 timed steps each, ~1 min quiet
    python benchmarks/bench_train_step.py --device cuda --amp bf16 --channels-last [--compile]

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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hrnet_pyg.config import HRNetConfig  # noqa: E402
from hrnet_pyg.model import HRNetModule as HRNet  # noqa: E402
from hrnet_pyg.runtime import resolve_device  # noqa: E402

NUM_CLASSES = 751  # Market-1501 training identities


class Options:
    """What every step of a run shares (also passed to the memory subprocesses)."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.device = device
        self.backbone: str = args.backbone
        self.p, self.k = args.batch
        self.channels_last: bool = args.channels_last
        self.compile: str | None = args.compile_backend if args.compile else None
        amp = args.amp
        if amp == "auto":
            amp = "off" if device.type != "cuda" else (
                "bf16" if torch.cuda.is_bf16_supported() else "fp16")
        self.amp: str = amp

    def autocast(self):
        if self.amp == "off":
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)


def feature_dim(backbone: str) -> int:
    return 512 if backbone in ("resnet18", "resnet34") else 2048


def build(row: str, opts: Options, backbone: str | None = "default") -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The model (compiled with ``--compile``) and its Adam; ``backbone=None``: graph modules only."""
    torch.manual_seed(0)
    bb = opts.backbone if backbone == "default" else backbone
    cfg = HRNetConfig.from_row(row, backbone=bb, pretrained=False, feat_dim=feature_dim(opts.backbone))
    model = HRNet(cfg, num_classes=NUM_CLASSES).to(opts.device).train()
    if opts.channels_last and bb is not None:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                           lr=cfg.lr, weight_decay=cfg.weight_decay)
    if opts.compile and bb is not None:
        model = torch.compile(model, backend=opts.compile)
    return model, opt


def make_batch(h: int, w: int, opts: Options):
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(opts.p * opts.k, 3, h, w, generator=gen).to(opts.device)
    if opts.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    pids = torch.arange(opts.p).repeat_interleave(opts.k).to(opts.device)
    return images, pids


def step(model: torch.nn.Module, opt: torch.optim.Optimizer, inputs: torch.Tensor, pids: torch.Tensor,
         opts: Options) -> float:
    """One optimisation step; returns its wall time (synchronised on a GPU)."""
    device = opts.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with opts.autocast():
        out = model(inputs, pids)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()  # fp16 loss scaling is irrelevant to the cost; bf16 needs none
    opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def rss_high_water_mib() -> tuple[float, str]:
    """This process's own resident-set high-water mark (Linux ``VmHWM``), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0, "VmHWM"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "ru_maxrss"


def measure_memory(row: str, h: int, w: int, steps: int, opts: Options) -> dict[str, float]:
    """Child process (CPU): peak memory of ``steps`` optimisation steps of one model."""
    model, opt = build(row, opts)
    inputs, pids = make_batch(h, w, opts)
    for _ in range(steps):
        step(model, opt, inputs, pids, opts)
    peak, what = rss_high_water_mib()
    return {"peak_mib": peak, "what": what}


def peak_in_subprocess(row: str, h: int, w: int, steps: int, argv: list[str]) -> dict[str, float]:
    cmd = [sys.executable, __file__, *argv, "--child-memory", row, "--image-size", str(h), str(w),
           "--memory-steps", str(steps)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"memory subprocess for {row} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _child_argv(args: argparse.Namespace) -> list[str]:
    """The options a memory subprocess must share with this run."""
    argv = ["--device", args.device, "--amp", args.amp, "--backbone", args.backbone,
            "--batch", str(args.batch[0]), str(args.batch[1])]
    if args.channels_last:
        argv.append("--channels-last")
    if args.threads:
        argv += ["--threads", str(args.threads)]
    return argv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                    help="default: 256 128 (the paper's); --quick: 128 64")
    ap.add_argument("--repeats", type=int, default=None, help="timed steps per model (default 4; quick: 3)")
    ap.add_argument("--memory-steps", type=int, default=2, help="steps per memory measurement")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    ap.add_argument("--amp", default="auto", choices=("auto", "off", "bf16", "fp16"),
                    help="autocast dtype (auto: bf16/fp16 on a GPU, off on the CPU)")
    ap.add_argument("--channels-last", action="store_true", help="NHWC model weights and inputs")
    ap.add_argument("--compile", action="store_true", help="torch.compile both models")
    ap.add_argument("--compile-backend", default="inductor",
                    help="torch.compile backend (default inductor; eager: tracing only, for dry runs)")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on a GPU")
    ap.add_argument("--backbone", default="resnet50", help="default resnet50 (the paper's)")
    ap.add_argument("--batch", type=int, nargs=2, default=(11, 6), metavar=("P", "K"),
                    help="identities x images per identity (default 11 6 = 66, the paper's)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--quick", action="store_true", help="CI size: 128 x 64, 3 timed steps per model")
    ap.add_argument("--child-memory", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda":
        if device.index is not None:
            torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
    opts = Options(args, device)
    h, w = args.image_size or ((128, 64) if args.quick else (256, 128))
    if args.child_memory:
        print(json.dumps(measure_memory(args.child_memory, h, w, args.memory_steps, opts)))
        return
    repeats = args.repeats or (3 if args.quick else 4)
    n = opts.p * opts.k

    load = os.getloadavg()
    prec = {"off": "fp32", "bf16": "autocast bf16", "fp16": "autocast fp16"}[opts.amp]
    where = device.type if device.type != "cuda" else f"{device} ({torch.cuda.get_device_name(device)})"
    print(f"one optimisation step, batch {n} ({opts.p} x {opts.k}), {h} x {w} images, {opts.backbone} "
          f"last stride 1 (pretrained=False), Adam, {prec}, "
          f"{'channels_last' if opts.channels_last else 'NCHW'}, "
          f"{'torch.compile backend=' + opts.compile if opts.compile else 'eager (no torch.compile)'}"
          f"{', TF32 matmuls' if args.tf32 and device.type == 'cuda' else ''}; {where}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} cores")
    if (h, w) != (256, 128):
        print(f"note: {h} x {w} instead of the paper's 256 x 128: the backbone costs "
              f"{h * w / (256 * 128):.2f}x of its paper-size cost, the graph modules the same, so the "
              f"overhead ratio below is pessimistic")

    rows = ("CNN", "HRNet")
    warmup = 2 if opts.compile else 1  # a compiled model may recompile at its second call
    times: dict[str, list[float]] = {row: [] for row in rows}
    if device.type == "cuda":
        inputs, pids = make_batch(h, w, opts)
        models, mem = {}, {}
        for row in rows:  # each model built and warmed up alone: its own peak
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            models[row] = build(row, opts)
            for _ in range(max(warmup, args.memory_steps)):
                step(*models[row], inputs, pids, opts)
            print(f"{row:>6}: built and warmed up in {time.perf_counter() - t0:.1f} s")
            mem[row] = {"peak_mib": (torch.cuda.max_memory_allocated(device) - base) / 2**20,
                        "what": "cuda max_memory_allocated above the memory in use before the model was built"}
    else:
        # Memory first, in fresh subprocesses, while this process is still small.
        mem = {row: peak_in_subprocess(row, h, w, args.memory_steps, _child_argv(args)) for row in rows}
        models = {row: build(row, opts) for row in rows}
        inputs, pids = make_batch(h, w, opts)
        for model, opt in models.values():
            for _ in range(warmup):
                step(model, opt, inputs, pids, opts)
    for _ in range(repeats):
        for row, (model, opt) in models.items():
            times[row].append(step(model, opt, inputs, pids, opts))
    med = {row: statistics.median(t) for row, t in times.items()}
    del models

    # The graph modules alone: HRNet's step on the backbone's output shape (no backbone, eager).
    head, head_opt = build("HRNet", opts, backbone=None)
    base, base_opt = build("CNN", opts, backbone=None)
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(n, feature_dim(opts.backbone), generator=gen).relu_().to(device)
    head_t: dict[str, list[float]] = {"HRNet": [], "CNN": []}
    for i in range(repeats + 1):
        for row, (m, o) in (("CNN", (base, base_opt)), ("HRNet", (head, head_opt))):
            t = step(m, o, feats, pids, opts)
            if i:
                head_t[row].append(t)
    graph_s = statistics.median(head_t["HRNet"]) - statistics.median(head_t["CNN"])

    imgs = {row: n / med[row] for row in med}
    for row in rows:
        t = times[row]
        print(f"{row:>6}: step median {1e3 * med[row]:.1f} ms (range {1e3 * min(t):.1f}-{1e3 * max(t):.1f}, "
              f"{len(t)} steps), {imgs[row]:.1f} images/s; peak memory {mem[row]['peak_mib']:.0f} MiB "
              f"({mem[row]['what']})")
    print(f"graph modules + their losses alone (HRNet minus CNN head on {n} x {feats.size(1)} features, "
          f"eager): {1e3 * graph_s:.1f} ms per step = {100 * graph_s / med['CNN']:.1f}% of the CNN step")
    if device.type == "cuda":
        epoch_s = 12936 / imgs["HRNet"]
        print(f"at {imgs['HRNet']:.0f} images/s the paper's 200 Market-1501 epochs (12,936 images each) "
              f"take {200 * epoch_s / 60:.1f} min of model time")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    print(f"RATIO train_step_overhead={med['HRNet'] / med['CNN']:.3f}")
    print(f"RATIO train_peak_mem={mem['HRNet']['peak_mib'] / mem['CNN']['peak_mib']:.3f}")


if __name__ == "__main__":
    main()
