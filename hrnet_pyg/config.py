"""HRNetConfig: one plain dataclass whose defaults are the paper's values.

Every field carries the paper section it comes from; fields the paper leaves open say so
and point to ``docs/paper_map.md`` where the choice is argued.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

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

# The paper-literal reading of every open training detail whose default docs/efficacy.md decided by
# measurement: HRNetConfig.from_row(row, **PAPER_LITERAL), or experiments/*/hrnet_paper_literal.yaml.
# The test protocol's literal reading is RerankConfig.paper_literal() (hrnet_pyg.protocol).
PAPER_LITERAL = dict(
    ir_attention_norm="all",  # Eq. 2 as printed: denominator over all N nodes
    pr_head="diagonal",  # Eq. 13's head, the first round's reading: w^T BN(u' * u') + b
    pr_head_init="glorot",
)

# The test protocol's former HRNetConfig fields -> their RerankConfig names (hrnet_pyg.protocol).
# Old configs and checkpoints that carry them still load (split_legacy_rerank).
LEGACY_RERANK_FIELDS = {
    "top_k_rerank": "shortlist",
    "rerank_ir_score": "ir_score",
    "rerank_pr_score": "pr_score",
    "rerank_norm": "norm",
    "rerank_pr_weight": "pr_weight",
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
    milestones: tuple[int, ...] = (40, 120)  # lr x gamma at these epochs
    gamma: float = 0.1
    warmup_epochs: int = 0  # not in the paper (BoT-style linear warm-up); 0 = off
    # --- input (Sec. 3.1) ---
    image_size: tuple[int, int] = (256, 128)  # (height, width), Sec. 3.1
    # --- Table 1 switches ---
    use_ir: bool = True  # individual relationship (Eq. 1-3)
    ir_graph: str = "knn"  # "knn" (IR) or "full" (IR*, fully-connected)
    use_cnc: bool = True  # consistent node constraint (Eq. 4-5)
    use_pr: bool = True  # pairwise relationship (Eq. 6)
    use_igp: bool = True  # inter-graph propagation (Eq. 7-9)
    # --- details the paper leaves open (docs/paper_map.md) ---
    # Eq. 2's denominator: "all" (literal: over all N nodes) or "neighbors" (GAT: over the k
    # neighbours). docs/efficacy.md measured "neighbors" best at both levels; "all" stays
    # selectable (experiments/*/paper_literal.yaml).
    ir_attention_norm: str = "neighbors"
    ir_self_in_knn: bool = False  # whether a node counts among its own k neighbours (Eq. 1)
    pr_edges: int | None = None  # Fig. 4: edges per difference node; None = complete graph
    pr_edges_relative: bool = True  # pr_edges counts in a P x K graph; other sizes keep the share
    cnc_mining: str = "violation"  # Eq. 4-5 "hardest": "violation" or "batch_hard" (as Eq. 12)
    # Eq. 13's t_hat (the paper does not give the head): a learned metric on u', "diagonal" or
    # "projected" (through W_h); initialised "glorot" or as a squared "distance" (measured)
    pr_head: str = "projected"
    pr_head_init: str = "distance"
    # Training graphs closer to the test graph (not in the paper; docs/efficacy.md): the IR layer's
    # training graph is the batch plus up to ir_hard_negatives of its hardest negatives, mined from
    # a memory of the last ir_memory_size training features (no gradient); 0 = the P x K batch alone
    ir_hard_negatives: int = 0
    ir_memory_size: int = 2048
    # resnet18/34/50/101, mobilenet_v2 (torchvision) or timm:<name>; None: graph modules on
    # pre-extracted features
    backbone: str | None = "resnet50"
    pretrained: bool | str = True  # True / IMAGENET1K_V2: torchvision weights; str: a local file (docs/ecosystem.md)
    last_stride: int = 1  # Sec. 3.1: stride of conv5_1
    feat_dim: int = 2048  # d without a backbone; with one, d is the backbone's out_channels
    random_erasing: float = 0.0  # probability; not in the paper, off
    seed: int = 0

    def __post_init__(self) -> None:
        # Python callers get what the YAML path gets: values coerced to the field types
        # (lr="3e-4" -> 3e-4), then every range checked, each error naming its field.
        coerce_dataclass(self)
        check(self.ir_graph in ("knn", "full"), "ir_graph", f"must be 'knn' or 'full', got {self.ir_graph!r}")
        check(self.ir_attention_norm != "size", "ir_attention_norm",
              "'size' is no longer available: it lost to 'neighbors' on both rows measured (docs/efficacy.md); "
              "use 'neighbors' (the default) or 'all' (Eq. 2 as printed)")
        check(self.ir_attention_norm in ("all", "neighbors"), "ir_attention_norm",
              f"must be 'all' (Eq. 2) or 'neighbors' (GAT), got {self.ir_attention_norm!r}")
        for name, valid in (("cnc_mining", ("violation", "batch_hard")),
                            ("pr_head", ("diagonal", "projected")),
                            ("pr_head_init", ("glorot", "distance"))):
            check(getattr(self, name) in valid, name, f"must be one of {', '.join(valid)}; got {getattr(self, name)!r}")
        for name in ("k", "num_identities", "num_instances", "epochs", "feat_dim"):
            at_least(self, name, 1)
        # seed: numpy's generators take no negative seed
        for name in ("warmup_epochs", "seed", "ir_hard_negatives"):
            at_least(self, name, 0)
        at_least(self, "ir_memory_size", 1)
        for name in ("alpha", "beta", "random_erasing"):
            within(self, name, 0.0, 1.0)
        check(0.0 <= self.label_smoothing < 1.0, "label_smoothing", f"must lie in [0, 1), got {self.label_smoothing}")
        for name in ("lr", "gamma"):
            check(0.0 < getattr(self, name) < math.inf, name, f"must be a finite number > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "lambda_cnc", "cnc_margin", "triplet_margin", "leaky_relu_slope"):
            check(0.0 <= getattr(self, name) < math.inf, name,
                  f"must be a finite number >= 0, got {getattr(self, name)}")
        check(all(m >= 1 for m in self.milestones), "milestones",
              f"must be epochs >= 1, got {list(self.milestones)}")
        check(all(s >= 1 for s in self.image_size), "image_size",
              f"must be a (height, width) of at least 1 pixel each, got {list(self.image_size)}")
        check(self.pr_edges is None or self.pr_edges >= 1, "pr_edges",
              f"must be null (complete graph) or at least 1, got {self.pr_edges}")
        check(self.last_stride in (1, 2), "last_stride", f"must be 1 or 2, got {self.last_stride}")

    @property
    def batch_size(self) -> int:
        return self.num_identities * self.num_instances

    @classmethod
    def from_row(cls, row: str, **overrides: Any) -> HRNetConfig:
        """The config of one row of Table 1 (``"CNN"``, ``"CNN+IR"``, ..., ``"HRNet"``)."""
        if row not in TABLE1_ROWS:
            raise ValueError(f"unknown Table 1 row {row!r}; valid rows: {', '.join(TABLE1_ROWS)}")
        return cls(**{**TABLE1_ROWS[row], **overrides})

    @classmethod
    def from_dict(cls, values: dict, where: str | None = None) -> HRNetConfig:
        """The config of a mapping of field names to values (a YAML section, a checkpoint's config).

        The test protocol's former fields (``top_k_rerank``, ``rerank_*``) are left out with one
        deprecation line: they are :class:`~hrnet_pyg.protocol.RerankConfig`'s now, which
        :meth:`RerankConfig.from_legacy <hrnet_pyg.protocol.RerankConfig.from_legacy>` reads from
        the same mapping. ``where`` names the mapping's source in that line (a file, a checkpoint).
        """
        values, _ = split_legacy_rerank(values, where)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(
                f"unknown HRNetConfig field(s) {unknown}; valid fields: {', '.join(sorted(names))}"
            )
        return cls(**coerce_fields(cls, values, "model"))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_yaml(cls, path: str | Path) -> HRNetConfig:
        """The ``model:`` section of a YAML file (:func:`hrnet_pyg.experiment.load_experiment` reads all)."""
        values = load_yaml_with_base(path).get("model", {})
        return cls.from_dict(values, where=str(path))


# ---------------------------------------------------------------------------- checked values
class ConfigError(ValueError):
    """A configuration value that does not fit its field: ``field`` names it, ``problem`` says why.

    The message is ``"<field>: <problem>"`` (``"<section>.<field>: <problem>"`` for a section's
    own dataclass, e.g. ``rerank.norm``); :func:`hrnet_pyg.experiment.load_experiment` rewrites it
    to name where the value came from (``--set model.lr``, ``exp.yaml: model.lr``).
    """

    def __init__(self, field: str, problem: str, section: str | None = None) -> None:
        super().__init__(f"{section + '.' if section else ''}{field}: {problem}")
        self.field, self.problem, self.section = field, problem, section


def check(ok: bool, field: str, problem: str) -> None:
    if not ok:
        raise ConfigError(field, problem)


def at_least(obj: Any, name: str, minimum: int) -> None:
    value = getattr(obj, name)
    check(value >= minimum, name, f"must be at least {minimum}, got {value}")


def within(obj: Any, name: str, low: float, high: float) -> None:
    value = getattr(obj, name)
    check(low <= value <= high, name, f"must lie in [{low:g}, {high:g}], got {value}")


def coerce_dataclass(obj: Any, section: str | None = None) -> None:
    """Convert every field of the dataclass instance ``obj`` to its annotated type, in place
    (frozen dataclasses too).

    Raises :class:`ConfigError` naming the field, e.g. ``lr: expected float, got 'fast'``, or
    ``rerank.norm: expected one of 'none', 'zscore', 'rank', got 'z'`` for a ``Literal`` field.
    """
    hints = _type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        try:
            object.__setattr__(obj, f.name, _coerce(value, hints[f.name]))
        except _Mismatch:
            raise ConfigError(f.name, f"expected {_type_name(hints[f.name])}, got {value!r}", section) from None


def bounds(low: float | None = None, high: float | None = None) -> dict[str, Any]:
    """Field metadata of a number's range, which :func:`validate_dataclass` checks:
    ``field(default=120, metadata=bounds(low=1))``. Floats must also be finite."""
    return {"bounds": (low, high)}


def validate_dataclass(obj: Any, section: str | None = None) -> None:
    """The one validator of a dataclass whose fields say what they take: every field coerced to
    its annotation (a ``Literal`` field to one of its values), then every number checked against
    its field's :func:`bounds`. Errors are :class:`ConfigError` naming ``section.field``."""
    coerce_dataclass(obj, section)
    for f in dataclasses.fields(obj):
        low, high = f.metadata.get("bounds", (None, None))
        value = getattr(obj, f.name)
        if value is None:  # an optional field left unset (its annotation allowed it)
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f.name, f"must be a finite number, got {value}", section)
        if low is not None and value < low:
            raise ConfigError(f.name, f"must be at least {low}, got {value}", section)
        if high is not None and value > high:
            raise ConfigError(f.name, f"must be at most {high}, got {value}", section)


def literal_values(cls: Any, name: str) -> tuple[Any, ...]:
    """The values a ``Literal``-typed field ``name`` of the dataclass ``cls`` takes (of an optional
    one, ``Literal[...] | None``, the values besides ``None``)."""
    hint = _type_hints(cls)[name]
    if typing.get_origin(hint) in (Union, types.UnionType):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = members[0] if len(members) == 1 else hint
    if typing.get_origin(hint) is not typing.Literal:
        raise TypeError(f"{cls.__name__}.{name} is not a Literal-typed field")
    return typing.get_args(hint)


# ---------------------------------------------------------------------------- deprecations
log = logging.getLogger("hrnet_pyg")


def deprecated(message: str) -> None:
    """One deprecation line, ``"deprecated: <message>"``, as a warning of the ``hrnet_pyg``
    logger: shown by the command line and, with no logging set up, on stderr."""
    log.warning("deprecated: %s", message)


def split_legacy_rerank(
    values: dict[str, Any], where: str | None = None, section: str = "model"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``values`` without the test protocol's former HRNetConfig fields, and those fields under
    their :class:`~hrnet_pyg.protocol.RerankConfig` names; one deprecation line when there are any.

    ``where`` and ``section`` name the mapping in that line: ``exp.yaml: model.top_k_rerank``,
    ``--set model.rerank_norm``, ``checkpoint x.pth: config.rerank_norm``.
    """
    old = [k for k in values if k in LEGACY_RERANK_FIELDS]
    if not old:
        return values, {}
    given = ", ".join(f"{section}.{k}" for k in old)
    now = ", ".join(f"rerank.{LEGACY_RERANK_FIELDS[k]}" for k in old)
    deprecated(f"{where + ': ' if where else ''}{given}: the test protocol has its own section now; "
               f"read as {now} (hrnet_pyg.protocol.RerankConfig)")
    return ({k: v for k, v in values.items() if k not in LEGACY_RERANK_FIELDS},
            {LEGACY_RERANK_FIELDS[k]: values[k] for k in old})


# ---------------------------------------------------------------------------- typed values
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _type_name(tp: Any) -> str:
    """``int``, ``float or null``, ``list of int``, ``list of 2 int``, ``bool or str`` ..."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is Union or origin is types.UnionType:
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin in (tuple, list):
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        if args and origin is tuple:
            return f"list of {len(args)} {_type_name(args[0])}"
        return "list"
    if origin is dict or tp is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    pass


_HINTS: dict[Any, dict[str, Any]] = {}


def _type_hints(cls: Any) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _is_number(value: Any, kind: type) -> bool:
    """``value`` is an int (``kind`` numbers.Integral) or a real number, numpy's included, not a bool."""
    return isinstance(value, kind) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp``; raises :class:`_Mismatch` when it does not fit.

    YAML 1.1 reads ``3e-4`` as a string, so numeric strings become numbers; a bool never passes
    as a number, nor a number or a word other than true/false/yes/no/on/off as a bool. ``null``
    for a mapping is the empty mapping (how a config file clears one inherited from its base).
    """
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:  # one of the listed values, of the listed value's type
        for choice in args:
            if type(value) is type(choice) and value == choice:
                return choice
        raise _Mismatch
    if origin is Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        # An exact type match first, so pretrained: "weights.pth" stays a str, amp: false a bool.
        for member in members:
            if type(value) is member:
                return value
        for member in members:
            try:
                return _coerce(value, member)
            except _Mismatch:
                pass
        raise _Mismatch
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if len(args) == 2 and args[1] is Ellipsis:
            items = [_coerce(v, args[0]) for v in value]
        elif args:
            if len(value) != len(args):
                raise _Mismatch
            items = [_coerce(v, a) for v, a in zip(value, args, strict=False)]
        else:
            items = list(value)
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise _Mismatch
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _Mismatch
    if tp is int:
        if _is_number(value, numbers.Integral):
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise _Mismatch
    if tp is float:
        if _is_number(value, numbers.Real):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        if _is_number(value, numbers.Real):
            return str(value)  # e.g. output_dir: 2024
        raise _Mismatch
    return value


def coerce_fields(
    cls: Any, values: dict[str, Any], where: str, label: Callable[[str], str] | None = None
) -> dict[str, Any]:
    """``values`` converted to the types of the dataclass ``cls``'s fields.

    Raises ``ValueError`` naming the key (``where.key``, or ``label(key)`` when given), the
    expected type and the value given, e.g. ``model.k: expected int, got 'abc'``. Unknown keys
    pass through unchanged (the callers report them with the list of valid names).
    """
    label = label or (lambda key: f"{where}.{key}")
    hints = _type_hints(cls)
    out = dict(values)
    for key, value in values.items():
        if key not in hints:
            continue
        try:
            out[key] = _coerce(value, hints[key])
        except _Mismatch:
            raise ValueError(
                f"{label(key)}: expected {_type_name(hints[key])}, got {value!r}"
            ) from None
    return out


def load_yaml_with_base(path: str | Path) -> dict:
    """Read a YAML file; a ``_base_`` key names a file (relative to this one) merged underneath.

    Nested dicts merge key by key, so a table-row file only states what differs from its base;
    ``key: null`` over an inherited mapping clears it (e.g. ``data: {kwargs: null}``).

    Raises ``ValueError`` in one line for a file that is not valid YAML (``file:line:column:
    problem``), a ``_base_`` chain that returns to a file already in it, and a top level that is
    not a mapping; ``FileNotFoundError`` for a missing file (naming the file whose ``_base_``
    points at it).
    """
    return _load_chain(Path(path), [])


def _load_chain(path: Path, chain: list[tuple[Path, Path]]) -> dict:
    """``path`` merged over its bases; ``chain``: (as written, resolved) of the files that led here."""
    key = path.resolve()
    if key in [resolved for _, resolved in chain]:
        loop = " -> ".join(str(p) for p, _ in [*chain, (path, key)])
        raise ValueError(f"config file {chain[-1][0]}: its _base_ chain comes back to {path} ({loop})")
    if not path.is_file():
        where = f"{chain[-1][0]}: _base_ " if chain else ""
        what = "is a folder, not a config file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"{where}config file {path} {what}")
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping (key: value lines) at top level")
    base = data.pop("_base_", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ValueError(f"config file {path}: _base_ must be a file name, got {base!r}")
    return _merge(_load_chain(path.parent / base, [*chain, (path, key)]), data)


def _read_yaml(path: Path) -> Any:
    """The YAML of ``path``; a syntax error is one line: ``path:line:column: problem``."""
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh) or {}
    except UnicodeDecodeError as exc:
        raise ValueError(f"config file {path} is not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        if "\\t" in problem:
            problem += " (YAML indents with spaces, not tabs)"
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and start is not None:
            problem += f" ({context} started at line {start.line + 1}, column {start.column + 1})"
        raise ValueError(f"{where}: invalid YAML: {problem}") from None


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        elif value is None and isinstance(out.get(key), dict):
            out[key] = {}  # null clears an inherited mapping
        else:
            out[key] = value
    return out


__all__ = [
    "LEGACY_RERANK_FIELDS", "ConfigError", "HRNetConfig", "PAPER_LITERAL", "TABLE1_ROWS", "bounds", "coerce_dataclass",
    "coerce_fields", "deprecated", "literal_values", "load_yaml_with_base", "split_legacy_rerank", "validate_dataclass",
]
