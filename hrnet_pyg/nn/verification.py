"""The verification head of Eq. 13: the same-identity probability of a pair node.

From Shuang Liu, Wenmin Huang and Zhong Zhang, "Learning Hybrid Relationships for Person
Re-identification", AAAI 2021 (Sec. 3.3), which does not specify the head; the reading here is a
learned metric on the propagated difference nodes (``docs/paper_map.md``).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import BatchNorm1d
from torch_geometric.nn.dense.linear import Linear

from hrnet_pyg.runtime import check_features


class VerificationHead(torch.nn.Module):
    r"""Same-identity probability of a pair node (Eq. 13):

    .. math::
        \hat{t}(n, i) = \operatorname{sigmoid}\big(\mathbf{w}^\top
        \mathrm{BN}(\mathbf{h}_{n,i} \odot \mathbf{h}_{n,i}) + b\big), \qquad
        \mathbf{h}_{n,i} = \mathbf{u}'_{n,i} \;\text{or}\; \mathbf{u}'_{n,i} \mathbf{W}_h .

    The paper does not specify the head. A linear head on :math:`\mathbf{u}` cannot work: before
    propagation :math:`\mathbf{u}_{n,i} = -\mathbf{u}_{i,n}`, so
    :math:`\mathbf{w}^\top \mathbf{u}_{n,i} = -\mathbf{w}^\top \mathbf{u}_{i,n}` and the two
    orderings of the same pair would get opposite scores. The element-wise square removes the
    sign, making the head invariant to :math:`\mathbf{u} \rightarrow -\mathbf{u}`, and
    :math:`\mathbf{w}^\top (\mathbf{h} \odot \mathbf{h})` is a learned squared distance, which a
    negative weight turns into a similarity: a diagonal metric with :math:`\mathbf{h} =
    \mathbf{u}'` (``projection=False``), a full low-rank (Mahalanobis) metric
    :math:`\mathbf{W}_h \operatorname{diag}(\mathbf{w}) \mathbf{W}_h^\top` with a learned
    :math:`\mathbf{W}_h \in \mathbb{R}^{d \times d_h}` (``projection=True``). After the PR
    layer :math:`\mathbf{u}'_{n,i}` and :math:`-\mathbf{u}'_{i,n}` are no longer exactly equal (the
    ReLU message is not odd), so :math:`\hat{t}(n, i) \ne \hat{t}(i, n)` in general.

    The module returns **logits** (use :func:`torch.nn.functional.binary_cross_entropy_with_logits`
    for Eq. 13, stable where :math:`\hat{t}` saturates); ``torch.sigmoid`` gives :math:`\hat{t}`.

    Args:
        in_channels (int): Size :math:`d` of the pair features.
        projection (bool, optional): Learn :math:`\mathbf{W}_h` (a full metric) instead of
            weighting the raw dimensions. (default: :obj:`False`)
        hidden_channels (int, optional): :math:`d_h` of :math:`\mathbf{W}_h`.
            (default: :obj:`None`, :math:`d`)
        init (str, optional): ``"glorot"`` (random :math:`\mathbf{w}`, :math:`\mathbf{W}_h`) or
            ``"distance"`` (:math:`\mathbf{w} = -\mathbf{1}/d_h`, :math:`b = 0`,
            :math:`\mathbf{W}_h = \mathbf{I}`: the head starts as a standardised squared
            distance). (default: :obj:`"glorot"`)

    Shapes:
        - **input:** :math:`(*, d)` (e.g. :math:`(N, N, d)`); BatchNorm statistics are taken over
          all leading dimensions flattened
        - **output:** :math:`(*)` logits
    """

    def __init__(self, in_channels: int, projection: bool = False,
                 hidden_channels: int | None = None, init: str = "glorot"):
        super().__init__()
        if init not in ("glorot", "distance"):
            raise ValueError(f"VerificationHead: init must be 'glorot' or 'distance', got {init!r}")
        self.in_channels = in_channels
        self.projection = projection
        self.init = init
        self.hidden_channels = (hidden_channels or in_channels) if projection else in_channels
        self.proj = (Linear(in_channels, self.hidden_channels, bias=False, weight_initializer="glorot")
                     if projection else None)  # W_h
        self.bn = BatchNorm1d(self.hidden_channels)
        self.lin = Linear(self.hidden_channels, 1, bias=True, weight_initializer="glorot")
        self.reset_parameters()

    def reset_parameters(self):
        self.bn.reset_parameters()
        self.lin.reset_parameters()
        if self.proj is not None:
            self.proj.reset_parameters()
        if self.init == "distance":
            # Start as a (negative, standardised) squared distance: every dimension's squared
            # difference counts against a match, W_h = I (as far as d_h allows). Training then
            # re-weights; from Glorot's random signs half the dimensions start inverted.
            with torch.no_grad():
                self.lin.weight.fill_(-1.0 / self.hidden_channels)
                self.lin.bias.zero_()
                if self.proj is not None:
                    torch.nn.init.eye_(self.proj.weight)

    def forward(self, u: Tensor) -> Tensor:
        check_features(u, self.in_channels, type(self).__name__, "u", dims=range(1, 8))
        lead = u.shape[:-1]
        h = self.proj(u) if self.proj is not None else u
        z = self.bn((h * h).reshape(-1, self.hidden_channels))
        return self.lin(z).view(lead)

    def __repr__(self) -> str:
        extra = f", projection=True, hidden_channels={self.hidden_channels}" if self.projection else ""
        if self.init != "glorot":
            extra += f", init={self.init!r}"
        return f"{self.__class__.__name__}({self.in_channels}{extra})"


__all__ = ["VerificationHead"]
