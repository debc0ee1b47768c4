"""The test protocol as its own config (hrnet_pyg.protocol.RerankConfig): one validator driven by the
fields' annotations, the rerank: section of an experiment, checkpoints that store it, and the
former layout (top_k_rerank / rerank_* among HRNetConfig's fields) still loading with one
deprecation line."""
from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import torch
import yaml

from hrnet_pyg.config import LEGACY_RERANK_FIELDS, ConfigError, HRNetConfig
from hrnet_pyg.experiment import load_experiment, parse_overrides
from hrnet_pyg.protocol import Protocol, RerankConfig

ROOT = Path(__file__).resolve().parents[1]
D = 16
LITERAL = RerankConfig.paper_literal()


def deprecations(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "hrnet_pyg" and "deprecated" in r.getMessage()]


# ---------------------------------------------------------------------------- the dataclass
def test_defaults_are_the_measured_protocol_and_paper_literal_is_sec_4_2():
    assert RerankConfig() == RerankConfig(shortlist=120, ir_score="ir_bn_cosine", pr_score="pr_prob", norm="zscore",
                                          pr_weight=0.25)
    assert LITERAL == RerankConfig(shortlist=120, ir_score="ir_cosine", pr_score="pr_prob", norm="none",
                                   pr_weight=1.0)
    assert RerankConfig.paper_literal(shortlist=60).shortlist == 60


def test_valid_values_come_from_the_annotations():
    hints = typing.get_type_hints(RerankConfig)
    for name in ("ir_score", "pr_score", "norm"):
        assert RerankConfig.choices(name) == typing.get_args(hints[name])
    assert RerankConfig.choices("norm") == ("none", "zscore", "rank")
    with pytest.raises(TypeError, match="shortlist is not a Literal-typed field"):
        RerankConfig.choices("shortlist")


@pytest.mark.parametrize("field,value,message", [
    ("shortlist", 0, "rerank.shortlist: must be at least 1, got 0"),
    ("shortlist", -3, "rerank.shortlist: must be at least 1, got -3"),
    ("shortlist", "many", "rerank.shortlist: expected int, got 'many'"),
    ("shortlist", True, "rerank.shortlist: expected int, got True"),
    ("shortlist", 1.5, "rerank.shortlist: expected int, got 1.5"),
    ("ir_score", "cosine", "rerank.ir_score: expected one of 'ir_cosine', 'ir_bn_cosine', got 'cosine'"),
    ("ir_score", 1, "rerank.ir_score: expected one of 'ir_cosine', 'ir_bn_cosine', got 1"),
    ("pr_score", "pr_bce", "rerank.pr_score: expected one of 'pr_prob', 'pr_logit', got 'pr_bce'"),
    ("norm", "z", "rerank.norm: expected one of 'none', 'zscore', 'rank', got 'z'"),
    ("norm", None, "rerank.norm: expected one of 'none', 'zscore', 'rank', got None"),
    ("pr_weight", -0.5, "rerank.pr_weight: must be at least 0.0, got -0.5"),
    ("pr_weight", float("nan"), "rerank.pr_weight: must be a finite number, got nan"),
    ("pr_weight", math.inf, "rerank.pr_weight: must be a finite number, got inf"),
    ("pr_weight", "heavy", "rerank.pr_weight: expected float, got 'heavy'"),
    ("pr_weight", False, "rerank.pr_weight: expected float, got False"),
])
def test_every_field_is_checked_and_the_error_names_it(field, value, message):
    with pytest.raises(ConfigError) as err:
        RerankConfig(**{field: value})
    assert str(err.value) == message and err.value.field == field and err.value.section == "rerank"
    with pytest.raises(ValueError) as err:  # a mapping (a YAML section) names where it came from
        RerankConfig.from_dict({field: value}, where="exp.yaml: rerank")
    assert str(err.value) == "exp.yaml: " + message


def test_yaml_strings_are_coerced():
    values = yaml.safe_load("shortlist: '60'\npr_weight: 3e-1\nnorm: rank\n")
    assert values["pr_weight"] == "3e-1"  # YAML 1.1: a string
    assert RerankConfig.from_dict(values) == RerankConfig(shortlist=60, pr_weight=0.3, norm="rank")
    assert RerankConfig(pr_weight=1).pr_weight == 1.0 and isinstance(RerankConfig(pr_weight=1).pr_weight, float)


def test_unknown_keys_and_non_mappings_are_refused():
    with pytest.raises(ValueError, match=r"^rerank: unknown key\(s\) \['top_k'\]; valid keys: shortlist, ir_score, "
                                         r"pr_score, norm, pr_weight, protocol, gallery_k, gallery_neighbours, "
                                         r"gallery_normalize, gallery_rounds, gallery_reuse_graph, "
                                         r"gallery_pr_shortlist$"):
        RerankConfig.from_dict({"top_k": 5})
    with pytest.raises(ValueError, match="rerank must be a mapping"):
        RerankConfig.from_dict(5)  # type: ignore[arg-type]


def test_it_is_frozen_and_replace_validates():
    cfg = RerankConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.shortlist = 5  # type: ignore[misc]
    assert cfg.replace(norm="rank") == RerankConfig(norm="rank") and cfg.norm == "zscore"
    with pytest.raises(ConfigError, match="rerank.norm"):
        cfg.replace(norm="zz")
    assert RerankConfig.from_dict(cfg.to_dict()) == cfg and hash(cfg) == hash(RerankConfig())


@dataclass(frozen=True)
class _WithProtocol(RerankConfig):
    protocol: Literal["paper", "gallery"] = "paper"


def test_a_new_literal_field_needs_nothing_but_its_annotation():
    """What a later protocol switch (``protocol: paper | gallery | ...``) needs: the annotation alone."""
    assert _WithProtocol(protocol="gallery").protocol == "gallery"
    assert _WithProtocol.choices("protocol") == ("paper", "gallery")
    with pytest.raises(ConfigError, match=r"^rerank.protocol: expected one of 'paper', 'gallery', got 'both'$"):
        _WithProtocol(protocol="both")  # type: ignore[arg-type]
    assert _WithProtocol.from_dict({"protocol": "gallery", "shortlist": "7"}).shortlist == 7


def test_the_module_imports_no_torch():
    code = "import sys, hrnet_pyg.protocol, hrnet_pyg.config; assert 'torch' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT)})


def test_hrnet_config_has_no_test_protocol_field():
    names = {f.name for f in dataclasses.fields(HRNetConfig)}
    assert not names & (set(LEGACY_RERANK_FIELDS) | {f.name for f in dataclasses.fields(RerankConfig)})


# ---------------------------------------------------------------------------- experiment YAML
def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_rerank_section_of_an_experiment(tmp_path):
    path = write(tmp_path / "exp.yaml", f"_base_: {ROOT / 'experiments' / 'base.yaml'}\n"
                                        "rerank: {shortlist: 60, pr_weight: 5e-1}\n")
    exp = load_experiment(path)
    assert exp.rerank == RerankConfig(shortlist=60, pr_weight=0.5)
    assert exp.to_dict()["rerank"] == exp.rerank.to_dict() and list(exp.to_dict()) == ["data", "model", "rerank",
                                                                                      "run"]
    assert load_experiment(path, parse_overrides(["rerank.norm=rank"])).rerank.norm == "rank"
    assert load_experiment(None).rerank == RerankConfig()
    for text, message in [
        ("rerank: {norm: z}\n", f"{path}: rerank.norm: expected one of 'none', 'zscore', 'rank', got 'z'"),
        ("rerank: {shortlist: 0}\n", f"{path}: rerank.shortlist: must be at least 1, got 0"),
        ("rerank: {top_k: 5}\n", "unknown key(s) ['top_k']; valid keys: norm, pr_score, pr_weight, ir_score"),
        ("rerank: 5\n", f"{path}: section 'rerank' must be a mapping"),
    ]:
        write(path, text)
        with pytest.raises(ValueError) as err:
            load_experiment(path)
        if "unknown" in message:
            assert "rerank" in str(err.value) and "['top_k']" in str(err.value)
        else:
            assert str(err.value).startswith(message), str(err.value)
    with pytest.raises(ValueError, match=r"^--set rerank.pr_weight: must be at least 0.0, got -1.0$"):
        load_experiment(None, parse_overrides(["rerank.pr_weight=-1.0"]))


def test_a_yaml_of_the_former_layout_loads_with_one_deprecation_line(tmp_path, caplog):
    old = write(tmp_path / "old.yaml", f"_base_: {ROOT / 'experiments' / 'base.yaml'}\n"
                                       "model: {k: 8, top_k_rerank: 60, rerank_norm: none, rerank_pr_weight: '1e0'}\n")
    with caplog.at_level("WARNING", logger="hrnet_pyg"):
        exp = load_experiment(old)
    # the former fields win over the new-layout base's rerank section, whose other fields stay
    assert exp.rerank == RerankConfig(shortlist=60, norm="none", pr_weight=1.0)
    assert exp.model == HRNetConfig(k=8)
    assert deprecations(caplog) == [
        f"deprecated: {old}: model.top_k_rerank, model.rerank_norm, model.rerank_pr_weight: the test protocol has "
        "its own section now; read as rerank.shortlist, rerank.norm, rerank.pr_weight (hrnet_pyg.protocol.RerankConfig)"
    ]
    # the command line: --set model.rerank_* is read the same way; --set rerank.<field> wins over the file
    caplog.clear()
    with caplog.at_level("WARNING", logger="hrnet_pyg"):
        exp = load_experiment(old, parse_overrides(["model.rerank_ir_score=ir_cosine", "rerank.norm=rank"]))
    assert exp.rerank == RerankConfig(shortlist=60, ir_score="ir_cosine", norm="rank", pr_weight=1.0)
    assert len(deprecations(caplog)) == 2 and deprecations(caplog)[1].startswith(
        "deprecated: --set: model.rerank_ir_score: the test protocol has its own section now; read as rerank.ir_score")
    # a bad value under a former name fails like one under the new name
    write(old, "model: {rerank_norm: zz}\n")
    with pytest.raises(ValueError, match="rerank.norm: expected one of"):
        load_experiment(old)


def test_hrnet_config_from_dict_leaves_the_former_fields_out(caplog):
    values = {"k": 4, "top_k_rerank": 60, "rerank_ir_score": "ir_cosine"}
    with caplog.at_level("WARNING", logger="hrnet_pyg"):
        cfg = HRNetConfig.from_dict(values, where="old.yaml")
        protocol = RerankConfig.from_legacy(values, where="old.yaml")
    assert cfg == HRNetConfig(k=4) and protocol == RerankConfig(shortlist=60, ir_score="ir_cosine")
    assert len(deprecations(caplog)) == 2 and all("old.yaml: model.top_k_rerank" in m for m in deprecations(caplog))
    caplog.clear()
    assert RerankConfig.from_legacy({"k": 4}) == RerankConfig() and not deprecations(caplog)


# ---------------------------------------------------------------------------- checkpoints
def _model(rerank: RerankConfig | None = None):
    from hrnet_pyg import HRNet

    torch.manual_seed(0)
    cfg = HRNetConfig.from_row("HRNet", backbone=None, feat_dim=D, k=3, num_identities=3, num_instances=2,
                               pretrained=False)
    model = HRNet(cfg, num_classes=4, rerank_config=rerank)
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)):
            bn.running_mean.normal_(0.0, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _feats(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed)).relu_()


def test_a_checkpoint_stores_the_protocol_and_loads_it(tmp_path, caplog):
    from hrnet_pyg import HRNet
    from hrnet_pyg.runtime import load_checkpoint

    protocol = RerankConfig(shortlist=7, norm="rank", pr_weight=0.5)
    model = _model(protocol)
    model.save(tmp_path / "m.pth")
    payload = load_checkpoint(tmp_path / "m.pth")
    assert payload["rerank"] == protocol.to_dict() and not set(LEGACY_RERANK_FIELDS) & set(payload["config"])
    with caplog.at_level("WARNING", logger="hrnet_pyg"):
        loaded = HRNet.load(tmp_path / "m.pth")
    assert loaded.rerank_config == protocol and not deprecations(caplog)
    assert _model().rerank_config == RerankConfig()
    with pytest.raises(TypeError, match="rerank_config must be a RerankConfig"):
        HRNet(HRNetConfig(backbone=None, feat_dim=D), num_classes=3, rerank_config={"shortlist": 7})  # type: ignore
    payload["rerank"]["norm"] = "zz"
    torch.save(payload, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"^checkpoint .*bad.pth: rerank.norm: expected one of"):
        HRNet.load(tmp_path / "bad.pth")


def test_a_checkpoint_of_the_former_layout_keeps_its_protocol(tmp_path, caplog):
    """Written before the protocol had its own entry: the config's rerank_* fields are the model's
    protocol (one deprecation line), and it re-ranks exactly as a model given that protocol."""
    from hrnet_pyg import HRNet
    from hrnet_pyg.rerank import relational_rerank
    from hrnet_pyg.runtime import load_checkpoint

    model = _model()
    model.save(tmp_path / "new.pth")
    payload = load_checkpoint(tmp_path / "new.pth")
    del payload["rerank"]
    payload["config"].update({old: getattr(LITERAL, new) for old, new in LEGACY_RERANK_FIELDS.items()})
    payload["config"]["top_k_rerank"] = 9
    torch.save(payload, tmp_path / "old.pth")
    with caplog.at_level("WARNING", logger="hrnet_pyg"):
        loaded = HRNet.load(tmp_path / "old.pth")
    assert loaded.rerank_config == LITERAL.replace(shortlist=9)
    assert deprecations(caplog) == [
        f"deprecated: checkpoint {tmp_path / 'old.pth'}: config.top_k_rerank, config.rerank_ir_score, "
        "config.rerank_pr_score, config.rerank_norm, config.rerank_pr_weight: the test protocol has its own section "
        "now; read as rerank.shortlist, rerank.ir_score, rerank.pr_score, rerank.norm, rerank.pr_weight "
        "(hrnet_pyg.protocol.RerankConfig)"
    ]
    assert loaded.config == model.config
    qf, gf = _feats(6, 1), _feats(30, 2)
    old_way = relational_rerank(loaded, qf, gf, progress=False)
    explicit = relational_rerank(model, qf, gf, LITERAL.replace(shortlist=9), progress=False)
    assert torch.equal(old_way, explicit)
    assert not torch.equal(explicit, relational_rerank(model, qf, gf, progress=False))  # the protocol matters
    # saved again, it is of the new layout
    loaded.save(tmp_path / "again.pth")
    assert load_checkpoint(tmp_path / "again.pth")["rerank"] == LITERAL.replace(shortlist=9).to_dict()


# ---------------------------------------------------------------------------- the API
def test_the_shortlist_and_the_protocol_through_the_api(caplog):
    from hrnet_pyg.engine import evaluate_features
    from hrnet_pyg.rerank import relational_rerank
    from hrnet_pyg.search import ImageFeatures, search_features

    model = _model(RerankConfig(shortlist=5))
    qf, gf = _feats(6, 3), _feats(20, 4)
    carried = relational_rerank(model, qf, gf, progress=False)  # None: the model's protocol
    assert torch.equal(carried, relational_rerank(_model(), qf, gf, RerankConfig(shortlist=5), progress=False))
    with caplog.at_level("WARNING", logger="hrnet_pyg"):
        former = relational_rerank(_model(), qf, gf, top_k=5, progress=False)
    assert torch.equal(former, carried)
    assert deprecations(caplog) == ["deprecated: relational_rerank(top_k=...): the shortlist is the test protocol's "
                                    "now; pass rerank_config=RerankConfig(shortlist=...)"]
    pids, cams = torch.arange(6) % 3, torch.zeros(6, dtype=torch.long)
    g_pids, g_cams = torch.arange(20) % 3, torch.ones(20, dtype=torch.long)
    report = evaluate_features(model, qf, pids, cams, gf, g_pids, g_cams, progress=False)
    assert report.rerank_config == RerankConfig(shortlist=5)
    report = evaluate_features(model, qf, pids, cams, gf, g_pids, g_cams, rerank_config=LITERAL, progress=False)
    assert report.rerank_config == LITERAL
    assert evaluate_features(model, qf, pids, cams, gf, g_pids, g_cams, rerank=False,
                             progress=False).rerank_config is None
    q = ImageFeatures(qf, [f"q{i}.jpg" for i in range(6)])
    g = ImageFeatures(gf, [f"g{i}.jpg" for i in range(20)])
    res = search_features(model, q, g, topk=8, device="cpu", progress=False)
    assert int(res.relational_score.isfinite().sum(dim=1).max()) == 5  # scores inside the model's shortlist
    res = search_features(model, q, g, topk=8, shortlist=3, rerank_config=LITERAL, device="cpu", progress=False)
    assert int(res.relational_score.isfinite().sum(dim=1).max()) == 3


def test_eval_parser_shortlist_and_its_former_name(caplog):
    from hrnet_pyg.cli import build_parser
    from hrnet_pyg.cli.args import protocol_from_args

    parser = build_parser()
    with caplog.at_level("WARNING", logger="hrnet_pyg"):
        args = parser.parse_args(["eval", "--checkpoint", "x.pth", "--shortlist", "7"])
    assert args.shortlist == 7 and not deprecations(caplog)
    with caplog.at_level("WARNING", logger="hrnet_pyg"):
        args = parser.parse_args(["eval", "--checkpoint", "x.pth", "--top-k", "9", "--set", "rerank.norm=rank",
                                  "--set", "model.k=4"])
    assert args.shortlist == 9 and deprecations(caplog) == ["deprecated: --top-k is now --shortlist"]
    # the checkpoint's protocol, changed by the command line only (not by a config file's section)
    exp = load_experiment(None, parse_overrides(args.overrides))
    assert protocol_from_args(args, exp, LITERAL) == LITERAL.replace(shortlist=9, norm="rank")
    args = parser.parse_args(["visualize", "--checkpoint", "x.pth"])
    assert protocol_from_args(args, load_experiment(None), LITERAL) == LITERAL
    # search: --shortlist (its result-list length stays --topk)
    args = parser.parse_args(["search", "--checkpoint", "x", "--query", "q", "--gallery", "g", "--shortlist", "4",
                              "--topk", "3"])
    assert (args.shortlist, args.topk) == (4, 3)


def test_the_former_eval_option_prints_one_line_on_the_command_line(tmp_path):
    """Outside pytest's log capture: the deprecation line reaches stderr before the error."""
    proc = subprocess.run(
        [sys.executable, "-m", "hrnet_pyg", "eval", "--checkpoint", str(tmp_path / "missing.pth"), "--top-k", "5",
         "--device", "cpu"],
        capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == "deprecated: --top-k is now --shortlist", proc.stderr
    assert len(lines) == 2 and "missing.pth" in lines[1], proc.stderr


# ---------------------------------------------------------------------------- the protocol switch
def _bn_feats(model, qf: torch.Tensor, gf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BN(F) with the BNNeck written out: gamma (f - mu) / sqrt(var + eps) + beta."""
    bn = model.bnneck.bn

    def of(f: torch.Tensor) -> torch.Tensor:
        return bn.weight.detach() * (f - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) + bn.bias.detach()

    return of(qf), of(gf)


def test_the_protocol_field_defaults_to_the_paper_and_lists_its_values():
    from hrnet_pyg.nn.individual import NORMALIZE
    from hrnet_pyg.protocol import DEFAULT_PROTOCOL

    assert DEFAULT_PROTOCOL == "paper" and RerankConfig().protocol == "paper" and LITERAL.protocol == "paper"
    assert RerankConfig.choices("protocol") == ("paper", "gallery", "gallery+kreciprocal", "kreciprocal", "none")
    assert RerankConfig.choices("gallery_neighbours") == ("all", "gallery")
    assert set(RerankConfig.choices("gallery_normalize")) == set(NORMALIZE)  # the layer's own normalisations
    cfg = RerankConfig(protocol="gallery", gallery_k=5)
    assert (cfg.gallery_k, cfg.gallery_neighbours, cfg.gallery_normalize, cfg.gallery_rounds) == (5, "all", None, 1)
    assert RerankConfig().used_fields() == ("shortlist", "ir_score", "pr_score", "norm", "pr_weight", "protocol")
    assert RerankConfig(protocol="none").used_fields() == ("protocol",)
    assert cfg.used_fields()[:2] == ("protocol", "gallery_k") and "shortlist" not in cfg.used_fields()
    assert "pr_weight" in cfg.replace(gallery_pr_shortlist=10).used_fields()


@pytest.mark.parametrize("values, message", [
    ({"protocol": "both"}, "rerank.protocol: expected one of 'paper', 'gallery', 'gallery+kreciprocal', "
                           "'kreciprocal', 'none', got 'both'"),
    ({"gallery_k": 0}, "rerank.gallery_k: must be at least 1, got 0"),
    ({"gallery_k": "many"}, "rerank.gallery_k: expected int or null, got 'many'"),
    ({"gallery_rounds": 3}, "rerank.gallery_rounds: must be at most 2, got 3"),
    ({"gallery_neighbours": "queries"}, "rerank.gallery_neighbours: expected one of 'all', 'gallery', got 'queries'"),
    ({"gallery_normalize": "sum"}, "rerank.gallery_normalize: expected one of 'all', 'neighbors' or null, "
                                   "got 'sum'"),
    ({"gallery_pr_shortlist": -1}, "rerank.gallery_pr_shortlist: must be at least 0, got -1"),
    ({"protocol": "gallery+kreciprocal", "gallery_pr_shortlist": 20},
     "rerank.gallery_pr_shortlist: 20 re-scores BN(V') by the PR module, and rerank.protocol='gallery+kreciprocal' "
     "re-ranks it by k-reciprocal: choose one (gallery_pr_shortlist=0, or protocol='gallery')"),
])
def test_a_bad_protocol_value_names_its_key(values, message):
    with pytest.raises(ConfigError) as err:
        RerankConfig(**values)
    assert str(err.value) == message
    with pytest.raises(ValueError) as err:
        RerankConfig.from_dict(values, where="exp.yaml: rerank")
    assert str(err.value) == "exp.yaml: " + message


def test_the_protocol_in_yaml_and_on_the_command_line(tmp_path):
    path = write(tmp_path / "exp.yaml", f"_base_: {ROOT / 'experiments' / 'base.yaml'}\n"
                                        "rerank: {protocol: gallery, gallery_k: 5, gallery_normalize: neighbors}\n")
    exp = load_experiment(path)
    assert exp.rerank == RerankConfig(protocol="gallery", gallery_k=5, gallery_normalize="neighbors")
    assert load_experiment(path, parse_overrides(["rerank.gallery_k=null"])).rerank.gallery_k is None
    assert load_experiment(None, parse_overrides(["rerank.protocol=gallery"])).rerank.protocol == "gallery"
    assert load_experiment(None, parse_overrides(["rerank.protocol=gallery+kreciprocal"])).rerank.protocol == \
        "gallery+kreciprocal"
    with pytest.raises(ValueError, match=r"^--set rerank.protocol: expected one of 'paper', 'gallery', "):
        load_experiment(None, parse_overrides(["rerank.protocol=both"]))
    write(path, "rerank: {protocol: gallery, gallery_k: -2}\n")
    with pytest.raises(ValueError, match=rf"^{path}: rerank.gallery_k: must be at least 1, got -2$"):
        load_experiment(path)


def test_each_protocol_equals_its_reference():
    """relational_rerank under each protocol is the function that protocol names, with the same options."""
    from hrnet_pyg.distances import cosine_distance
    from hrnet_pyg.gallery import gallery_rerank
    from hrnet_pyg.kreciprocal import k_reciprocal_rerank_features
    from hrnet_pyg.rerank import relational_rerank

    model = _model()
    qf, gf = _feats(6, 5), _feats(30, 6)

    def rerank(**fields):
        return relational_rerank(model, qf, gf, RerankConfig(**fields), progress=False)

    def whole_set(**options):
        return gallery_rerank(model, qf, gf, output="distances", progress=False, **options)

    assert torch.equal(rerank(protocol="gallery", gallery_k=5), whole_set(k=5))
    assert torch.equal(rerank(protocol="gallery"), whole_set(k=5))  # the measured default
    assert torch.equal(rerank(protocol="gallery", gallery_k=None), whole_set(k=model.config.k))  # the model's k
    options = dict(gallery_k=4, gallery_neighbours="gallery", gallery_normalize="neighbors", gallery_rounds=2,
                   gallery_reuse_graph=True, gallery_pr_shortlist=7, pr_score="pr_logit", norm="rank", pr_weight=0.5)
    assert torch.equal(rerank(protocol="gallery", **options),
                       whole_set(k=4, neighbours="gallery", normalize="neighbors", rounds=2, reuse_graph=True,
                                 pr_top_k=7, pr_score="pr_logit", pr_norm="rank", pr_weight=0.5))
    assert torch.equal(rerank(protocol="gallery+kreciprocal", gallery_k=5), whole_set(k=5, kreciprocal=True))
    qb, gb = _bn_feats(model, qf, gf)
    assert torch.allclose(rerank(protocol="kreciprocal"), k_reciprocal_rerank_features(qb, gb, progress=False),
                          atol=1e-5)
    none = rerank(protocol="none")
    assert torch.allclose(none, 1 - unit_rows(qb) @ unit_rows(gb).T, atol=1e-6)
    assert torch.equal(none, cosine_distance(model.retrieval_features(qf), model.retrieval_features(gf)))
    # the paper's protocol is the default and what it was: the per-query graphs (their reference: test_rerank.py)
    paper = rerank()
    assert torch.equal(paper, rerank(protocol="paper")) and torch.equal(paper, relational_rerank(model, qf, gf,
                                                                                                  progress=False))
    results = [paper, none, rerank(protocol="kreciprocal"), rerank(protocol="gallery", gallery_k=5),
               rerank(protocol="gallery+kreciprocal", gallery_k=5)]
    assert all(not torch.equal(a, b) for i, a in enumerate(results) for b in results[i + 1:])  # the switch matters


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def test_the_protocol_switch_errors_are_one_line():
    from hrnet_pyg import HRNet
    from hrnet_pyg.rerank import relational_rerank

    qf, gf = _feats(4, 7), _feats(12, 8)
    for row, why in (("CNN+PR", "needs the IR module"), ("CNN+IR*", "trained on the fully-connected graph")):
        torch.manual_seed(0)
        cfg = HRNetConfig.from_row(row, backbone=None, feat_dim=D, k=3, pretrained=False)
        model = HRNet(cfg, num_classes=4).eval()
        for protocol in ("gallery", "gallery+kreciprocal"):
            with pytest.raises(ValueError, match=why) as err:
                relational_rerank(model, qf, gf, RerankConfig(protocol=protocol), progress=False)
            assert "\n" not in str(err.value)
        # the protocols without the relation modules run on any model
        assert relational_rerank(model, qf, gf, RerankConfig(protocol="none"), progress=False).shape == (4, 12)
    model = _model()
    for protocol in ("gallery", "kreciprocal", "none"):
        with pytest.raises(ValueError, match=rf"^return_scores: .* rerank.protocol='{protocol}' has none$"):
            relational_rerank(model, qf, gf, RerankConfig(protocol=protocol), return_scores=True, progress=False)


@dataclass(frozen=True)
class GalleryByDefault(RerankConfig):
    """A RerankConfig whose default protocol is another than the paper's."""

    protocol: Protocol = "gallery"


def test_a_checkpoint_without_a_protocol_reranks_with_the_papers(tmp_path, monkeypatch):
    """Written before the switch: whatever the default protocol is now, such a checkpoint re-ranks as it
    did (``"paper"``); a checkpoint that names its protocol keeps it."""
    from hrnet_pyg import HRNet
    from hrnet_pyg.runtime import load_checkpoint

    assert GalleryByDefault.from_dict({}).protocol == "gallery"  # what a section without it would read
    monkeypatch.setattr("hrnet_pyg.engine.checkpoint.RerankConfig", GalleryByDefault)
    protocol = RerankConfig(protocol="gallery", gallery_k=5, shortlist=7)
    _model(protocol).save(tmp_path / "m.pth")
    assert HRNet.load(tmp_path / "m.pth").rerank_config.to_dict() == protocol.to_dict()
    payload = load_checkpoint(tmp_path / "m.pth")
    del payload["rerank"]["protocol"]
    torch.save(payload, tmp_path / "before.pth")
    assert HRNet.load(tmp_path / "before.pth").rerank_config.to_dict() == protocol.replace(protocol="paper").to_dict()
    del payload["rerank"]  # the layout before the protocol had its own entry
    torch.save(payload, tmp_path / "older.pth")
    assert HRNet.load(tmp_path / "older.pth").rerank_config.protocol == "paper"


def test_the_protocol_through_evaluate_and_search():
    from hrnet_pyg.engine import evaluate_features
    from hrnet_pyg.evaluation import evaluate_rank
    from hrnet_pyg.gallery import gallery_rerank
    from hrnet_pyg.search import ImageFeatures, search_features
    from hrnet_pyg.topk import stable_k_smallest

    model = _model()
    qf, gf = _feats(6, 3), _feats(20, 4)
    pids, cams = torch.arange(6) % 3, torch.zeros(6, dtype=torch.long)
    g_pids, g_cams = torch.arange(20) % 3, torch.ones(20, dtype=torch.long)
    gallery = RerankConfig(protocol="gallery", gallery_k=4)
    dist = gallery_rerank(model, qf, gf, k=4, output="distances", progress=False)
    with pytest.warns(UserWarning, match="max_rank clipped"):
        report = evaluate_features(model, qf, pids, cams, gf, g_pids, g_cams, rerank_config=gallery, progress=False)
        ref = evaluate_rank(dist, pids.numpy(), g_pids.numpy(), cams.numpy(), g_cams.numpy())
    assert report.rerank_config == gallery and report.hrnet.mAP == ref.mAP
    assert "| re-ranking (rerank.protocol=gallery) |" in report.table()
    assert report.notes == ["test protocol: rerank.protocol=gallery, rerank.gallery_k=4, "
                            "rerank.gallery_neighbours=all, rerank.gallery_normalize=None, rerank.gallery_rounds=1, "
                            "rerank.gallery_reuse_graph=False, rerank.gallery_pr_shortlist=0"]
    q = ImageFeatures(qf, [f"q{i}.jpg" for i in range(6)])
    g = ImageFeatures(gf, [f"g{i}.jpg" for i in range(20)])
    res = search_features(model, q, g, topk=8, rerank_config=gallery, device="cpu", progress=False)
    assert torch.equal(res.indices, stable_k_smallest(dist, 8)) and res.relational_score is None
    assert res.reranked and "(ordered by rerank.protocol=gallery)" in res.format()
    res = search_features(model, q, g, topk=8, rerank_config=RerankConfig(protocol="none"), device="cpu",
                          progress=False)
    plain = search_features(model, q, g, topk=8, rerank=False, device="cpu", progress=False)
    assert torch.equal(res.indices, plain.indices) and not res.reranked


def test_protocol_on_the_command_line():
    from hrnet_pyg.cli import build_parser
    from hrnet_pyg.cli.args import protocol_from_args
    from hrnet_pyg.cli.search import _search_options

    parser = build_parser()
    args = parser.parse_args(["eval", "--checkpoint", "x.pth", "--protocol", "gallery", "--set", "rerank.gallery_k=5"])
    exp = load_experiment(None, parse_overrides(args.overrides))
    assert protocol_from_args(args, exp, LITERAL) == LITERAL.replace(protocol="gallery", gallery_k=5)
    # --protocol is --set rerank.protocol=..., and wins over it as --shortlist does
    args = parser.parse_args(["eval", "--checkpoint", "x.pth", "--set", "rerank.protocol=gallery"])
    assert protocol_from_args(args, load_experiment(None, parse_overrides(args.overrides)), LITERAL).protocol == \
        "gallery"
    args = parser.parse_args(["eval", "--checkpoint", "x.pth", "--set", "rerank.protocol=none",
                              "--protocol", "kreciprocal"])
    assert protocol_from_args(args, load_experiment(None, parse_overrides(args.overrides)), LITERAL).protocol == \
        "kreciprocal"
    model = _model(LITERAL)
    args = parser.parse_args(["search", "--checkpoint", "x", "--query", "q", "--gallery", "g",
                              "--protocol", "gallery+kreciprocal"])
    assert _search_options(args, model)["rerank_config"] == LITERAL.replace(protocol="gallery+kreciprocal")
    args = parser.parse_args(["search", "--checkpoint", "x", "--query", "q", "--gallery", "g"])
    assert _search_options(args, model)["rerank_config"] is None  # the checkpoint's
    args = parser.parse_args(["search", "--checkpoint", "x", "--query", "q", "--gallery", "g", "--no-rerank",
                              "--protocol", "gallery"])
    with pytest.raises(ValueError, match="^--no-rerank ranks by cosine, --protocol gallery re-ranks"):
        _search_options(args, model)
    for verb in (["eval", "--checkpoint", "x.pth"], ["search", "--checkpoint", "x", "--query", "q"]):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([*verb, "--protocol", "both"])
        assert exc.value.code == 2
