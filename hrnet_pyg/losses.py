"""The losses of HRNet (Sec. 3.2-3.3) as vectorised functions: Eq. 4-5 and Eq. 10-14.

Every function works on one batch at once (masked max/min over an (N, N) distance matrix, in the
manner of fast-reid's hard mining); none loops over anchors in Python, and none synchronises with
the device except where it checks its input (label range) or a result (Eq. 14 NaN check).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hrnet_pyg.runtime import check_features

# Eq. 14 term names (canonical) -> the paper's symbol; aliases accepted by hrnet_total_loss.
LOSS_TERMS: dict[str, str] = {
    "cl": "L_cl (Eq. 10-11)",
    "tr": "L_tr (Eq. 12)",
    "in": "L_in (Eq. 10-11 on the IR output)",
    "pa": "L_pa (Eq. 13)",
    "c_pos": "L_c+ (Eq. 4)",
    "c_neg": "L_c- (Eq. 5)",
}
_ALIASES = {"c+": "c_pos", "c-": "c_neg", "cnc_pos": "c_pos", "cnc_neg": "c_neg"}
_UNWEIGHTED = ("cl", "tr", "in", "pa")
_CNC = ("c_pos", "c_neg")


def _check_labels(name: str, labels: Tensor, n: int) -> None:
    if labels.dim() != 1 or labels.numel() != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"{name} must hold integer labels, got dtype {labels.dtype}")


def cross_entropy_label_smooth(logits: Tensor, targets: Tensor, epsilon: float = 0.1) -> Tensor:
    r"""Label-smoothed classification loss, Eq. 10-11 (used for :math:`L_{cl}` and :math:`L_{in}`).

    .. math::
        L_{cl} = \sum_{s=1}^{S} -p_s \log \hat y_s, \qquad
        p_s = \begin{cases} 1 - \frac{S-1}{S}\varepsilon & s = y \\
                            \frac{\varepsilon}{S} & s \neq y \end{cases}

    averaged over the batch: ``F.cross_entropy(logits, targets, label_smoothing=epsilon)`` after the
    input checks.

    Args:
        logits (Tensor): class scores (pre-softmax).
        targets (Tensor): identity labels in ``[0, S)``.
        epsilon (float, optional): smoothing coefficient :math:`\varepsilon`. (default: :obj:`0.1`)

    Shapes:
        - **input:** logits :math:`(N, S)`, targets :math:`(N,)`
        - **output:** scalar
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (N, S), got {tuple(logits.shape)}")
    _check_labels("targets", targets, logits.size(0))
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
    num_classes = logits.size(1)
    if targets.numel() > 0:
        lo, hi = int(targets.min()), int(targets.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"targets must lie in [0, {num_classes}) (the number of logits), "
                f"got values in [{lo}, {hi}]")
    # torch's label smoothing is Eq. 11's target: (1 - eps) one-hot + eps/S everywhere.
    return F.cross_entropy(logits, targets.long(), label_smoothing=epsilon)  # Eq. 10, mean over the batch


def pairwise_euclidean(x: Tensor, y: Tensor | None = None) -> Tensor:
    r"""Euclidean distance matrix :math:`m(x_i, y_j) = \lVert x_i - y_j \rVert_2`, safe to
    differentiate: the squared distance is clamped at ``1e-12`` before the square root, so
    identical points (the diagonal when ``y`` is ``None``) get distance ``1e-6`` and a finite
    (zero) gradient instead of NaN.

    Computed in float32 (or float64 for float64 input) with autocast disabled.

    Shapes:
        - **input:** x :math:`(N, d)`, y :math:`(M, d)` (default: ``x``)
        - **output:** :math:`(N, M)`
    """
    check_features(x, name="x")
    if y is None:
        y = x
    check_features(y, name="y")
    if x.size(1) != y.size(1):
        raise ValueError(
            f"x and y must have the same feature size, got {x.size(1)} and {y.size(1)}")
    # At least float32, autocast off: in fp16/bf16 the expansion cancels badly and 1e-12
    # rounds to 0, which would bring back the infinite gradient of sqrt at 0.
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, y = x.to(dtype), y.to(dtype)
        xx = x.pow(2).sum(dim=1, keepdim=True)  # (N, 1)
        yy = y.pow(2).sum(dim=1, keepdim=True).t()  # (1, M)
        d2 = torch.addmm(xx + yy, x, y.t(), beta=1.0, alpha=-2.0)  # (N, M): |x|^2+|y|^2-2x.y
        return d2.clamp(min=1e-12).sqrt()


def _masked_pick(key: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per row, the column maximising ``key`` among ``mask``; and whether the row has one.

    Shapes: key, mask (N, N) -> index (N,), valid (N,)."""
    index = key.masked_fill(~mask, float("-inf")).argmax(dim=1)  # rows without a pair: 0 (masked)
    return index, mask.any(dim=1)


def _masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    # Mean over valid rows; exactly 0 (graph kept, no device sync) when no row is valid.
    values = torch.where(valid, values, values.new_zeros(()))
    return values.sum() / valid.sum().clamp(min=1).to(values.dtype)


def _pid_masks(pids: Tensor) -> tuple[Tensor, Tensor]:
    """(N, N) masks of positives (same pid, j != i) and negatives (different pid)."""
    same = pids.unsqueeze(0) == pids.unsqueeze(1)  # (N, N)
    eye = torch.eye(pids.numel(), dtype=torch.bool, device=pids.device)
    return same & ~eye, ~same


def batch_hard_triplet_loss(feats: Tensor, pids: Tensor, margin: float = 0.3) -> Tensor:
    r"""Hard triplet loss, Eq. 12 (batch-hard mining of Hermans et al. 2017, as in BoT).

    .. math::
        L_{tr} = \frac{1}{|\mathcal A|} \sum_{a \in \mathcal A}
        \big(\max_{p:\, y_p = y_a,\, p \neq a} m(f_a, f_p)
             - \min_{n:\, y_n \neq y_a} m(f_a, f_n) + \theta\big)_+

    The paper writes a sum over anchors; like BoT / fast-reid we average, which keeps the loss
    scale independent of the batch size. Anchors with no positive (a one-image identity) or no
    negative (a one-identity batch) are left out of :math:`\mathcal A`; if none is left, the loss
    is a zero still attached to the graph.

    Args:
        feats (Tensor): features :math:`f` (before BNNeck).
        pids (Tensor): identity labels.
        margin (float, optional): :math:`\theta`. (default: :obj:`0.3`)

    Shapes:
        - **input:** feats :math:`(N, d)`, pids :math:`(N,)`
        - **output:** scalar
    """
    check_features(feats, name="feats")
    _check_labels("pids", pids, feats.size(0))
    dist = pairwise_euclidean(feats)  # (N, N)
    pos, neg = _pid_masks(pids.to(feats.device))
    ap = dist.masked_fill(~pos, float("-inf")).amax(dim=1)  # (N,) hardest positive
    an = dist.masked_fill(~neg, float("inf")).amin(dim=1)  # (N,) hardest negative
    valid = pos.any(dim=1) & neg.any(dim=1)  # (N,)
    zero = dist.new_zeros(())
    hinge = F.relu(torch.where(valid, ap, zero) - torch.where(valid, an, zero) + margin)
    return _masked_mean(hinge, valid)


def consistent_node_loss(v_in: Tensor, v_out: Tensor, pids: Tensor, margin: float = 0.3,
                         mining: str = "violation") -> tuple[Tensor, Tensor]:
    r"""Consistent node constraint, Eq. 4-5: after the graph convolution, same-identity nodes
    must not drift apart and different-identity nodes must not come closer (margin
    :math:`\omega`).

    .. math::
        L_{c+} = \big(m(v'_i, v'_j) - z(m(v_i, v_j)) + \omega\big)_+, \quad y_j = y_i,\ j \neq i

        L_{c-} = \big(z(m(v_i, v_j)) - m(v'_i, v'_j) + \omega\big)_+, \quad y_j \neq y_i

    with :math:`m` the Euclidean distance and :math:`z` the stop-gradient. "For each node, we
    only select the hardest positive node and the hardest negative node"; the paper does not say
    hardest by what. ``mining="violation"`` (default) takes the pair that violates the constraint
    most, :math:`\arg\max_j [m(v'_i,v'_j) - m(v_i,v_j)]` for positives and
    :math:`\arg\max_j [m(v_i,v_j) - m(v'_i,v'_j)]` for negatives, so the loss per node is the
    largest hinge over its pairs. ``mining="batch_hard"`` (alias ``"output"``) mines as Eq. 12's
    batch-hard triplet does, on the output distance alone: the farthest positive and the closest
    negative after the convolution.
    Each term is averaged over the nodes that have such a pair (0, graph kept, if none).

    Gradients never reach :obj:`v_in` through :math:`m(v_i, v_j)` (it is computed on
    ``v_in.detach()``); if :obj:`v_out` was computed from :obj:`v_in` by the layer, gradients
    reach :obj:`v_in` through :obj:`v_out` only.

    Args:
        v_in (Tensor): layer input nodes :math:`v`.
        v_out (Tensor): layer output nodes :math:`v'`.
        pids (Tensor): identity labels.
        margin (float, optional): :math:`\omega`. (default: :obj:`0.3`)
        mining (str, optional): ``"violation"`` or ``"batch_hard"`` (``"output"``).
            (default: :obj:`"violation"`)

    Shapes:
        - **input:** v_in :math:`(N, d)`, v_out :math:`(N, d')`, pids :math:`(N,)`
        - **output:** ``(L_c+, L_c-)``, two scalars
    """
    check_features(v_in, name="v_in")
    check_features(v_out, name="v_out")
    if v_in.size(0) != v_out.size(0):
        raise ValueError(
            f"v_in and v_out must have the same number of nodes, got {v_in.size(0)} and "
            f"{v_out.size(0)}")
    _check_labels("pids", pids, v_in.size(0))
    if mining not in ("violation", "batch_hard", "output"):
        raise ValueError(f"mining must be 'violation' or 'batch_hard' (alias 'output'), got {mining!r}")
    m_in = pairwise_euclidean(v_in.detach())  # (N, N): z(m(v_i, v_j))
    m_out = pairwise_euclidean(v_out)  # (N, N): m(v'_i, v'_j)
    pos, neg = _pid_masks(pids.to(v_out.device))
    if mining == "violation":
        key_pos, key_neg = m_out - m_in, m_in - m_out
    else:
        key_pos, key_neg = m_out, -m_out
    # Both keys are read without gradient: only the chosen pair's distances are differentiated.
    j_pos, has_pos = _masked_pick(key_pos.detach(), pos)  # (N,), (N,)
    j_neg, has_neg = _masked_pick(key_neg.detach(), neg)

    def pick(m: Tensor, j: Tensor) -> Tensor:
        return m.gather(1, j.unsqueeze(1)).squeeze(1)  # (N,)

    loss_pos = F.relu(pick(m_out, j_pos) - pick(m_in, j_pos) + margin)  # Eq. 4
    loss_neg = F.relu(pick(m_in, j_neg) - pick(m_out, j_neg) + margin)  # Eq. 5
    return _masked_mean(loss_pos, has_pos), _masked_mean(loss_neg, has_neg)


def verification_loss(logits: Tensor, pids: Tensor, exclude_self: bool = True,
                      rows_pids: Tensor | None = None,
                      rows_index: Tensor | None = None) -> Tensor:
    r"""Pairwise verification loss, Eq. 13, averaged over pairs.

    .. math::
        L_{pa} = \frac{1}{|\mathcal P|} \sum_{(n, i) \in \mathcal P}
        -t_{n,i} \log \hat t_{n,i} - (1 - t_{n,i}) \log (1 - \hat t_{n,i}),
        \qquad \hat t_{n,i} = \sigma(\mathrm{logits}_{n,i}),\ t_{n,i} = [y_n = y_i]

    computed from logits (``binary_cross_entropy_with_logits``) for numerical stability.

    Args:
        logits (Tensor): verification logit of pair (row image n, column image i).
        pids (Tensor): identity labels of the :math:`N` column images.
        exclude_self (bool, optional): drop the pairs of an image with itself
            (:math:`u_{n,n} = 0` is trivially a match). (default: :obj:`True`)
        rows_pids (Tensor, optional): identity labels of the :math:`R` row images, for a row
            subset (chunked computation) or rows from another set. If :obj:`None`, the rows are
            the :math:`N` column images in order and the self pairs are the diagonal.
            (default: :obj:`None`)
        rows_index (Tensor, optional): with :obj:`rows_pids`, the column of each row's own
            image (``-1`` if it is not among the columns), used by :obj:`exclude_self`; if
            :obj:`None`, no row image is assumed to be among the columns. (default: :obj:`None`)

    Shapes:
        - **input:** logits :math:`(R, N)`, pids :math:`(N,)`, rows_pids and rows_index
          :math:`(R,)` (:math:`R = N` without rows_pids)
        - **output:** scalar
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (R, N), got {tuple(logits.shape)}")
    num_rows, num_cols = logits.shape
    _check_labels("pids", pids, num_cols)
    if rows_pids is None:
        if num_rows != num_cols:
            raise ValueError(
                f"logits of shape {tuple(logits.shape)} is not square: pass rows_pids for a row "
                "subset")
        if rows_index is not None:
            raise ValueError("rows_index is only meaningful together with rows_pids")
        rows_pids = pids
        rows_index = torch.arange(num_rows, device=logits.device) if exclude_self else None
    else:
        _check_labels("rows_pids", rows_pids, num_rows)
        if rows_index is not None:
            _check_labels("rows_index", rows_index, num_rows)
    pids, rows_pids = pids.to(logits.device), rows_pids.to(logits.device)
    target = (rows_pids.unsqueeze(1) == pids.unsqueeze(0)).to(logits.dtype)  # (R, N): t
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # (R, N)
    if not exclude_self or rows_index is None:
        return bce.mean()
    cols = torch.arange(num_cols, device=logits.device)
    keep = cols.unsqueeze(0) != rows_index.to(logits.device).unsqueeze(1)  # (R, N)
    return _masked_mean(bce.flatten(), keep.flatten())


def _canonical(name: str) -> str:
    key = name
    for prefix in ("loss_", "L_"):
        if key.startswith(prefix):
            key = key[len(prefix):]
    key = _ALIASES.get(key, key)
    if key not in LOSS_TERMS:
        raise ValueError(
            f"unknown loss term {name!r}; valid names: {', '.join(LOSS_TERMS)} "
            f"(also with a 'loss_' or 'L_' prefix, and {', '.join(_ALIASES)})")
    return key


def hrnet_total_loss(terms: dict[str, Tensor], lambda_cnc: float = 0.1) -> Tensor:
    r"""Total loss of HRNet, Eq. 14.

    .. math::
        L_{total} = L_{cl} + L_{tr} + L_{in} + L_{pa} + \lambda (L_{c+} + L_{c-})

    Terms absent from :obj:`terms` (the ablation rows of Table 1) are skipped.

    Args:
        terms (dict): scalar losses keyed by ``"cl"``, ``"tr"``, ``"in"``, ``"pa"``,
            ``"c_pos"``, ``"c_neg"`` (aliases: a ``loss_``/``L_`` prefix; ``"c+"``, ``"c-"``,
            ``"cnc_pos"``, ``"cnc_neg"``).
        lambda_cnc (float, optional): :math:`\lambda`. (default: :obj:`0.1`)

    Raises:
        ValueError: on an unknown or duplicated name, a non-scalar term, or a NaN/inf term
            (the message names the term).
    """
    if not terms:
        raise ValueError("hrnet_total_loss needs at least one loss term")
    canon: dict[str, tuple[str, Tensor]] = {}
    for name, value in terms.items():
        key = _canonical(name)
        if key in canon:
            raise ValueError(
                f"loss terms {canon[key][0]!r} and {name!r} both name {LOSS_TERMS[key]}")
        if not isinstance(value, Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"loss term {name!r} ({LOSS_TERMS[key]}) must be a scalar tensor, "
                             f"got {shape}")
        canon[key] = (name, value.reshape(()))
    # One device sync for the whole check; find the culprit only when something is wrong.
    values = torch.stack([v.detach().float() for _, v in canon.values()])
    if not bool(torch.isfinite(values).all()):
        bad = [f"{name!r} ({LOSS_TERMS[key]}) = {float(v)}"
               for key, (name, v) in canon.items() if not torch.isfinite(v.detach()).all()]
        raise ValueError(f"non-finite loss term(s): {', '.join(bad)}")
    parts = [canon[k][1] for k in _UNWEIGHTED if k in canon]
    cnc = [canon[k][1] for k in _CNC if k in canon]
    if cnc:
        parts.append(lambda_cnc * sum(cnc[1:], cnc[0]))
    return sum(parts[1:], parts[0])


__all__ = [
    "LOSS_TERMS",
    "batch_hard_triplet_loss",
    "consistent_node_loss",
    "cross_entropy_label_smooth",
    "hrnet_total_loss",
    "pairwise_euclidean",
    "verification_loss",
]
