#!/usr/bin/env python
"""The efficacy study: does the full HRNet beat each of its parts at test time?

It trains Table 1 rows on generated data, several seeds each, and scores every trained model
with several test protocols: the cosine of the row's own features, the paper's relational
re-ranking (Sec. 4.2) as the config sets it, each module's similarity alone, other fusions of the
two, k-reciprocal re-ranking of the same features, and relational re-ranking after k-reciprocal.
Results are mean ± std over seeds, on at least 1,000 queries.

Three levels:

* ``real``: real pedestrians, VIPeR, PRID 2011, GRID and CAVIAR4REID as ``../shared/data/reid-small``
  holds them (``--shared-data`` or ``HRNET_PYG_SHARED_DATA`` name another ``shared/data``
  folder). Each row trains once on their joint training set (``reid_small_joint``, split ``seed``)
  from the ImageNet MobileNetV2 of ``../shared/data/weights`` and is scored on each of the four
  test sets of that split.
* ``feature``: the generated feature world of :mod:`hrnet_pyg.data.synthetic_features` (no
  backbone, ``backbone=None``); the graph modules and the BNNeck train on fixed features.
* ``image``: the synthetic image dataset (:mod:`hrnet_pyg.data.synthetic`), ResNet-18 from
  random initialisation at 64 x 32, with a test split of 1,000 queries.

Examples (from the repository root)::

    # the defaults' table on real pedestrians (4 rows x 3 splits), then docs/efficacy.md
    python experiments/efficacy.py --level real --study main
    # the same at the feature level (4 rows x 3 seeds)
    python experiments/efficacy.py --level feature --study main
    # every study of the document (what docs/efficacy.md says, regenerated)
    python experiments/efficacy.py --level feature --study all
    python experiments/efficacy.py --level image --study main
    # the gallery-graph protocol's open choices (rerank.protocol) on the models kept by the studies
    python experiments/efficacy.py --level feature --study gallery
    # only re-write docs/efficacy.md from the results on disk
    python experiments/efficacy.py --report

Each (level, study variant, row, seed) is one JSON file under ``--results``
(``results/efficacy`` by default; the gallery study's under ``gallery/`` there); a file present is
not recomputed, so an interrupted study resumes where it stopped and ``--report`` needs no
training. Trained weights are kept under ``models/`` there, so a record of a changed test protocol
is re-scored without training.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXPERIMENTS_DIR = Path(__file__).resolve().parent
if str(EXPERIMENTS_DIR.parent) not in sys.path:  # run as a script from a source checkout
    sys.path.insert(0, str(EXPERIMENTS_DIR.parent))

import torch  # noqa: E402

ROWS = ("CNN", "CNN+IR+CNC", "CNN+PR+IGP", "HRNet")
SEEDS = (0, 1, 2)

from hrnet_pyg.config import LEGACY_RERANK_FIELDS, PAPER_LITERAL  # noqa: E402
from hrnet_pyg.demo import DEMO_DATA  # noqa: E402
from hrnet_pyg.protocol import DEFAULT_PROTOCOL, RerankConfig  # noqa: E402

# Per level: how a row is trained. The feature level trains the graph modules from scratch on
# fixed features: the paper's lr and schedule shape (x0.1 twice), over fewer epochs.
LEVELS: dict[str, dict[str, Any]] = {
    "feature": dict(model=dict(backbone=None, feat_dim=64, pretrained=False, lr=1e-3, epochs=20,
                               milestones=(14, 18)),
                    world=dict()),  # FeatureWorldConfig's defaults
    # The demo's data and model (hrnet_pyg.demo) with twice its schedule: 40 epochs.
    "image": dict(model=dict(backbone="resnet18", pretrained=False, image_size=(64, 32), lr=1e-3, epochs=40,
                             milestones=(30, 37)),
                  data=dict(DEMO_DATA)),
}

# The real level: the joint training set of the four small data sets (split ``seed``), scored on
# each member's test set. The weights are named relative to the repository root as the committed
# configs name them, so that a run's key does not depend on where ../shared sits; they are read from
# the shared data folder (SHARED_DATA) at training time. The schedule fits the four rows x three
# splits into about two hours of two CPU cores (docs/efficacy.md, "Real level: the schedule").
REAL_TEST_SETS = ("viper", "prid2011", "grid", "caviar4reid")
REAL_TITLES = {"viper": "VIPeR", "prid2011": "PRID 2011", "grid": "GRID", "caviar4reid": "CAVIAR4REID"}
REAL_WEIGHTS = "weights/mobilenet_v2_imagenet_torchvision.pth"  # under the shared data folder
LEVELS["real"] = dict(
    model=dict(backbone="mobilenet_v2", pretrained=f"../shared/data/{REAL_WEIGHTS}", feat_dim=1280,
               image_size=(128, 64), last_stride=1, num_identities=16, num_instances=4, lr=3.5e-4, epochs=6,
               milestones=(4, 5)),
    data=dict(name="reid_small_joint", root="reid-small", test_sets=REAL_TEST_SETS),
)
# Where the real level reads ../shared/data from (main() sets it from --shared-data).
SHARED_DATA = Path(os.environ.get("HRNET_PYG_SHARED_DATA", EXPERIMENTS_DIR.parent.parent / "shared" / "data"))
# Training loop settings that are not part of a run's key (smoke-test sizes cut epochs short).
TRAIN_LIMITS: dict[str, Any] = {"max_steps_per_epoch": None}

# --quick: the same code path at smoke-test sizes (tests, dry runs); its numbers mean nothing. A
# level's "rerank" entry changes its test protocol (RerankConfig; default: RerankConfig()).
QUICK_LEVELS: dict[str, dict[str, Any]] = {
    "feature": dict(model=dict(LEVELS["feature"]["model"], feat_dim=16, epochs=2, milestones=(1, 2)),
                    world=dict(dim=16, num_train_ids=30, num_test_ids=20, imgs_per_id=6),
                    rerank=dict(shortlist=20)),
    "image": dict(model=dict(LEVELS["image"]["model"], image_size=(32, 16), epochs=1, milestones=(1, 2),
                             k=3, num_identities=4, num_instances=3),
                  data=dict(num_train_ids=8, num_test_ids=6, imgs_per_id=6, queries_per_id=2,
                            num_distractors=2, num_junk=1),
                  rerank=dict(shortlist=20)),
    # ResNet-18: a MobileNetV2 from random initialisation gives every image the same features in
    # eval mode until its BatchNorm statistics settle (dozens of steps), and k-reciprocal
    # re-ranking then has no neighbourhoods; the weights file's path is tests/test_weights.py's.
    "real": dict(model=dict(LEVELS["real"]["model"], backbone="resnet18", feat_dim=512, pretrained=False,
                            image_size=(32, 16), epochs=1, milestones=(1, 2), k=3,
                            num_identities=4, num_instances=2),
                 data=dict(LEVELS["real"]["data"]), rerank=dict(shortlist=20)),
}
QUICK_TRAIN_LIMITS = {"max_steps_per_epoch": 3}

# Studies: name -> (what it varies, rows, {variant label: model overrides at training time, and
# under "rerank" the variant's test protocol, RerankConfig fields}).
# Test-time choices (fusion, shortlist, Fig. 4's end point) need no training of their own: they
# are scored on the models of "main" (see TEST_TIME).
STUDIES: dict[str, tuple[str, Sequence[str], dict[str, dict[str, Any]]]] = {
    "main": ("the defaults", ROWS, {"defaults": {}}),
    "paper": ("the paper-literal reading of every open detail", ROWS,
              {"paper-literal": {**PAPER_LITERAL, "rerank": RerankConfig.paper_literal().to_dict()}}),
    "eq2": ("Eq. 2's denominator (ir_attention_norm)", ("CNN+IR+CNC", "HRNet"),
            {"all (literal)": dict(ir_attention_norm="all"),
             "neighbors (GAT)": dict(ir_attention_norm="neighbors")}),
    "cnc": ("CNC 'hardest' pairs (cnc_mining) and CNC itself", ("CNN+IR+CNC",),
            {"violation": dict(cnc_mining="violation"), "batch_hard": dict(cnc_mining="batch_hard"),
             "no CNC (CNN+IR)": dict(use_cnc=False)}),
    "prhead": ("the verification head t_hat (pr_head, pr_head_init)", ("CNN+PR+IGP", "HRNet"),
               {f"{head}, {init} init": dict(pr_head=head, pr_head_init=init)
                for head in ("diagonal", "projected") for init in ("glorot", "distance")}),
    "igp": ("IGP itself", ("CNN+PR+IGP",), {"no IGP (CNN+PR)": dict(use_igp=False)}),
    "graph": ("the individual graph: kNN (Eq. 1) or fully connected (Table 1's IR*)", ("CNN+IR",),
              {"kNN (CNN+IR)": {}, "fully connected (CNN+IR*)": dict(ir_graph="full")}),
    # Real level only (elsewhere the backbone starts from random initialisation already, so the
    # variant is the defaults' run): what the ImageNet weights are worth.
    # Beyond the paper: the IR layer trains on 66-node P x K graphs but re-ranks graphs of thousands
    # of nodes, most of them other identities; here its training graph also holds up to 66 of the
    # batch's hardest negatives, mined from a memory of recent training features (not in the paper).
    "negatives": ("IR training graphs with hard negatives from a feature memory (not in the paper)", ("HRNet",),
                  {"66 hard negatives": dict(ir_hard_negatives=66)}),
    "scratch": ("the ImageNet pretraining's share: the backbone from random initialisation", ("CNN", "HRNet"),
                {"random init": dict(pretrained=False)}),
}

# Test-time variants scored on every trained model: label -> RerankConfig fields at test time.
# The test protocol is not part of a run's key (one trained model is scored under all of them); a
# record stores the fields its row uses (see _test_protocol).
PR_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
TEST_TIME: dict[str, dict[str, Any]] = {
    **{f"{ir} + {pr}, {norm}": dict(ir_score=ir, pr_score=pr, norm=norm)
       for ir in RerankConfig.choices("ir_score") for pr in RerankConfig.choices("pr_score")
       for norm in RerankConfig.choices("norm")},
    **{f"{pr} weight {w}": dict(ir_score="ir_bn_cosine", pr_score=pr, norm="zscore", pr_weight=w)
       for pr in RerankConfig.choices("pr_score") for w in PR_WEIGHTS},
    "top-60 shortlist": dict(shortlist=60),
    "top-240 shortlist": dict(shortlist=240),
}

# The report's test-time tables: (protocol key in a record's scores, column or row label).
REPORT_TERMS = [("relational", "fused (defaults)"), ("term ir_cosine", "IR cos(V')"),
                ("term ir_bn_cosine", "IR cos(BN(V'))"), ("term pr_prob", "PR t_hat"), ("term pr_logit", "PR logit")]
REPORT_FUSIONS = [(f"fusion {label}", label) for label, over in TEST_TIME.items()
                  if "norm" in over and "pr_weight" not in over]
REPORT_WEIGHTS = [(f"{pr} weight {w}", f"z(cos(BN(V'))) + {w} z({name})" + (" (IR alone)" if w == 0 else ""))
                  for pr, name in (("pr_prob", "t_hat"), ("pr_logit", "logit of t_hat")) for w in PR_WEIGHTS]
REPORT_SHORTLIST = [("relational", "top-120 (paper)"), ("top-60 shortlist", "top-60"),
                    ("top-240 shortlist", "top-240"), ("relational after k-reciprocal", "top-120 of k-reciprocal")]
REPORT_FIG4 = [("pr_edges=66 absolute", "66-nearest mask at test"),
               ("pr_edges=66 relative", "same share at test (complete)"), ("relational", "pr_edges=None")]
REPORT_DIAG = [("pr static attention", "TV of G rows from their mean"),
               ("pr message share", "norm(u' - alpha u) / norm(alpha u)"),
               ("pr shortlist AP, head on u'", "shortlist AP, t_hat on u'"),
               ("pr shortlist AP, head on u", "shortlist AP, same head on u"),
               ("pr shortlist AP, cosine", "shortlist AP, cosine")]


# ------------------------------------------------------------------------------------ data
def feature_level_data(seed: int) -> dict[str, Any]:
    from hrnet_pyg.data.synthetic_features import FeatureWorldConfig, generate_feature_world

    world = generate_feature_world(FeatureWorldConfig(seed=seed, **LEVELS["feature"]["world"]))
    return dict(train=(world.train.feats, world.train.pids, world.train.camids),
                query=(world.query.feats, world.query.pids, world.query.camids),
                gallery=(world.gallery.feats, world.gallery.pids, world.gallery.camids),
                num_classes=world.num_train_pids, summary=world.summary())


def image_level_data(seed: int, root: Path) -> dict[str, Any]:
    from hrnet_pyg.data import build_dataset

    kwargs = dict(LEVELS["image"]["data"], seed=seed, progress=False)
    ds = build_dataset("synthetic", str(root), **kwargs)
    return dict(dataset=ds, num_classes=ds.num_train_pids, summary=ds.summary())


def real_level_data(seed: int) -> dict[str, Any]:
    """Split ``seed`` of the joint training set and the four test sets of that split."""
    from hrnet_pyg.data import build_dataset

    spec = LEVELS["real"]["data"]
    ds = build_dataset(spec["name"], str(SHARED_DATA / spec["root"]), split_id=seed)
    return dict(dataset=ds, num_classes=ds.num_train_pids, summary=ds.summary(),
                tests={name: ds.test_set(name) for name in spec["test_sets"]})


def check_shared_data(level: str) -> str | None:
    """What the real level lacks in ``SHARED_DATA`` (one line), or ``None``."""
    if level != "real":
        return None
    need = [SHARED_DATA / LEVELS["real"]["data"]["root"]]
    if isinstance(LEVELS["real"]["model"]["pretrained"], str):
        need.append(SHARED_DATA / REAL_WEIGHTS)
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        return (f"--level real needs {' and '.join(missing)}: put ../shared beside the repository, or name "
                f"its data folder with --shared-data or HRNET_PYG_SHARED_DATA")
    return None


# ------------------------------------------------------------------------------------ training
def _model_config(level: str, row: str, seed: int, overrides: dict[str, Any]):
    from hrnet_pyg.config import HRNetConfig

    # Records of the former layout carry the test protocol among their overrides (top_k_rerank,
    # rerank_*): it is not part of the training config.
    training = {k: v for k, v in overrides.items() if k != "rerank" and k not in LEGACY_RERANK_FIELDS}
    return HRNetConfig.from_row(row, **{**LEVELS[level]["model"], "seed": seed, **training})


def _rerank_config(level: str, overrides: dict[str, Any]) -> RerankConfig:
    """The test protocol of a variant: the level's, with the variant's "rerank" fields (or, in a
    record of the former layout, its top_k_rerank / rerank_* overrides)."""
    legacy = {LEGACY_RERANK_FIELDS[k]: v for k, v in overrides.items() if k in LEGACY_RERANK_FIELDS}
    return RerankConfig.from_dict({**LEVELS[level].get("rerank", {}), **legacy, **overrides.get("rerank", {})})


def train_feature_row(cfg, data: dict[str, Any], seed: int):
    from torch.utils.data import DataLoader

    from hrnet_pyg import HRNet
    from hrnet_pyg.data import FeatureDataset, PKSampler

    torch.manual_seed(seed)
    feats, pids, camids = data["train"]
    loader = DataLoader(FeatureDataset(feats, pids, camids),
                        batch_sampler=PKSampler(pids.tolist(), P=cfg.num_identities,
                                                K=cfg.num_instances, seed=seed))
    model = HRNet(cfg, num_classes=data["num_classes"])
    model.fit(loader, device="cpu", progress=False)
    return model.eval()


def image_features(model, data: dict[str, Any]) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from hrnet_pyg.data import ImageDataset, build_transforms

    ds, cfg = data["dataset"], model.config
    out = {}
    for split in ("query", "gallery"):
        loader = DataLoader(ImageDataset(getattr(ds, split), build_transforms(*cfg.image_size, is_train=False)),
                            batch_size=128, num_workers=2)
        out[split] = model.extract(loader, device="cpu", progress=False)
    return out


def train_image_row(cfg, data: dict[str, Any], seed: int, num_workers: int = 2, history: list | None = None):
    """``num_workers=0`` decodes in this process (the real level: its images decode in about 1.5
    CPU seconds an epoch, and the run's CPU time then counts everything); ``history`` receives
    the per-epoch rows of ``fit``."""
    from torch.utils.data import DataLoader

    from hrnet_pyg import HRNet
    from hrnet_pyg.data import ImageDataset, PKSampler, build_transforms

    torch.manual_seed(seed)
    ds = data["dataset"]
    loader = DataLoader(ImageDataset(ds.train, build_transforms(*cfg.image_size, is_train=True)),
                        batch_sampler=PKSampler([r.pid for r in ds.train], P=cfg.num_identities,
                                                K=cfg.num_instances, seed=seed),
                        num_workers=num_workers, persistent_workers=num_workers > 0)
    model = HRNet(cfg, num_classes=data["num_classes"])
    result = model.fit(loader, device="cpu", progress=False, print_freq=1000, **TRAIN_LIMITS)
    if history is not None:
        history.extend(result.history)
    return model.eval()


def real_features(model, records: Sequence) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(F, pids, camids) of ``records`` at the model's test transform."""
    from torch.utils.data import DataLoader

    from hrnet_pyg.data import ImageDataset, build_transforms

    loader = DataLoader(ImageDataset(records, build_transforms(*model.config.image_size, is_train=False)),
                        batch_size=128, num_workers=0)
    return model.extract(loader, device="cpu", progress=False)


# ------------------------------------------------------------------------------------ scoring
def _rank(dist, q, g) -> dict[str, Any]:
    """mAP, rank-1 and (under ``"ap"``, popped before a record is written: ``_split_ap``) the AP of
    every query."""
    from hrnet_pyg.evaluation import evaluate_rank

    r = evaluate_rank(dist, q[1].numpy(), g[1].numpy(), q[2].numpy(), g[2].numpy())
    return {"mAP": float(r.mAP), "rank1": float(r.cmc[0]), "ap": r.all_AP}


# The protocols whose per-query APs a real-level record keeps (paired differences between
# protocols and rows, query by query); the APs of the others are dropped.
PER_QUERY_PROTOCOLS = ("cosine", "relational", "k-reciprocal", "relational after k-reciprocal")


def _split_ap(scores: dict[str, dict[str, Any]], keep: Sequence[str] = ()) -> dict[str, list[float | None]]:
    """Pops every ``"ap"`` of ``scores``; returns those of ``keep`` as lists (5 decimals; None
    for a query without a true match)."""
    out: dict[str, list[float | None]] = {}
    for name, value in scores.items():
        ap = value.pop("ap", None)
        if ap is not None and name in keep:
            out[name] = [None if math.isnan(a) else round(float(a), 5) for a in ap]
    return out


def score_model(model, q: tuple, g: tuple, extended: bool = True) -> dict[str, dict[str, float]]:
    """Every test protocol of the study on one trained model: name -> {mAP, rank1}.

    "relational" is the model's own protocol (``model.rerank_config``); the other protocols are
    RerankConfigs passed alongside the same model. ``extended``: also the test-graph variants
    (shortlist lengths, Fig. 4's end point), which only the defaults' models need."""
    from hrnet_pyg.evaluation import cosine_distance
    from hrnet_pyg.kreciprocal import k_reciprocal_rerank_features
    from hrnet_pyg.rerank import relational_rerank
    from hrnet_pyg.scoring import fuse_scores, project_images, similarity_terms

    cfg, protocol = model.config, model.rerank_config
    qb, gb = model.retrieval_features(q[0]), model.retrieval_features(g[0])
    out: dict[str, dict[str, float]] = {"cosine": _rank(cosine_distance(qb, gb), q, g)}
    kr = k_reciprocal_rerank_features(qb, gb, progress=False)
    out["k-reciprocal"] = _rank(kr, q, g)
    if model.ir is None and model.pr is None:
        return out
    out["relational"] = _rank(relational_rerank(model, q[0], g[0], protocol, device="cpu", progress=False), q, g)
    # each module's term alone, and every fusion, on the same shortlists
    images = project_images(model, torch.cat([q[0], g[0]]).float())
    num_q = q[0].size(0)
    cos = images.retrieval[:num_q] @ images.retrieval[num_q:].T
    top = cos.topk(min(protocol.shortlist, cos.size(1)), dim=1).indices
    index = torch.cat([torch.arange(num_q).unsqueeze(1), top + num_q], dim=1)
    parts: dict[str, list[torch.Tensor]] = {}
    for s in range(0, num_q, 64):
        for name, value in similarity_terms(model, images, index[s:s + 64]).items():
            parts.setdefault(name, []).append(value)
    joined = {name: torch.cat(v) for name, v in parts.items()}

    def ranked(score: torch.Tensor) -> dict[str, float]:
        dist = (1.0 - cos).scatter_(1, top, score.amin(dim=1, keepdim=True) - score - 1.0)
        return _rank(dist, q, g)

    for name, value in joined.items():
        if name != "cosine":
            out[f"term {name}"] = ranked(value)
    if "ir_cosine" in joined and "pr_prob" in joined:
        for label, over in TEST_TIME.items():
            if "norm" in over:
                name = label if "pr_weight" in over else f"fusion {label}"
                out[name] = ranked(fuse_scores(joined, over["ir_score"], over["pr_score"], over["norm"],
                                               over.get("pr_weight", 1.0)))
    out["relational after k-reciprocal"] = _rank(_rerank_after(model, q[0], g[0], kr, protocol), q, g)
    if not extended:
        return out
    for label, over in TEST_TIME.items():
        if "shortlist" in over:
            out[label] = _rank(relational_rerank(model, q[0], g[0], protocol.replace(**over),
                                                 device="cpu", progress=False), q, g)
    if cfg.pr_edges is None and model.pr is not None:  # Fig. 4's "66 = complete" end point
        for relative in (False, True):
            m2 = copy.deepcopy(model)  # the head holds the config: a shallow copy would share it
            m2.config = dataclasses.replace(cfg, pr_edges=cfg.batch_size, pr_edges_relative=relative)
            label = f"pr_edges={cfg.batch_size} {'relative' if relative else 'absolute'}"
            out[label] = _rank(relational_rerank(m2, q[0], g[0], protocol, device="cpu", progress=False), q, g)
    return out


def pr_diagnostics(model, q: tuple, g: tuple, num_graphs: int = 200) -> dict[str, dict[str, float]]:
    """Why the PR branch scores as it does, measured on the query graphs of the first queries.

    * ``pr static attention``: how much the rows of G^n (Eq. 6) differ within a graph, as the
      mean total-variation distance of a row from the graph's mean row (0: every difference node
      attends to the same sources with the same weights, so the complete graph's message
      sum_j g_ij u_j W_p = f_n W_p - sum_j g_ij f_j W_p is the same for every i).
    * ``pr message share``: ||u' - alpha u|| / ||alpha u|| (how far propagation moves a node).
    * ``pr shortlist AP, head on u'`` / ``head on u`` / ``cosine``: mean AP within the query
      shortlists of t_hat on the propagated nodes, of the same head on the raw differences u (no
      propagation: if it ranks as well, the graph adds nothing to t_hat), and of the cosine.

    Each value is stored under ``"mAP"`` (``"rank1"`` NaN) so that the records keep one shape.
    """
    from hrnet_pyg.scoring import project_images

    cfg = model.config
    images = project_images(model, torch.cat([q[0], g[0]]).float())
    num_q = min(num_graphs, q[0].size(0))
    cos = images.retrieval[:num_q] @ images.retrieval[q[0].size(0):].T
    top = cos.topk(min(model.rerank_config.shortlist, cos.size(1)), dim=1).indices
    f = torch.cat([q[0][:num_q].unsqueeze(1).float(), g[0][top].float()], dim=1)  # (B, M, d)
    v = None
    if model.ir is not None:
        v = model.ir.forward_dense(f, model.head.individual_adjacency(f))
    rows = torch.zeros(1, dtype=torch.long)
    u_prime, att, _ = model.pr.forward_dense(f, model.head.image_nodes(f, v), rows=rows, return_attention=True)
    u = f[:, :1] - f  # (B, M, d): u_{q,i}
    att = att[:, 0]  # (B, M, M)
    tv = 0.5 * (att - att.mean(dim=1, keepdim=True)).abs().sum(-1).mean()
    share = (u_prime[:, 0] - cfg.alpha * u).norm(dim=-1) / (cfg.alpha * u).norm(dim=-1).clamp_min(1e-12)
    share = share[:, 1:].mean()
    same = g[1][top] == q[1][:num_q].unsqueeze(1)  # (B, M - 1) true matches

    def ap_of(score: torch.Tensor) -> float:  # mean AP within the shortlist (no camera filter)
        aps = []
        for b in range(score.size(0)):
            rel = same[b][score[b].argsort(descending=True)].float()
            if rel.sum() > 0:
                hits = rel.cumsum(0)
                aps.append(float((hits / torch.arange(1, rel.numel() + 1) * rel).sum() / rel.sum()))
        return sum(aps) / max(len(aps), 1)

    on_u = model.verifier(u[:, 1:])
    on_u_prime = model.verifier(u_prime[:, 0, 1:])
    return {"pr static attention": {"mAP": float(tv), "rank1": float("nan")},
            "pr message share": {"mAP": float(share), "rank1": float("nan")},
            "pr shortlist AP, head on u'": {"mAP": ap_of(on_u_prime), "rank1": float("nan")},
            "pr shortlist AP, head on u": {"mAP": ap_of(on_u), "rank1": float("nan")},
            "pr shortlist AP, cosine": {"mAP": ap_of(cos.gather(1, top)), "rank1": float("nan")}}


def _rerank_after(model, qf: torch.Tensor, gf: torch.Tensor, base: torch.Tensor,
                  protocol: RerankConfig) -> torch.Tensor:
    """Relational re-ranking (under ``protocol``) of the shortlist that another distance (k-reciprocal) gives."""
    from hrnet_pyg.scoring import project_images, relational_scores

    images = project_images(model, torch.cat([qf, gf]).float())
    num_q = qf.size(0)
    base = torch.as_tensor(base).float()
    top = (-base).topk(min(protocol.shortlist, base.size(1)), dim=1).indices
    index = torch.cat([torch.arange(num_q).unsqueeze(1), top + num_q], dim=1)
    dist = base - base.min() + 1.0  # every item >= 1, keeps the base order outside the shortlist
    for s in range(0, num_q, 64):
        score = relational_scores(model, images, index[s:s + 64], protocol)
        dist[s:s + 64].scatter_(1, top[s:s + 64], score.amin(dim=1, keepdim=True) - score)
    return dist


# ------------------------------------------------------------------------------------ runner
def _test_protocol(cfg, protocol: RerankConfig) -> dict[str, Any]:
    """The test-time fields that decide this row's relational re-ranking (its record is stale
    when they change): the shortlist length, the IR similarity (two orders), and the rest only
    where two terms are added (one term's t_hat, its logit, z-scored or ranked: the same order).

    Records name them as the records on disk do, by the fields' former HRNetConfig names
    (``top_k_rerank``, ``rerank_*``), so that the committed records stay current."""
    out: dict[str, Any] = {"top_k_rerank": protocol.shortlist}
    if cfg.use_ir:
        out["rerank_ir_score"] = protocol.ir_score
    if cfg.use_ir and cfg.use_pr:
        out.update(rerank_pr_score=protocol.pr_score, rerank_norm=protocol.norm, rerank_pr_weight=protocol.pr_weight)
    return out


_KEYS: dict[str, str] = {}  # memo of _key: the report asks for the same keys many times


def _key(level: str, row: str, seed: int, overrides: dict[str, Any]) -> str:
    # Keyed by the resolved training config, so a variant that equals the defaults reuses their run;
    # the test protocol is left out: it re-scores a saved model (_test_protocol). HRNetConfig.to_dict()
    # holds no test-protocol field, so it is exactly the dict the key has always hashed (the former
    # HRNetConfig.to_dict() less top_k_rerank and rerank_*): the records on disk keep their keys.
    memo = json.dumps([level, row, seed, overrides, LEVELS[level]], sort_keys=True, default=str)
    if memo not in _KEYS:
        _KEYS[memo] = _compute_key(level, row, seed, overrides)
    return _KEYS[memo]


# HRNetConfig fields added after the first records: a config that leaves them at these values
# hashes as it did before they existed, so the records on disk keep their keys.
KEY_FIELDS_AT_DEFAULT = {"ir_hard_negatives": 0, "ir_memory_size": 2048}


def _compute_key(level: str, row: str, seed: int, overrides: dict[str, Any]) -> str:
    resolved = _model_config(level, row, seed, overrides).to_dict()
    for name, default in KEY_FIELDS_AT_DEFAULT.items():
        if resolved.get(name) == default:
            del resolved[name]
    blob = json.dumps({"level": level, "model": resolved, "setup": LEVELS[level]},
                      sort_keys=True, default=str)
    slug = row.lower().replace("+", "_").replace("*", "_star")
    return f"{level}-{slug}-s{seed}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


def _current(record: dict[str, Any], overrides: dict[str, Any]) -> bool:
    """Whether a record was scored with the test protocol that ``overrides`` give its row today."""
    cfg = _model_config(record["level"], record["row"], record["seed"], overrides)
    return record.get("test_protocol") == _test_protocol(cfg, _rerank_config(record["level"], overrides))


def _level_data(level: str, seed: int, results: Path) -> dict[str, Any]:
    """The level's data of ``seed`` (the image level's generated under ``<results>/data``)."""
    return (feature_level_data(seed) if level == "feature"
            else real_level_data(seed) if level == "real"
            else image_level_data(seed, results / "data" / f"seed{seed}"))


def kept_model(level: str, row: str, seed: int, overrides: dict[str, Any], results: Path,
               data: dict[str, Any], history: list | None = None) -> tuple[Any, str]:
    """The trained model of (level, row, seed, variant) in eval mode, and how it came: read from its
    kept weights (``<results>/models/<key>.pt``), or trained and kept there. ``history``
    receives the per-epoch rows of a training."""
    from hrnet_pyg import HRNet
    from hrnet_pyg.runtime import atomic_save

    key = _key(level, row, seed, overrides)
    weights = results / "models" / f"{key}.pt"
    cfg = _model_config(level, row, seed, overrides)
    if weights.is_file():  # the state dict holds the backbone: no ImageNet file to read first
        model = HRNet(dataclasses.replace(cfg, pretrained=False), num_classes=data["num_classes"])
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return model.eval(), f"re-scored from {weights.name}"
    if level == "real" and isinstance(cfg.pretrained, str):
        cfg = dataclasses.replace(cfg, pretrained=str(SHARED_DATA / REAL_WEIGHTS))
    model = (train_feature_row(cfg, data, seed) if level == "feature"
             else train_image_row(cfg, data, seed, num_workers=0 if level == "real" else 2, history=history))
    atomic_save(model.state_dict(), weights)
    return model, "trained"


def eval_sets(level: str, data: dict[str, Any], model) -> dict[str, tuple[tuple, tuple]]:
    """Test set name -> (query, gallery), each (F, pids, camids) under ``model``: the feature
    world's fixed features, the synthetic images' or each real test set's as ``model`` extracts them."""
    if level == "feature":
        return {"features": (data["query"], data["gallery"])}
    if level == "image":
        feats = image_features(model, data)
        return {"synthetic": (feats["query"], feats["gallery"])}
    return {name: (real_features(model, query), real_features(model, gallery))
            for name, (query, gallery) in data["tests"].items()}


def run_one(level: str, row: str, seed: int, overrides: dict[str, Any], results: Path,
            cache: dict[tuple[str, int], Any]) -> dict[str, Any]:
    """One (level, row, seed, variant): trained (its weights kept under ``<results>/models``) and
    scored. A record scored with today's test protocol is returned as it is; an older one is
    re-scored from the kept weights, without training."""
    from hrnet_pyg.runtime import atomic_write

    key = _key(level, row, seed, overrides)
    path = results / f"{key}.json"
    previous: dict[str, Any] = {}
    if path.is_file():
        previous = json.loads(path.read_text())
        if _current(previous, overrides):
            return previous
    t0, c0, load0 = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    cfg, protocol = _model_config(level, row, seed, overrides), _rerank_config(level, overrides)
    if (level, seed) not in cache:
        cache[(level, seed)] = _level_data(level, seed, results)
    data = cache[(level, seed)]
    history: list[dict[str, float]] = []
    model, how = kept_model(level, row, seed, overrides, results, data, history)
    model.rerank_config = protocol  # "relational" in the scores: the variant's own test protocol
    t1, c1 = time.perf_counter(), time.process_time()
    extra: dict[str, Any] = {}
    with torch.no_grad():
        if level == "real":
            scores, extra = _score_real(model, data, extended=not overrides)
            sizes = extra.pop("sizes")
        else:
            [(q, g)] = eval_sets(level, data, model).values()
            scores = score_model(model, q, g, extended=not overrides)
            _split_ap(scores)
            if model.pr is not None:
                scores.update(pr_diagnostics(model, q, g))
            sizes = dict(num_queries=int(q[0].size(0)), num_gallery=int(g[0].size(0)))
    t2, c2 = time.perf_counter(), time.process_time()
    record = dict(key=key, level=level, row=row, seed=seed, overrides=overrides,
                  test_protocol=_test_protocol(cfg, protocol), scores=scores, **sizes,
                  data=data["summary"], seconds=t2 - t0, how=how)
    if level == "real":  # what the schedule cost: wall and CPU (process) seconds, the machine's load
        timing = dict(train_seconds=t1 - t0, train_cpu_seconds=c1 - c0, eval_seconds=t2 - t1,
                      eval_cpu_seconds=c2 - c1, threads=torch.get_num_threads(),
                      loadavg_start=load0, loadavg_end=os.getloadavg()[0])
        if how != "trained" and "timing" in previous:  # a re-scored model keeps its training's figures
            for name in ("train_seconds", "train_cpu_seconds", "loadavg_start"):
                timing[name] = previous["timing"][name]
            history = previous.get("history", history)
        record.update(timing=timing, history=history, **extra)
    atomic_write(path, lambda fh: fh.write(json.dumps(record, indent=1, default=str)), mode="w")
    first = scores[REAL_TEST_SETS[0]] if level == "real" else scores
    print(f"{level} {row} seed {seed} {overrides or ''}: cosine {first['cosine']['mAP']:.3f} "
          f"relational {first.get('relational', first['cosine'])['mAP']:.3f} "
          f"k-reciprocal {first['k-reciprocal']['mAP']:.3f}"
          f"{' (' + REAL_TITLES[REAL_TEST_SETS[0]] + ')' if level == 'real' else ''} "
          f"({how}, {record['seconds']:.0f} s)", flush=True)
    return record


def _score_real(model, data: dict[str, Any], extended: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every protocol on each test set: ``{set: {protocol: {mAP, rank1}}}``, and the per-query APs
    of ``PER_QUERY_PROTOCOLS`` with each set's size."""
    scores: dict[str, Any] = {}
    per_query: dict[str, Any] = {}
    sizes: dict[str, dict[str, int]] = {"num_queries": {}, "num_gallery": {}}
    for name, (q, g) in eval_sets("real", data, model).items():
        scores[name] = score_model(model, q, g, extended=extended)
        per_query[name] = _split_ap(scores[name], PER_QUERY_PROTOCOLS)
        if model.pr is not None:
            scores[name].update(pr_diagnostics(model, q, g))
        sizes["num_queries"][name], sizes["num_gallery"][name] = int(q[0].size(0)), int(g[0].size(0))
    return scores, {"per_query_ap": per_query, "sizes": sizes}


def run_study(level: str, study: str, results: Path, seeds: Sequence[int],
              only_rows: Sequence[str] | None = None) -> None:
    _, rows, variants = STUDIES[study]
    if only_rows:
        rows = [r for r in only_rows if r in rows]
    cache: dict[tuple[str, int], Any] = {}
    for seed in seeds:  # seed-major: one generated data set at a time
        for row in rows:
            for over in variants.values():
                run_one(level, row, seed, over, results, cache)
        cache.clear()


# ------------------------------------------------------------------------------------ gallery protocol
# Beyond the paper: the test protocols of ``rerank.protocol`` (hrnet_pyg.gallery), scored on the
# kept models of the rows with IR (``--study gallery``); label -> RerankConfig fields over the
# level's own protocol. Queries link to all Q + G images unless a label says "gallery-only
# neighbours", which is also the inductive form a gallery index serves (equal by construction:
# tests/test_index_gallery.py). No training of their own: one record per (level, row, seed,
# training variant) under ``<results>/gallery``, scored on the model that ``run_one`` keeps.
def _gallery(k: int, **fields: Any) -> dict[str, Any]:
    return dict(protocol="gallery", gallery_k=k, **fields)


GALLERY_PROTOCOLS: dict[str, dict[str, Any]] = {
    "own cosine": dict(protocol="none"),
    "paper": dict(protocol="paper"),
    "k-reciprocal": dict(protocol="kreciprocal"),
    **{f"gallery k={k}": _gallery(k) for k in (3, 5, 10, 20)},
    **{f"gallery k={k}, gallery-only neighbours": _gallery(k, gallery_neighbours="gallery") for k in (3, 5, 10, 20)},
    "gallery k=5, normalize=all": _gallery(5, gallery_normalize="all"),
    "gallery k=5, 2 rounds": _gallery(5, gallery_rounds=2),
    "gallery k=5, 2 rounds, same graph": _gallery(5, gallery_rounds=2, gallery_reuse_graph=True),
    "gallery k=5 + PR re-score (top-120)": _gallery(5, gallery_pr_shortlist=120),
    **{f"gallery+kreciprocal k={k}": dict(protocol="gallery+kreciprocal", gallery_k=k) for k in (3, 5, 10)},
    "gallery+kreciprocal k=5, gallery-only neighbours":
        dict(protocol="gallery+kreciprocal", gallery_k=5, gallery_neighbours="gallery"),
}
GALLERY_ROWS = ("HRNet", "CNN+IR+CNC")
# The training variants scored beside the defaults: those of the studies that train the IR layer
# for test graphs like these ("negatives"), on their rows.
GALLERY_TRAINING = ("negatives",)
# The report's choices: (title, [(reference, alternative), ...]), each pair a paired difference.
GALLERY_CHOICES: list[tuple[str, list[tuple[str, str]]]] = [
    ("k of the test graph", [("gallery k=5", f"gallery k={k}") for k in (3, 10, 20)]),
    ("Queries linking to each other (Q + G) or only to the gallery; transductive against inductive",
     [(f"gallery k={k}", f"gallery k={k}, gallery-only neighbours") for k in (3, 5, 10, 20)]),
    ("Eq. 2's normalisation at test time (the layer's own: over the k neighbours)",
     [("gallery k=5", "gallery k=5, normalize=all")]),
    ("With and without the PR module (a re-score of the top-120 by BN(V'))",
     [("gallery k=5", "gallery k=5 + PR re-score (top-120)")]),
    ("With and without k-reciprocal on top (k-reciprocal of BN(V'))",
     [(f"gallery k={k}", f"gallery+kreciprocal k={k}") for k in (3, 5, 10)]
     + [("gallery k=5, gallery-only neighbours", "gallery+kreciprocal k=5, gallery-only neighbours"),
        ("k-reciprocal", "gallery+kreciprocal k=5")]),
    ("One round against two", [("gallery k=5", "gallery k=5, 2 rounds"),
                               ("gallery k=5", "gallery k=5, 2 rounds, same graph")]),
]


def _gallery_variants(row: str) -> dict[str, dict[str, Any]]:
    """Training variant label -> overrides of ``row`` that the gallery study scores: the defaults first."""
    out: dict[str, dict[str, Any]] = {"defaults": {}}
    for study in GALLERY_TRAINING:
        _, rows, variants = STUDIES[study]
        if row in rows:
            out.update({label: over for label, over in variants.items() if over})
    return out


def _gallery_protocols(level: str) -> dict[str, dict[str, Any]]:
    """Label -> the RerankConfig fields that each protocol reads at ``level``
    (``RerankConfig.used_fields``; a record is stale when they change)."""
    base = _rerank_config(level, {})
    out = {}
    for label, fields in GALLERY_PROTOCOLS.items():
        cfg = base.replace(**fields)
        out[label] = {name: getattr(cfg, name) for name in cfg.used_fields()}
    return out


def run_gallery_one(level: str, row: str, seed: int, overrides: dict[str, Any], results: Path,
                    cache: dict[tuple[str, int], Any]) -> dict[str, Any]:
    """Every protocol of ``GALLERY_PROTOCOLS`` on the kept model of (level, row, seed, variant),
    on each of the level's test sets; a record of today's protocols is returned as it is."""
    from hrnet_pyg.rerank import relational_rerank
    from hrnet_pyg.runtime import atomic_write

    key = _key(level, row, seed, overrides)
    path = results / "gallery" / f"{key}.json"
    protocols = _gallery_protocols(level)
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous.get("protocols") == protocols:
            return previous
    if (level, seed) not in cache:
        cache[(level, seed)] = _level_data(level, seed, results)
    data = cache[(level, seed)]
    t0 = time.perf_counter()
    model, how = kept_model(level, row, seed, overrides, results, data)
    scores: dict[str, dict[str, dict[str, float]]] = {}
    sizes: dict[str, dict[str, int]] = {"num_queries": {}, "num_gallery": {}}
    with torch.no_grad():
        for name, (q, g) in eval_sets(level, data, model).items():
            scores[name] = {}
            for label, fields in protocols.items():
                if fields.get("gallery_pr_shortlist") and model.pr is None:
                    continue  # a re-score by the PR module: rows without it have none
                t1 = time.perf_counter()
                dist = relational_rerank(model, q[0], g[0], RerankConfig.from_dict(fields), device="cpu",
                                         progress=False)
                scores[name][label] = {**_rank(dist, q, g), "seconds": time.perf_counter() - t1}
            _split_ap(scores[name])
            sizes["num_queries"][name], sizes["num_gallery"][name] = int(q[0].size(0)), int(g[0].size(0))
    record = dict(key=key, level=level, row=row, seed=seed, overrides=overrides, protocols=protocols,
                  scores=scores, **sizes, model=how, seconds=time.perf_counter() - t0)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: fh.write(json.dumps(record, indent=1, default=str)), mode="w")
    first = next(iter(scores.values()))
    print(f"{level} {row} seed {seed} {overrides or ''}: gallery study, cosine {first['own cosine']['mAP']:.3f} "
          f"paper {first['paper']['mAP']:.3f} gallery k=5 {first['gallery k=5']['mAP']:.3f} "
          f"k-reciprocal {first['k-reciprocal']['mAP']:.3f} ({how}; {record['seconds']:.0f} s)", flush=True)
    return record


def run_gallery(level: str, results: Path, seeds: Sequence[int], only_rows: Sequence[str] | None = None) -> None:
    rows = [r for r in only_rows if r in GALLERY_ROWS] if only_rows else list(GALLERY_ROWS)
    cache: dict[tuple[str, int], Any] = {}
    for seed in seeds:
        for row in rows:
            for over in _gallery_variants(row).values():
                run_gallery_one(level, row, seed, over, results, cache)
        cache.clear()


# ------------------------------------------------------------------------------------ report
def _load(results: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd


def _fmt(values: Sequence[float]) -> str:
    if not values:
        return "-"
    m, sd = _mean_std([100 * v for v in values])
    return f"{m:.1f} ± {sd:.1f}"


def _cells(records: list[dict[str, Any]], protocol: str) -> tuple[str, str]:
    hits = [r["scores"][protocol] for r in records if protocol in r["scores"]]
    return _fmt([h["mAP"] for h in hits]), _fmt([h["rank1"] for h in hits])


def _select(records, level, row, overrides) -> list[dict[str, Any]]:
    # The runs of exactly this resolved config (today's defaults), whatever label they ran under.
    keys = {_key(level, row, seed, overrides) for seed in range(16)}
    return [r for r in records if r.get("key") in keys and _current(r, overrides)]


def _rows_table(records, level: str, rows: Sequence[tuple[str, str, dict[str, Any]]],
                headers: Sequence[str], cells: Callable[[str, list[dict[str, Any]]], list[str]]) -> str:
    """One markdown line per (row, variant) with runs on disk; ``cells(row, runs)`` fills it."""
    lines = ["| row | variant | seeds | " + " | ".join(headers) + " |", "|" + "---|" * (3 + len(headers))]
    for row, label, over in rows:
        sel = _select(records, level, row, over)
        if sel:
            lines.append(f"| {row} | {label} | {len(sel)} | " + " | ".join(cells(row, sel)) + " |")
    return "\n".join(lines)


def table(records, level: str, rows: Sequence[tuple[str, str, dict[str, Any]]],
          protocols: Sequence[tuple[str, str]]) -> str:
    def cells(row: str, sel: list[dict[str, Any]]) -> list[str]:
        out: list[str] = []
        for proto, _ in protocols:  # the CNN row has no graph module: its ranking is its cosine
            use = proto if row != "CNN" or proto in ("cosine", "k-reciprocal") else "cosine"
            out += list(_cells(sel, use))
        return out

    headers = [h for _, t in protocols for h in (f"{t} mAP", f"{t} R1")]
    return _rows_table(records, level, rows, headers, cells)


MAIN_PROTOCOLS = [("cosine", "own cosine"), ("relational", "relational re-ranking"),
                  ("k-reciprocal", "k-reciprocal"), ("relational after k-reciprocal", "relational after k-recip.")]


def report(results: Path, out: Path) -> str:
    records = _load(results)
    parts: list[str] = real_report([r for r in records if r["level"] == "real"])
    for level in ("feature", "image"):
        recs = [r for r in records if r["level"] == level]
        if not recs:
            continue
        sample = recs[0]
        data = (f"the synthetic images of `hrnet_pyg.data.synthetic` with `{LEVELS['image']['data']}`"
                if level == "image" else sample["data"])
        parts.append(f"## {level.capitalize()} level\n\nData: {data}; "
                     f"{sample['num_queries']} queries, {sample['num_gallery']} gallery images. "
                     f"Training: `{LEVELS[level]['model']}` on top of each row's switches.\n")
        for study, (what, rows, variants) in STUDIES.items():
            spec = [(row, label, over) for row in rows for label, over in variants.items()]
            own = [(row, label, over) for row, label, over in spec
                   if _key(level, row, 0, over) != _key(level, row, 0, {})]
            if study != "main" and table(recs, level, own, MAIN_PROTOCOLS).count("\n") < 2:
                continue  # no run of this study differs from the defaults at this level
            if study in ("eq2", "cnc", "prhead", "igp"):  # the defaults' models are the reference
                spec = [(row, "defaults", {}) for row in rows] + spec
            body = table(recs, level, spec, MAIN_PROTOCOLS)
            parts.append(f"### {what}\n\n`python experiments/efficacy.py --level {level} --study {study}`\n\n{body}\n")
        main = [(row, "defaults", {}) for row in ROWS]
        terms, fusions, weights = REPORT_TERMS, REPORT_FUSIONS, REPORT_WEIGHTS
        shortlist, fig4, diag = REPORT_SHORTLIST, REPORT_FIG4, REPORT_DIAG
        pr_rows = [(r, "defaults", {}) for r in ("CNN+PR+IGP", "HRNet")]
        literal = [(r, "paper-literal", STUDIES["paper"][2]["paper-literal"]) for r in ("CNN+PR+IGP", "HRNet")]
        extra = [
            ("The issue's inequalities, seed by seed (the defaults)", _paired_table(recs, level)),
            ("Each module's similarity alone (the defaults' models)", table(recs, level, main[1:], terms)),
            ("Fusion: which similarities are added, normalised how (HRNet, the defaults' models, "
             "the two terms as equals)", _transposed(recs, level, "HRNet", {}, fusions)),
            ("Fusion: the PR term's weight after the z-score (HRNet, the defaults' models; `rerank.pr_weight`)",
             _transposed(recs, level, "HRNet", {}, weights, "fusion (IR term + weight x PR term)")),
            ("The test graph: shortlist length and source (the defaults' models)",
             table(recs, level, main[1:], shortlist)),
            ("Fig. 4's end point: pr_edges = 66 at test time (the defaults' models)",
             table(recs, level, pr_rows, fig4)),
            ("PR branch diagnostics (mean over seeds of each value; `pr_diagnostics`)",
             _diag_table(recs, level, pr_rows + literal, diag)),
        ]
        for title, body in extra:
            if body.count("\n") >= 2 and "| - |" not in body.split("\n")[2][:12]:
                command = f"python experiments/efficacy.py --level {level} --study main"
                parts.append(f"### {title}\n\n`{command}`\n\n{body}\n")
    parts += gallery_report(results)
    text = "\n".join(parts)
    marker = "<!-- tables: generated by experiments/efficacy.py --report -->"
    if out.is_file() and marker in out.read_text():
        head = out.read_text().split(marker)[0]
        out.write_text(head + marker + "\n\n" + text)
    return text


# ------------------------------------------------------------------------------------ gallery report
GALLERY_SETS = {"features": "feature level", "synthetic": "image level",
                **{name: f"real level, {title}" for name, title in REAL_TITLES.items()}}


def _signed(values: Sequence[float]) -> str:
    m, sd = _mean_std(values)
    return f"{m:+.1f} ± {sd:.1f}"


def _gallery_groups(results: Path) -> dict[tuple[str, str, str], dict[int, dict[str, dict[str, float]]]]:
    """(test set, row, training variant) -> seed -> protocol -> {mAP, rank1} of the gallery study's
    current records (today's training configs and protocols), in the report's order."""
    records = [json.loads(p.read_text()) for p in sorted((results / "gallery").glob("*.json"))]
    protocols = {level: _gallery_protocols(level) for level in LEVELS}
    records = [r for r in records if r.get("protocols") == protocols.get(r["level"])]
    groups: dict[tuple[str, str, str], dict[int, dict[str, dict[str, float]]]] = {}
    for name in GALLERY_SETS:
        for row in GALLERY_ROWS:
            for label, over in _gallery_variants(row).items():
                for r in records:
                    if r["row"] == row and name in r["scores"] and r["key"] == _key(r["level"], row, r["seed"], over):
                        groups.setdefault((name, row, label), {})[r["seed"]] = r["scores"][name]
    return groups


def _diffs(by_seed: dict[int, dict[str, dict[str, float]]], a: str, b: str,
           other: dict[int, dict[str, dict[str, float]]] | None = None) -> list[float]:
    """mAP of protocol ``a`` minus that of ``b`` (of ``other``'s model when given), seed by seed, in points."""
    other = other or by_seed
    seeds = sorted(s for s in by_seed if s in other and a in by_seed[s] and b in other[s])
    return [100 * (by_seed[s][a]["mAP"] - other[s][b]["mAP"]) for s in seeds]


def _default_label() -> str:
    return next(label for label, fields in GALLERY_PROTOCOLS.items() if fields == {"protocol": DEFAULT_PROTOCOL})


def gallery_report(results: Path) -> list[str]:
    """The gallery study's section: the two questions, a table per choice, the training variants,
    then every protocol seed by seed for each test set and row."""
    groups = _gallery_groups(results)
    if not groups:
        return []
    command = "python experiments/efficacy.py --level {feature,image,real} --study gallery"
    defaults = {k: v for k, v in groups.items() if k[2] == "defaults"}
    parts = ["## The gallery-graph protocol (`--study gallery`)\n\nEvery protocol of `GALLERY_PROTOCOLS` "
             "(experiments/efficacy.py) on the models of the tables above (the rows with IR; seeds / splits "
             "as listed). mAP in points; paired differences are taken seed by seed on the same model.\n"]
    relational = [label for label in GALLERY_PROTOCOLS if label not in ("own cosine", "k-reciprocal")]
    lines = ["| test set | row | seeds | best relational protocol (mean mAP) | mAP | - k-reciprocal, seed by seed | "
             "mean ± std | beyond 2 std | >= +1.5 |", "|---|---|---|---|---|---|---|---|---|"]
    for (name, row, _), by_seed in defaults.items():
        seeds = sorted(by_seed)
        means = {label: _mean_std([100 * by_seed[s][label]["mAP"] for s in seeds])[0] for label in relational
                 if all(label in by_seed[s] for s in seeds)}
        best = max(means, key=means.__getitem__)
        d = _diffs(by_seed, best, "k-reciprocal")
        m, sd = _mean_std(d)
        lines.append(f"| {GALLERY_SETS[name]} | {row} | {len(seeds)} | {best} | {means[best]:.1f} | "
                     f"{' '.join(f'{x:+.1f}' for x in d)} | {m:+.1f} ± {sd:.1f} | "
                     f"{'yes' if m > 2 * sd else 'no'} | {'yes' if m >= 1.5 else 'no'} |")
    parts.append("### Does the best relational protocol beat k-reciprocal of the same features?\n\n"
                 f"`{command}`\n\n" + "\n".join(lines) + "\n")
    default = _default_label()
    lines = [f"| test set | row | seeds | default (`{default}`) - own cosine, seed by seed | mean ± std | "
             "seeds below | gallery k=5 - own cosine, seed by seed | mean ± std | seeds below |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (name, row, _), by_seed in defaults.items():
        cells = []
        for label in (default, "gallery k=5"):
            d = _diffs(by_seed, label, "own cosine")
            cells += [" ".join(f"{x:+.1f}" for x in d), _signed(d), f"{sum(x < 0 for x in d)}/{len(d)}"]
        lines.append(f"| {GALLERY_SETS[name]} | {row} | {len(by_seed)} | " + " | ".join(cells) + " |")
    parts.append("### Does the default rank below the own cosine?\n\n"
                 f"`{command}`\n\n" + "\n".join(lines) + "\n")
    for title, pairs in GALLERY_CHOICES:
        lines = ["| test set | row | seeds | " + " | ".join(f"{alt} - {ref}" for ref, alt in pairs) + " |",
                 "|---|---|---|" + "---|" * len(pairs)]
        for (name, row, _), by_seed in defaults.items():
            cells = []
            for ref, alt in pairs:
                d = _diffs(by_seed, alt, ref)
                cells.append(f"{_signed(d)} ({sum(x > 0 for x in d)}/{len(d)} up)" if d else "-")
            if any(c != "-" for c in cells):
                lines.append(f"| {GALLERY_SETS[name]} | {row} | {len(by_seed)} | " + " | ".join(cells) + " |")
        parts.append(f"### Choice: {title}\n\nmAP difference, mean ± std over seeds (seeds up).\n\n"
                     f"`{command}`\n\n" + "\n".join(lines) + "\n")
    for name_row_label in sorted({(row, label) for (_, row, label) in groups if label != "defaults"}):
        row, label = name_row_label
        sets = [name for name in GALLERY_SETS if (name, row, label) in groups and (name, row, "defaults") in groups]
        lines = ["| protocol | " + " | ".join(GALLERY_SETS[n] for n in sets) + " |", "|---|" + "---|" * len(sets)]
        for proto in GALLERY_PROTOCOLS:
            cells = [_diffs(groups[(n, row, label)], proto, proto, groups[(n, row, "defaults")]) for n in sets]
            if any(cells):
                lines.append(f"| {proto} | " + " | ".join(_signed(d) if d else "-" for d in cells) + " |")
        study = next(s for s in GALLERY_TRAINING if label in STUDIES[s][2])
        parts.append(f"### Training variant: {row}, {label} - defaults, paired\n\nmAP difference, mean ± std over "
                     f"seeds.\n\n`python experiments/efficacy.py --level {{feature,image,real}} --study {study}` "
                     f"(training), then `--study gallery`\n\n" + "\n".join(lines) + "\n")
    for (name, row, label), by_seed in groups.items():
        seeds = sorted(by_seed)
        lines = ["| protocol | " + " | ".join(f"seed {s} mAP / R1" for s in seeds)
                 + " | mAP mean ± std | R1 mean ± std | - k-reciprocal, paired | - own cosine, paired |",
                 "|---|" + "---|" * (len(seeds) + 4)]
        for proto in GALLERY_PROTOCOLS:
            if not all(proto in by_seed[s] for s in seeds):
                continue
            hits = [by_seed[s][proto] for s in seeds]
            paired = [_signed(_diffs(by_seed, proto, base)) for base in ("k-reciprocal", "own cosine")]
            lines.append(f"| {proto} | " + " | ".join(f"{100 * h['mAP']:.1f} / {100 * h['rank1']:.1f}" for h in hits)
                         + f" | {_fmt([h['mAP'] for h in hits])} | {_fmt([h['rank1'] for h in hits])} | "
                         f"{paired[0]} | {paired[1]} |")
        variant = "" if label == "defaults" else f", {label}"
        parts.append(f"### Every protocol: {row}{variant}, {GALLERY_SETS[name]}\n\n`{command}`\n\n"
                     + "\n".join(lines) + "\n")
    return parts


# ------------------------------------------------------------------------------------ real level
def _view(records: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """Real-level records as seen on test set ``name`` (their ``scores`` of that set)."""
    return [dict(r, scores=r["scores"][name]) for r in records if name in r.get("scores", {})]


def _across(records, row: str, over: dict[str, Any], protocols, what: str = "protocol") -> str:
    """mAP (mean ± std over splits) of one (row, variant) under each protocol, a column per test set."""
    sel = _select(records, "real", row, over)
    if not sel:
        return ""
    lines = [f"| {what} | splits | " + " | ".join(f"{REAL_TITLES[n]} mAP" for n in REAL_TEST_SETS) + " |",
             "|---|---|" + "---|" * len(REAL_TEST_SETS)]
    for proto, label in protocols:
        cells = [_cells(_view(sel, n), proto)[0] for n in REAL_TEST_SETS]
        lines.append(f"| {label} | {len(sel)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _real_paired(records) -> str:
    """The issue's inequalities on each test set: mean ± std over splits of the mAP difference,
    and on how many splits it is positive."""
    by_seed = {row: {r["seed"]: r["scores"] for r in _select(records, "real", row, {})} for row in ROWS}
    seeds = sorted(set.intersection(*(set(v) for v in by_seed.values()))) if all(by_seed.values()) else []
    if not seeds:
        return ""
    lines = ["| mAP difference (points), mean ± std over splits (splits > 0) | "
             + " | ".join(REAL_TITLES[n] for n in REAL_TEST_SETS) + " |",
             "|---|" + "---|" * len(REAL_TEST_SETS)]
    for label, (row_a, proto_a), (row_b, proto_b) in PAIRED:
        cells = []
        for n in REAL_TEST_SETS:
            diffs = [100 * (by_seed[row_a][s][n][proto_a]["mAP"] - by_seed[row_b][s][n][proto_b]["mAP"])
                     for s in seeds]
            m, sd = _mean_std(diffs)
            cells.append(f"{m:+.2f} ± {sd:.2f} ({sum(d > 0 for d in diffs)}/{len(diffs)})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Query by query, the splits pooled: (label, (row, protocol), (row, protocol)).
PER_QUERY = [
    ("HRNet: relational - own cosine", ("HRNet", "relational"), ("HRNet", "cosine")),
    ("HRNet: relational - k-reciprocal", ("HRNet", "relational"), ("HRNet", "k-reciprocal")),
    ("HRNet: relational after k-reciprocal - k-reciprocal", ("HRNet", "relational after k-reciprocal"),
     ("HRNet", "k-reciprocal")),
    ("CNN+IR+CNC: relational - own cosine", ("CNN+IR+CNC", "relational"), ("CNN+IR+CNC", "cosine")),
    ("CNN+PR+IGP: relational - own cosine", ("CNN+PR+IGP", "relational"), ("CNN+PR+IGP", "cosine")),
    ("CNN: k-reciprocal - own cosine", ("CNN", "k-reciprocal"), ("CNN", "cosine")),
]


def _real_per_query(records) -> str:
    """Per-query AP differences between two protocols of the same models (the splits pooled): the
    mean in points with a 95% interval (normal approximation over queries) and how many queries
    gain / lose."""
    by_seed = {row: {r["seed"]: r.get("per_query_ap", {}) for r in _select(records, "real", row, {})}
               for row in ROWS}
    lines = ["| AP difference, queries of all splits pooled: mean [95% interval] (queries up / down) | "
             + " | ".join(REAL_TITLES[n] for n in REAL_TEST_SETS) + " |",
             "|---|" + "---|" * len(REAL_TEST_SETS)]
    for label, (row_a, proto_a), (row_b, proto_b) in PER_QUERY:
        seeds = sorted(set(by_seed[row_a]) & set(by_seed[row_b]))
        cells = []
        for n in REAL_TEST_SETS:
            diffs = []
            for s in seeds:  # the same split's queries, in the same order
                ap_a = by_seed[row_a][s].get(n, {}).get(proto_a)
                ap_b = by_seed[row_b][s].get(n, {}).get(proto_b)
                if ap_a and ap_b:
                    diffs += [100 * (a - b) for a, b in zip(ap_a, ap_b, strict=True)
                              if a is not None and b is not None]
            if len(diffs) < 2:
                cells.append("-")
                continue
            m, sd = _mean_std(diffs)
            half = 1.96 * sd / math.sqrt(len(diffs))
            up, down = sum(d > 1e-9 for d in diffs), sum(d < -1e-9 for d in diffs)
            cells.append(f"{m:+.2f} [{m - half:+.2f}, {m + half:+.2f}] ({up} / {down})")
        if any(c != "-" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _real_timing(records) -> str:
    """Wall and CPU time of the defaults' runs (the main table), per row and in all."""
    lines = ["| row | runs | train wall (min) | train CPU (min) | eval wall (min) | eval CPU (min) | "
             "s per epoch (wall) | load average |", "|---|---|---|---|---|---|---|---|"]
    total = dict(tw=0.0, tc=0.0, ew=0.0, ec=0.0, n=0)
    for row in ROWS:
        sel = [r for r in _select(records, "real", row, {}) if "timing" in r]
        if not sel:
            continue
        t = {k: sum(r["timing"][k] for r in sel) for k in
             ("train_seconds", "train_cpu_seconds", "eval_seconds", "eval_cpu_seconds")}
        epochs = sum(len(r.get("history", [])) for r in sel)
        load = sum(r["timing"]["loadavg_start"] + r["timing"]["loadavg_end"] for r in sel) / (2 * len(sel))
        lines.append(f"| {row} | {len(sel)} | {t['train_seconds'] / 60:.1f} | {t['train_cpu_seconds'] / 60:.1f} | "
                     f"{t['eval_seconds'] / 60:.1f} | {t['eval_cpu_seconds'] / 60:.1f} | "
                     f"{t['train_seconds'] / max(epochs, 1):.0f} | {load:.1f} |")
        total["tw"] += t["train_seconds"]
        total["tc"] += t["train_cpu_seconds"]
        total["ew"] += t["eval_seconds"]
        total["ec"] += t["eval_cpu_seconds"]
        total["n"] += len(sel)
    if not total["n"]:
        return ""
    lines.append(f"| all | {total['n']} | {total['tw'] / 60:.1f} | {total['tc'] / 60:.1f} | {total['ew'] / 60:.1f} | "
                 f"{total['ec'] / 60:.1f} | | |")
    hours = (total["tw"] + total["ew"]) / 3600, (total["tc"] + total["ec"]) / 3600
    threads = sorted({r["timing"]["threads"] for row in ROWS for r in _select(records, "real", row, {})
                      if "timing" in r})
    return "\n".join(lines) + (f"\n\nIn all, run after run: {hours[0]:.2f} h wall, {hours[1]:.2f} h of CPU time "
                                f"(torch threads per run: {', '.join(map(str, threads))}).")


def real_report(records: list[dict[str, Any]]) -> list[str]:
    """The real level's section of the document: a table per test set, then the comparisons."""
    if not records:
        return []
    command = "python experiments/efficacy.py --level real --study main"
    sample = records[0]
    spec = LEVELS["real"]
    parts = [f"## Real level\n\nData: `{spec['data']['name']}` (split = seed) from `../shared/data/reid-small`, "
             f"trained once per row and split, scored on each member's test set of that split. "
             f"Training: `{spec['model']}` on top of each row's switches (random-init rows: "
             f"`pretrained=False`).\n"]
    timing = _real_timing(records)
    if timing:
        parts.append(f"### Time of the main table (the defaults' runs)\n\n`{command}`\n\n{timing}\n")
    variants = [(row, "defaults", {}) for row in ROWS]
    variants += [(row, label, over) for study in ("scratch", "paper") for row in STUDIES[study][1]
                 for label, over in STUDIES[study][2].items()]
    for name in REAL_TEST_SETS:
        view = _view(records, name)
        if not view:
            continue
        size = f"{sample['num_queries'][name]} queries, {sample['num_gallery'][name]} gallery images"
        body = table(view, "real", variants, MAIN_PROTOCOLS)
        parts.append(f"### {REAL_TITLES[name]} ({size})\n\n`{command}` (random init: `--study scratch`, "
                     f"paper-literal: `--study paper`)\n\n{body}\n")
    terms = [("cosine", "own cosine"), *REPORT_TERMS]
    fusions, weights, shortlist, fig4, diag = REPORT_FUSIONS, REPORT_WEIGHTS, REPORT_SHORTLIST, REPORT_FIG4, REPORT_DIAG
    extra = [("The issue's inequalities, split by split (the defaults)", _real_paired(records)),
             ("Query by query (the defaults' models; per-query APs of the records)", _real_per_query(records))]
    for row in ROWS[1:]:
        extra.append((f"Each module's similarity alone: {row}", _across(records, row, {}, terms, "similarity")))
    extra += [
        ("Fusion: which similarities are added, normalised how (HRNet, the two terms as equals)",
         _across(records, "HRNet", {}, fusions, "fusion (IR term + PR term, normalisation)")),
        ("Fusion: the PR term's weight after the z-score (HRNet; `rerank.pr_weight`)",
         _across(records, "HRNet", {}, weights, "fusion (IR term + weight x PR term)")),
    ]
    for row in ROWS[1:]:
        extra.append((f"The test graph: shortlist length and source ({row})",
                      _across(records, row, {}, shortlist, "shortlist")))
    for row in ("CNN+PR+IGP", "HRNet"):
        extra.append((f"Fig. 4's end point: pr_edges = 66 at test time ({row})",
                      _across(records, row, {}, fig4, "pair graph at test")))
    for name in REAL_TEST_SETS:
        pr_rows = [(r, "defaults", {}) for r in ("CNN+PR+IGP", "HRNet")]
        extra.append((f"PR branch diagnostics on {REAL_TITLES[name]} (mean over splits; `pr_diagnostics`)",
                      _diag_table(_view(records, name), "real", pr_rows, diag)))
    for title, body in extra:
        if body.count("\n") >= 2:
            parts.append(f"### {title}\n\n`{command}`\n\n{body}\n")
    return parts


# The inequalities seed by seed: (label, (row, protocol), (row, protocol)); seed s of one
# row and seed s of another share the generated data of seed s (not the initialisation).
PAIRED = [
    ("HRNet: relational re-ranking - its own cosine", ("HRNet", "relational"), ("HRNet", "cosine")),
    ("HRNet: relational re-ranking - its IR term alone", ("HRNet", "relational"), ("HRNet", "term ir_bn_cosine")),
    ("HRNet: relational re-ranking - its PR term alone", ("HRNet", "relational"), ("HRNet", "term pr_prob")),
    ("HRNet - CNN+IR+CNC (relational re-ranking)", ("HRNet", "relational"), ("CNN+IR+CNC", "relational")),
    ("HRNet - CNN+PR+IGP (relational re-ranking)", ("HRNet", "relational"), ("CNN+PR+IGP", "relational")),
    ("CNN+IR+CNC (relational) - CNN (cosine)", ("CNN+IR+CNC", "relational"), ("CNN", "cosine")),
    ("CNN+PR+IGP (relational) - CNN (cosine)", ("CNN+PR+IGP", "relational"), ("CNN", "cosine")),
    ("HRNet: relational re-ranking - k-reciprocal of its features", ("HRNet", "relational"),
     ("HRNet", "k-reciprocal")),
]


def _paired_table(records, level: str) -> str:
    by_seed = {row: {r["seed"]: r["scores"] for r in _select(records, level, row, {})} for row in ROWS}
    seeds = sorted(set.intersection(*(set(v) for v in by_seed.values()))) if all(by_seed.values()) else []
    if not seeds:
        return ""
    lines = ["| mAP difference (points) | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |",
             "|---|" + "---|" * (len(seeds) + 1)]
    for label, (row_a, proto_a), (row_b, proto_b) in PAIRED:
        diffs = [100 * (by_seed[row_a][s][proto_a]["mAP"] - by_seed[row_b][s][proto_b]["mAP"]) for s in seeds]
        m, sd = _mean_std(diffs)
        lines.append(f"| {label} | " + " | ".join(f"{d:+.2f}" for d in diffs) + f" | {m:+.2f} ± {sd:.2f} |")
    return "\n".join(lines)


def _diag_table(records, level: str, rows, protocols) -> str:
    def cells(row: str, sel: list[dict[str, Any]]) -> list[str]:
        out = []
        for proto, _ in protocols:
            vals = [r["scores"][proto]["mAP"] for r in sel if proto in r["scores"]]
            out.append(f"{sum(vals) / len(vals):.3f}" if vals else "-")
        return out

    return _rows_table(records, level, rows, [t for _, t in protocols], cells)


def _transposed(records, level: str, row: str, over: dict[str, Any], protocols,
                what: str = "fusion (IR term + PR term, normalisation)") -> str:
    sel = _select(records, level, row, over)
    lines = [f"| {what} | seeds | mAP | R1 |", "|---|---|---|---|"]
    if not sel:
        return ""
    for proto, label in protocols:
        m, r1 = _cells(sel, proto)
        lines.append(f"| {label} | {len(sel)} | {m} | {r1} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--level", choices=tuple(LEVELS), default="feature", help="feature, image or real level")
    p.add_argument(
        "--study", default="main",
        help=f"comma-separated studies ({', '.join(STUDIES)}, gallery) or 'all' (default: main); gallery: "
             "the test protocols of rerank.protocol on the kept models of the rows with IR"
    )
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds (default: 0,1,2)")
    p.add_argument(
        "--rows", default=None, help="comma-separated Table 1 rows to run, in this order (default: each study's rows)"
    )
    p.add_argument("--results", type=Path, default=Path("results/efficacy"), help="one JSON per run")
    p.add_argument("--doc", type=Path, default=Path("docs/efficacy.md"), help="document whose tables are rewritten")
    p.add_argument("--report", action="store_true", help="only rewrite the tables from the results on disk")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--shared-data", type=Path, default=None,
        help="the real level's data folder, holding reid-small/ and weights/ "
             "(default: $HRNET_PYG_SHARED_DATA, else ../shared/data beside the repository)",
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke-test sizes (the code path of the study; the numbers mean nothing)"
    )
    args = p.parse_args(argv)
    global SHARED_DATA
    if args.quick:
        LEVELS.update(QUICK_LEVELS)
        TRAIN_LIMITS.update(QUICK_TRAIN_LIMITS)
    if args.shared_data is not None:
        SHARED_DATA = args.shared_data
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.report:
        studies = [*STUDIES, "gallery"] if args.study == "all" else args.study.split(",")
        for s in studies:
            if s not in STUDIES and s != "gallery":
                p.error(f"unknown study {s!r}; valid: {', '.join(STUDIES)}, gallery or all")
        seeds = [int(s) for s in args.seeds.split(",")]
        rows = args.rows.split(",") if args.rows else None
        missing = check_shared_data(args.level)
        if missing:
            p.error(missing)
        for s in studies:
            if s == "gallery":
                run_gallery(args.level, args.results, seeds, rows)
            else:
                run_study(args.level, s, args.results, seeds, rows)
    print(report(args.results, args.doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
