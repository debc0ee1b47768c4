"""Side-by-side check that a refactor left the numbers alone: this checkout against an old one.

For every row of Table 1 (``config.TABLE1_ROWS``), with the defaults and with ``PAPER_LITERAL``
(its test protocol included), plus a Fig. 4 masked-pair-graph case, one case of another test
protocol and one small image-backbone case (resnet18 at 32 x 16), the
old package builds a model with a fixed seed (weights perturbed away from their init, BatchNorm
statistics randomised, so that nothing sits at a symmetric start) and records, on fixed inputs:

* the training forward: every loss term of Eq. 14 and L_total, V' (``ir_feats``), U' (the input of
  the verification head, caught by a forward hook), t_hat and the pair logits;
* the backward of L_total: the gradient of every parameter and of the input features;
* test time: the fast path's similarity terms of a batch of query graphs, and the distances and
  scores of ``relational_rerank`` (two shortlist lengths, so that both of the dense PR path's
  branches run: M < d and M >= d). A package whose test protocol is a ``RerankConfig``
  (``hrnet_pyg.protocol``) gets the case's protocol passed to ``relational_rerank`` while its
  model carries the default one; an older package reads it from the model's config fields
  (``rerank_*``), the names the cases use.

The new package then loads the old weights (through its checkpoint-layout remap) and records the
same on the same inputs. One line per case gives the largest absolute difference of each quantity
("0" where bit-identical); the exit status is 1 when any difference exceeds ``--atol`` (1e-6).

    git archive <old commit> | tar -x -C /tmp/old_main     # an old checkout, e.g. 3a97ed0
    python benchmarks/check_refactor_equivalence.py /tmp/old_main

Each package runs in its own subprocess (``PYTHONPATH`` = its checkout) with one thread, so both
see the same kernels; neither import touches the other's modules.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
D = 32  # feature width of the feature-level models: shortlists of 9 (< d) and 41 (>= d) nodes
N_IDS, N_INST = 4, 3  # the P x K training batch
HEAD_MODULES = ("ir", "ir_neck", "pr", "verifier")


# ---------------------------------------------------------------------------- the cases
def cases() -> list[tuple[str, str, dict[str, Any]]]:
    """(name, Table 1 row, config overrides) of every case; the config module is imported by the
    worker of either package (the rows and PAPER_LITERAL are read from the old one). The test
    protocol's fields go by their former config names (``rerank_*``)."""
    from hrnet_pyg.config import PAPER_LITERAL, TABLE1_ROWS

    literal = dict(PAPER_LITERAL)
    protocol = _protocol_module()
    if protocol is not None:  # the paper-literal test protocol, under the config's former names
        from hrnet_pyg.config import LEGACY_RERANK_FIELDS

        paper = protocol.RerankConfig.paper_literal()
        literal.update({old: getattr(paper, new) for old, new in LEGACY_RERANK_FIELDS.items() if old != "top_k_rerank"})
    out = []
    for setting, over in (("defaults", {}), ("paper-literal", literal)):
        for row in TABLE1_ROWS:
            out.append((f"{row} {setting}", row, over))
    out.append(("HRNet defaults pr_edges=4", "HRNet", {"pr_edges": 4}))
    out.append(("HRNet rank-normalised logit, weight 0.5", "HRNet",
                {"rerank_norm": "rank", "rerank_pr_score": "pr_logit", "rerank_pr_weight": 0.5}))
    out.append(("HRNet defaults resnet18 32x16", "HRNet",
                {"backbone": "resnet18", "feat_dim": 512, "image_size": (32, 16)}))
    return out


def _protocol_module() -> Any:
    """``hrnet_pyg.protocol`` where the test protocol is a RerankConfig, else None."""
    try:
        import hrnet_pyg.protocol as protocol
    except ImportError:
        return None
    return protocol


def new_name(name: str) -> str:
    """A parameter name in the new layout (the relation head's modules under ``head.``)."""
    return f"head.{name}" if name.split(".", 1)[0] in HEAD_MODULES else name


# ---------------------------------------------------------------------------- one package's run
def build(row: str, over: dict[str, Any], state: dict[str, torch.Tensor] | None, seed: int):
    """The case's model, and its test protocol where that is a RerankConfig (else None: the
    model's config holds it)."""
    import hrnet_pyg.model as model_mod
    from hrnet_pyg.config import HRNetConfig

    cls = getattr(model_mod, "HRNetModule", None) or model_mod.HRNet
    base = dict(backbone=None, feat_dim=D, k=3, num_identities=N_IDS, num_instances=N_INST, pretrained=False)
    over, rerank = dict(over), None
    protocol = _protocol_module()
    if protocol is not None:
        from hrnet_pyg.config import LEGACY_RERANK_FIELDS

        rerank = protocol.RerankConfig(**{LEGACY_RERANK_FIELDS[k]: over.pop(k) for k in list(over)
                                          if k in LEGACY_RERANK_FIELDS})
    torch.manual_seed(seed)
    model = cls(HRNetConfig.from_row(row, **{**base, **over}), num_classes=6)
    if state is not None:
        model.load_state_dict(state)  # the old layout: the new package remaps it
        return model, rerank
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # away from the init's symmetric start (the head's "distance" init)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)):
            bn.running_mean.normal_(0.0, 0.3, generator=g)
            bn.running_var.uniform_(0.5, 2.0, generator=g)
    return model, rerank


def inputs(over: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 2)
    n = N_IDS * N_INST
    pids = torch.arange(N_IDS).repeat_interleave(N_INST)
    if over.get("backbone"):
        h, w = over["image_size"]
        return {"x": torch.randn(n, 3, h, w, generator=g), "pids": pids,
                "gallery_images": torch.randn(60, 3, h, w, generator=g)}
    centres = torch.randn(N_IDS, D, generator=g)
    return {"x": (centres[pids] + torch.randn(n, D, generator=g)).relu(), "pids": pids,
            "query": torch.randn(6, D, generator=g).relu(), "gallery": torch.randn(60, D, generator=g).relu()}


def test_time(model, data: dict[str, torch.Tensor], rerank: Any = None) -> dict[str, Any]:
    """Similarity terms of query graphs and relational_rerank's distances, in eval mode; ``rerank``:
    the test protocol to pass (None: the model's config holds it)."""
    from hrnet_pyg.rerank import relational_rerank

    model.eval()
    with torch.no_grad():
        if "gallery_images" in data:
            feats = model(torch.cat([data["x"], data["gallery_images"]])).feats
            qf, gf = feats[:6], feats[data["x"].size(0):]
        else:
            qf, gf = data["query"], data["gallery"]
        out: dict[str, Any] = {}
        for k in (8, 40):
            how = {"top_k": k} if rerank is None else {"rerank_config": rerank.replace(shortlist=k)}
            dist, scores = relational_rerank(model, qf, gf, device="cpu", progress=False, return_scores=True, **how)
            out[f"dist@{k}"], out[f"scores@{k}"] = dist, scores.nan_to_num(0.0)
        out.update({f"term {k}": v for k, v in similarity_terms(model, qf, gf).items()})
    return out


def similarity_terms(model, qf: torch.Tensor, gf: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every similarity of 6 query graphs of 9 nodes, by either package's name for it."""
    import hrnet_pyg.scoring as scoring

    index = torch.cat([torch.arange(6).unsqueeze(1), 6 + torch.arange(48).view(6, 8)], dim=1)
    feats = torch.cat([qf, gf])
    if hasattr(scoring, "similarity_terms"):
        return scoring.similarity_terms(model, scoring.project_images(model, feats), index)
    return scoring.graph_score_terms(model, scoring.image_terms(model, feats), index)


def training_step(model, data: dict[str, torch.Tensor]) -> dict[str, Any]:
    """One forward in training mode and the backward of L_total."""
    model.train()
    caught: dict[str, torch.Tensor] = {}

    def catch(module, args, output) -> None:  # the verifier's input is U' (Eq. 7)
        caught["U'"] = args[0].detach()

    hook = model.verifier.register_forward_hook(catch) if model.verifier is not None else None
    x = data["x"].clone().requires_grad_(True)
    res = model(x, data["pids"])
    res.loss.backward()
    if hook is not None:
        hook.remove()
    out: dict[str, Any] = {f"loss {k}": v.detach() for k, v in res.losses.items()}
    out["loss total"] = res.loss.detach()
    out["grad x"] = x.grad
    for name, p in model.named_parameters():
        if p.grad is not None:
            out[f"grad {new_name(name)}"] = p.grad
    if res.ir_feats is not None:
        out["V'"] = res.ir_feats.detach()
    if res.pair_logits is not None:
        out["pair logits"] = res.pair_logits.detach()
        out["t_hat"] = torch.sigmoid(res.pair_logits.detach())
    out.update(caught)
    return out


def worker(out_path: str, ref_path: str | None) -> None:
    import hrnet_pyg

    print(f"package: {Path(hrnet_pyg.__file__).parent}", flush=True)
    torch.set_num_threads(1)
    ref = torch.load(ref_path, weights_only=False) if ref_path else None
    results: dict[str, Any] = {}
    todo = cases() if ref is None else [(name, rec["row"], rec["over"]) for name, rec in ref.items()]
    for seed, (name, row, over) in enumerate(todo):
        state = None if ref is None else ref[name]["state"]
        model, rerank = build(row, over, state, seed)
        data = inputs(over, seed) if ref is None else ref[name]["inputs"]
        rec: dict[str, Any] = {"row": row, "over": over, "inputs": data,
                               "state": {k: v.clone() for k, v in model.state_dict().items()}}
        rec["values"] = {**test_time(model, data, rerank), **training_step(model, data)}
        results[name] = rec
    torch.save(results, out_path)


# ---------------------------------------------------------------------------- the comparison
def compare(old: dict[str, Any], new: dict[str, Any], atol: float) -> bool:
    ok = True
    for name, rec in old.items():
        a, b = rec["values"], new[name]["values"]
        if set(a) != set(b):
            print(f"{name}: MISMATCH in what was computed: only old {sorted(set(a) - set(b))}, "
                  f"only new {sorted(set(b) - set(a))}")
            ok = False
            continue
        diffs = {k: float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a}
        groups: dict[str, float] = {}
        for k, v in diffs.items():
            group = k.split(" ")[0] if k.split(" ")[0] in ("loss", "grad", "term") else k.split("@")[0]
            groups[group] = max(groups.get(group, 0.0), v)
        worst = max(diffs.values())
        status = "OK" if worst <= atol else "MISMATCH"
        ok &= worst <= atol
        bits = sum(v == 0.0 for v in diffs.values())
        parts = ", ".join(f"{g} {v:.1e}" if v else f"{g} 0" for g, v in groups.items())
        print(f"{name:<42} {status:<8} max|diff| {worst:.1e} ({bits}/{len(diffs)} bit-identical): {parts}")
    return ok


def run(package_root: Path, out: Path, ref: Path | None) -> None:
    env = {**os.environ, "PYTHONPATH": str(package_root), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(out)]
    if ref is not None:
        cmd += ["--ref", str(ref)]
    subprocess.run(cmd, env=env, check=True, cwd=package_root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", nargs="?", help="root of the old checkout (holds hrnet_pyg/)")
    parser.add_argument("--new", default=str(ROOT), help="root of the new checkout (default: this one)")
    parser.add_argument("--atol", type=float, default=1e-6)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--ref", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.ref)
        return 0
    if args.old is None or not (Path(args.old) / "hrnet_pyg" / "__init__.py").is_file():
        parser.error(f"old: {args.old} is not a checkout of the package (no hrnet_pyg/__init__.py in it)")
    with tempfile.TemporaryDirectory() as tmp:
        old_out, new_out = Path(tmp) / "old.pt", Path(tmp) / "new.pt"
        run(Path(args.old).resolve(), old_out, None)
        run(Path(args.new).resolve(), new_out, old_out)
        ok = compare(torch.load(old_out, weights_only=False), torch.load(new_out, weights_only=False), args.atol)
    print("EQUIVALENT" if ok else "NOT EQUIVALENT", f"(atol {args.atol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
