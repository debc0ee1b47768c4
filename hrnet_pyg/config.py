"""HRNetConfig: one plain dataclass whose defaults are the paper's values.

Every field carries the paper section it comes from; fields the paper leaves open say so
and point to ``docs/paper_map.md`` where the choice is argued.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple, Union

import yaml

# Rows of Table 1 -> the switches that produce them (see HRNetConfig.from_row).
TABLE1_ROWS = {
    "CNN": dict(use_ir=False, ir_graph="knn", use_cnc=False, use_pr=False, use_igp=False),
    "CNN+IR": dict(use_ir=True, ir_graph="knn", use_cnc=False, use_pr=False, use_igp=False),
    "CNN+IR*": dict(use_ir=True, ir_graph="full", use_cnc=False, use_pr=False, use_igp=False),
    "CNN+IR+CNC": dict(use_ir=True, ir_graph="knn", use_cnc=True, use_pr=False, use_igp=False),
    "CNN+PR": dict(use_ir=False, ir_graph="knn", use_cnc=False, use_pr=True, use_igp=False),
    "CNN+PR+IGP": dict(use_ir=False, ir_graph="knn", use_cnc=False, use_pr=True, use_igp=True),
    "HRNet": dict(use_ir=True, ir_graph="knn", use_cnc=True, use_pr=True, use_igp=True),
}


@dataclass
class HRNetConfig:
    # --- graph hyperparameters (Sec. 3.2, 4.2, Fig. 3) ---
    k: int = 10  # Eq. 1: neighbours per node of the individual (locally-connected) graph
    alpha: float = 0.9  # Eq. 7: weight of the original difference node u_{n,i}
    beta: float = 0.8  # Eq. 7: complete-graph share of the aggregated message (1 - beta: IGP)
    lambda_cnc: float = 0.1  # Eq. 14: weight of L_c+ + L_c-
    cnc_margin: float = 0.3  # Eq. 4-5: omega
    triplet_margin: float = 0.3  # Eq. 12: theta
    label_smoothing: float = 0.1  # Eq. 11: epsilon
    leaky_relu_slope: float = 0.2  # Eq. 2, 6, 8, 9: mu(.)
    # --- batches and optimisation (Sec. 4.2) ---
    num_identities: int = 11  # P of a P x K batch
    num_instances: int = 6  # K of a P x K batch
    lr: float = 3.5e-4  # Adam
    weight_decay: float = 5e-4
    epochs: int = 200
    milestones: Tuple[int, ...] = (40, 120)  # lr x gamma at these epochs
    gamma: float = 0.1
    warmup_epochs: int = 0  # not in the paper (BoT-style linear warm-up); 0 = off
    # --- test protocol (Sec. 4.2 "Testing") ---
    top_k_rerank: int = 120
    image_size: Tuple[int, int] = (256, 128)  # (height, width), Sec. 3.1
    # --- Table 1 switches ---
    use_ir: bool = True  # individual relationship (Eq. 1-3)
    ir_graph: str = "knn"  # "knn" (IR) or "full" (IR*, fully-connected)
    use_cnc: bool = True  # consistent node constraint (Eq. 4-5)
    use_pr: bool = True  # pairwise relationship (Eq. 6)
    use_igp: bool = True  # inter-graph propagation (Eq. 7-9)
    # --- details the paper leaves open (docs/paper_map.md) ---
    ir_attention_norm: str = "all"  # Eq. 2 literally normalises over all N nodes; "neighbors" = GAT
    ir_self_in_knn: bool = False  # whether a node counts among its own k neighbours (Eq. 1)
    pr_edges: Optional[int] = None  # Fig. 4: edges per difference node; None = complete graph
    backbone: Optional[str] = "resnet50"  # None: graph modules on pre-extracted features
    pretrained: Union[bool, str] = True  # True / IMAGENET1K_V2: torchvision weights; str: a local file (docs/ecosystem.md)
    last_stride: int = 1  # Sec. 3.1: stride of conv5_1
    feat_dim: int = 2048  # d
    random_erasing: float = 0.0  # probability; not in the paper, off
    seed: int = 0

    def __post_init__(self) -> None:
        self.milestones = tuple(self.milestones)
        self.image_size = tuple(self.image_size)  # type: ignore[assignment]
        if self.ir_graph not in ("knn", "full"):
            raise ValueError(f"ir_graph must be 'knn' or 'full', got {self.ir_graph!r}")
        if self.ir_attention_norm not in ("all", "neighbors"):
            raise ValueError(
                f"ir_attention_norm must be 'all' (Eq. 2) or 'neighbors' (GAT), "
                f"got {self.ir_attention_norm!r}"
            )
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if not 0.0 <= self.alpha <= 1.0 or not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"alpha and beta must lie in [0, 1], got {self.alpha}, {self.beta}")

    @property
    def batch_size(self) -> int:
        return self.num_identities * self.num_instances

    @classmethod
    def from_row(cls, row: str, **overrides: Any) -> "HRNetConfig":
        """The config of one row of Table 1 (``"CNN"``, ``"CNN+IR"``, ..., ``"HRNet"``)."""
        if row not in TABLE1_ROWS:
            raise ValueError(f"unknown Table 1 row {row!r}; valid rows: {', '.join(TABLE1_ROWS)}")
        return cls(**{**TABLE1_ROWS[row], **overrides})

    @classmethod
    def from_dict(cls, values: dict) -> "HRNetConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(
                f"unknown HRNetConfig field(s) {unknown}; valid fields: {', '.join(sorted(names))}"
            )
        return cls(**values)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_yaml(cls, path: Union[str, Path]) -> "HRNetConfig":
        values = load_yaml_with_base(path).get("model", {})
        return cls.from_dict(values)


def load_yaml_with_base(path: Union[str, Path]) -> dict:
    """Read a YAML file; a ``_base_`` key names a file (relative to this one) merged underneath.

    Nested dicts merge key by key, so a table-row file only states what differs from its base.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping at top level")
    base = data.pop("_base_", None)
    if base is None:
        return data
    return _merge(load_yaml_with_base(path.parent / base), data)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


__all__ = ["HRNetConfig", "TABLE1_ROWS", "load_yaml_with_base"]
