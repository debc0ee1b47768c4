"""RerankConfig: the test protocol of relational re-ranking (Sec. 4.2 "Testing"), apart from the model.

The paper's protocol: each query's top-120 gallery images by cosine of BN(F) (the shortlist) and
the query form one graph through both relationship modules, and "the similarity scores calculated
from the two relationship learning modules are added". Which similarity each module adds and how
the two are put on one scale the paper leaves open; ``docs/efficacy.md`` decided the defaults by
measurement, and :meth:`RerankConfig.paper_literal` is the literal reading, one setting away.

Beyond the paper, ``protocol`` switches the whole re-ranking: ``"paper"`` (Sec. 4.2's per-query
graphs, the fields above), ``"gallery"`` (the trained IR layer once over the kNN graph of the whole
query + gallery set, ranked by the cosine of BN(V'); :mod:`hrnet_pyg.gallery`, its options the
``gallery_*`` fields), ``"gallery+kreciprocal"`` (k-reciprocal re-ranking of those BN(V')),
``"kreciprocal"`` (k-reciprocal re-ranking of BN(F), no relation module) and ``"none"`` (the cosine
of BN(F)). :data:`DEFAULT_PROTOCOL` is the default.

A protocol is chosen at test time: ``relational_rerank(model, qf, gf, rerank_config=...)``,
``HRNet.evaluate(..., rerank_config=...)``, ``search(..., rerank_config=...)``, the ``rerank:``
section of an experiment YAML and ``--set rerank.<field>=...`` on the command line. A model
carries the protocol its run used (``model.rerank_config``, stored in its checkpoints), which is
what ``None`` means everywhere.

Every field is typed, and its type says what it takes: a ``Literal`` lists the valid values (this
is the only place they are listed), :func:`~hrnet_pyg.config.bounds` a number's range. One
validator (:func:`~hrnet_pyg.config.validate_dataclass`) checks them all, so a new field needs
nothing else. This module imports no torch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from hrnet_pyg.config import (
    ConfigError,
    bounds,
    coerce_fields,
    literal_values,
    split_legacy_rerank,
    validate_dataclass,
)

# The similarities each module adds at test time (keys of hrnet_pyg.scoring.similarity_terms).
IRScore = Literal["ir_cosine", "ir_bn_cosine"]  # cos(v'_q, v'_g) (Eq. 3's V'); the cosine of BN(V')
PRScore = Literal["pr_prob", "pr_logit"]  # t_hat(q, g) (Eq. 13); its logit
# How each similarity is normalised over the query's shortlist before the sum.
Norm = Literal["none", "zscore", "rank"]  # the literal sum; (s - mean) / std; 1 (best) .. 1/K
# The re-ranking itself: Sec. 4.2's per-query graphs; the IR layer over the whole gallery's kNN
# graph, ranked by BN(V') (then k-reciprocal of BN(V')); k-reciprocal of BN(F); the cosine of BN(F).
Protocol = Literal["paper", "gallery", "gallery+kreciprocal", "kreciprocal", "none"]
# Where the nodes of the gallery protocol's test graph take their neighbours: all Q + G images (as
# k-reciprocal re-ranking), or the gallery images only (no query feeds another node: the inductive form).
Neighbours = Literal["all", "gallery"]
# Eq. 2's denominator in the gallery protocol: over all N nodes, over the k neighbours (None: the
# layer's own, ``HRNetConfig.ir_attention_norm``, the one it was trained with).
AttentionNorm = Literal["all", "neighbors"]

#: The protocol of a RerankConfig that names none (and of ``rerank:`` sections without ``protocol``).
#: A checkpoint written before the field existed re-ranks with ``"paper"``, whatever this says.
DEFAULT_PROTOCOL: Protocol = "paper"


@dataclass(frozen=True)
class RerankConfig:
    """The test protocol of relational re-ranking; the defaults are those ``docs/efficacy.md``
    measured best, :meth:`paper_literal` the paper's reading.

    Args:
        shortlist: gallery images per query that the relation modules re-score (Sec. 4.2: the
            top 120 by cosine of BN(F)); the rest keep their cosine order after them.
        ir_score: the IR module's similarity: ``"ir_cosine"`` (cos(v'_q, v'_g)) or
            ``"ir_bn_cosine"`` (the cosine of BN(V'), the IR module's BNNeck features).
        pr_score: the PR module's: ``"pr_prob"`` (t_hat, Eq. 13) or ``"pr_logit"`` (its logit).
        norm: each similarity normalised over the query's shortlist before the sum: ``"none"``
            (the literal sum), ``"zscore"`` or ``"rank"``.
        pr_weight: the PR term's weight in the sum, after the normalisation (1.0: the two added
            as equals; 0.25 measured: the PR term is weaker and largely redundant with the IR term).
        protocol: the re-ranking (see the module docstring): ``"paper"``, ``"gallery"``,
            ``"gallery+kreciprocal"``, ``"kreciprocal"`` or ``"none"``. The fields above are the
            paper protocol's; ``pr_score``, ``norm`` and ``pr_weight`` also fuse the gallery
            protocol's PR re-score. (default: :data:`DEFAULT_PROTOCOL`)
        gallery_k: neighbours per node of the gallery protocol's test graph (Eq. 1); ``None``:
            the model's ``k``, that of its training graphs. (default: 5, measured: fewer
            neighbours than the training graphs' 10 rank better at every level of
            ``docs/efficacy.md``)
        gallery_neighbours: ``"all"``: each node's neighbours among all Q + G images (the setting
            of k-reciprocal re-ranking); ``"gallery"``: among the gallery images only, so no query
            feeds another node (what a gallery index computes). (default: ``"all"``)
        gallery_normalize: Eq. 2's denominator in the gallery protocol, ``"all"`` or
            ``"neighbors"``. (default: ``None``, the IR layer's own)
        gallery_rounds: applications of the IR layer, 1 or 2 (the second over the kNN graph of
            V'). (default: 1)
        gallery_reuse_graph: with two rounds, the second reuses the first round's graph.
            (default: ``False``)
        gallery_pr_shortlist: the gallery protocol's PR re-score: each query's top
            ``gallery_pr_shortlist`` by BN(V') re-scored by the PR module (its IGP reading the
            whole-set V') and fused as above; 0: off. Not with ``"gallery+kreciprocal"``.
            (default: 0)
    """

    shortlist: int = field(default=120, metadata=bounds(low=1))
    ir_score: IRScore = "ir_bn_cosine"
    pr_score: PRScore = "pr_prob"
    norm: Norm = "zscore"
    pr_weight: float = field(default=0.25, metadata=bounds(low=0.0))
    protocol: Protocol = DEFAULT_PROTOCOL
    gallery_k: int | None = field(default=5, metadata=bounds(low=1))
    gallery_neighbours: Neighbours = "all"
    gallery_normalize: AttentionNorm | None = None
    gallery_rounds: int = field(default=1, metadata=bounds(low=1, high=2))
    gallery_reuse_graph: bool = False
    gallery_pr_shortlist: int = field(default=0, metadata=bounds(low=0))

    def __post_init__(self) -> None:
        # Python callers get what the YAML path gets: "2.5e-1" -> 0.25, then every field checked.
        validate_dataclass(self, section="rerank")
        if self.gallery_pr_shortlist and self.protocol == "gallery+kreciprocal":
            raise ConfigError("gallery_pr_shortlist", f"{self.gallery_pr_shortlist} re-scores BN(V') by the PR module, "
                              "and rerank.protocol='gallery+kreciprocal' re-ranks it by k-reciprocal: choose one "
                              "(gallery_pr_shortlist=0, or protocol='gallery')", "rerank")

    @property
    def uses_gallery_graph(self) -> bool:
        """Whether the protocol runs the IR layer over the whole gallery's kNN graph."""
        return self.protocol.startswith("gallery")

    def used_fields(self) -> tuple[str, ...]:
        """The fields that this protocol reads (the others are kept, and ignored by it)."""
        names = [f.name for f in dataclasses.fields(self)]
        if self.protocol == "paper":
            return (*names[: names.index("protocol")], "protocol")
        if not self.uses_gallery_graph:
            return ("protocol",)
        fused = ("pr_score", "norm", "pr_weight") if self.gallery_pr_shortlist else ()
        return ("protocol", *(n for n in names if n.startswith("gallery_")), *fused)

    @classmethod
    def paper_literal(cls, **changes: Any) -> RerankConfig:
        """Sec. 4.2 as printed: the top-120 shortlist, cos(v'_q, v'_g) + t_hat(q, g) added as they are."""
        return cls(**{**dict(shortlist=120, ir_score="ir_cosine", pr_score="pr_prob", norm="none",
                             pr_weight=1.0, protocol="paper"), **changes})

    @classmethod
    def choices(cls, name: str) -> tuple[str, ...]:
        """The valid values of the ``Literal`` field ``name`` (``"ir_score"``, ``"pr_score"``, ``"norm"``,
        ``"protocol"``, ``"gallery_neighbours"``; ``"gallery_normalize"`` without its ``None``)."""
        return literal_values(cls, name)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "rerank") -> RerankConfig:
        """The protocol of a mapping of field names to values (a YAML ``rerank:`` section, a
        checkpoint's entry); values are coerced as YAML gives them (``"3e-1"``, ``"true"``).

        Raises ``ValueError`` in one line naming ``where.<key>`` for an unknown key or a value that
        does not fit.
        """
        if not isinstance(values, dict):
            raise ValueError(f"{where} must be a mapping of keys to values, got {values!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {', '.join(names)}")
        try:
            return cls(**coerce_fields(cls, values, where))
        except ConfigError as exc:
            raise ValueError(f"{where}.{exc.field}: {exc.problem}") from None

    @classmethod
    def from_legacy(cls, values: dict[str, Any], where: str | None = None, section: str = "model",
                    base: RerankConfig | None = None) -> RerankConfig:
        """The protocol that a config of the former layout (``top_k_rerank``, ``rerank_*`` among the
        model's fields) names, over ``base`` (default: the defaults); one deprecation line, naming
        ``where`` and ``section``, when the mapping has any of those fields. Other keys are ignored."""
        _, legacy = split_legacy_rerank(values, where, section)
        return (base or cls()).replace(**legacy) if legacy else (base or cls())

    def replace(self, **changes: Any) -> RerankConfig:
        """A copy with ``changes`` (validated like the constructor)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


__all__ = ["DEFAULT_PROTOCOL", "AttentionNorm", "IRScore", "Neighbours", "Norm", "PRScore", "Protocol", "RerankConfig"]
