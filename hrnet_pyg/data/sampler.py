"""P x K identity batch sampler (Sec. 4.2: 11 identities x 6 images = 66 per batch)."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler


class PKSampler(Sampler[list[int]]):
    """Batch sampler yielding ``P * K`` indices per batch: ``K`` images of each of ``P`` identities.

    Pass it as ``DataLoader(dataset, batch_sampler=PKSampler(dataset.pids))``. A batch is
    identity-major: the ``K`` indices of its first identity, then the ``K`` of the second, ...

    One epoch (torchreid's ``RandomIdentitySampler`` semantics, made reproducible):

    1. every identity's indices are shuffled and cut into groups of ``K``; a remainder shorter
       than ``K`` is dropped, and an identity with fewer than ``K`` images gets one group that
       holds each of its images once, filled up to ``K`` by draws with replacement, in random
       order (torchreid draws all ``K`` with replacement, which can leave out an image: for a
       VIPeR identity, two images and ``K = 6``, a group lacks the cross-camera positive with
       probability 1/32);
    2. while at least ``P`` identities have groups left, ``P`` distinct ones are drawn uniformly
       and each gives its next group to the batch;
    3. the groups left over (fewer than ``P`` identities) are dropped; with
       ``drop_last=False`` they are emitted instead as smaller batches of all remaining
       identities, one group each, until none is left.

    The epoch's plan is a pure function of ``(seed, epoch)`` (numpy ``default_rng([seed, epoch])``),
    so resuming at epoch ``e`` with ``set_epoch(e)`` reproduces the batches exactly.
    ``__len__`` is exact: the plan of the current epoch is computed (and cached) to count it.
    After a complete pass the epoch advances by one by itself; ``set_epoch`` overrides it.

    Distributed use: with ``num_replicas = R > 1`` every rank computes the same global plan of
    ``P``-identity batches and takes identities ``[rank * P // R, (rank + 1) * P // R)`` of each, so
    the ranks see disjoint identities (and images) in every step and the same number of batches;
    ``P`` need not divide by ``R`` (the paper's 11 over 2 ranks: 6 + 5).

    Args:
        pids: the identity of every dataset index (e.g. ``ImageDataset.pids``).
        P: identities per batch (global, across replicas). (default: ``11``)
        K: images per identity. (default: ``6``)
        seed: base seed. (default: ``0``)
        drop_last: drop the groups left when fewer than ``P`` identities remain.
            (default: ``True``)
        num_replicas: number of distributed ranks sharing a batch (at most ``P``).
            (default: ``1``)
        rank: this process's rank. (default: ``0``)
    """

    def __init__(
        self,
        pids: Sequence[int],
        P: int = 11,
        K: int = 6,
        seed: int = 0,
        drop_last: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if P < 1 or K < 1:
            raise ValueError(f"P and K must be >= 1, got P={P}, K={K}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got "
                             f"num_replicas={num_replicas}, rank={rank}")
        if P < num_replicas:
            raise ValueError(f"P={P} identities per batch cannot give each of the "
                             f"num_replicas={num_replicas} ranks at least one identity")
        if num_replicas > 1 and not drop_last:
            raise ValueError("drop_last=False would give ranks different batch counts; "
                             "use drop_last=True with num_replicas > 1")
        index_of: dict[int, list[int]] = defaultdict(list)
        for idx, pid in enumerate(pids):
            index_of[int(pid)].append(idx)
        if len(index_of) < P:
            raise ValueError(
                f"PKSampler needs at least P={P} identities, the data has {len(index_of)}"
            )
        self.P, self.K, self.seed, self.drop_last = P, K, int(seed), drop_last
        self.num_replicas, self.rank = num_replicas, rank
        self.num_samples = len(pids)
        self._pids = sorted(index_of)  # fixed order: the plan must not depend on dict order
        self._index_of = {p: np.asarray(index_of[p], dtype=np.int64) for p in self._pids}
        self.epoch = 0
        self.start_batch = 0
        self._cache: tuple | None = None

    # the plan ---------------------------------------------------------------------------------
    def _global_plan(self, epoch: int) -> list[list[list[int]]]:
        """Batches of the epoch as lists of per-identity groups (before the rank split)."""
        if self._cache is not None and self._cache[0] == (self.seed, epoch):
            return self._cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        K = self.K
        groups: dict[int, list[list[int]]] = {}
        for pid in self._pids:
            idxs = self._index_of[pid]
            if len(idxs) < K:  # every image once, the rest drawn with replacement
                fill = rng.choice(idxs, size=K - len(idxs), replace=True)
                idxs = rng.permutation(np.concatenate([idxs, fill]))
            else:
                idxs = rng.permutation(idxs)
            groups[pid] = [idxs[i * K:(i + 1) * K].tolist() for i in range(len(idxs) // K)]
        available = list(self._pids)
        plan: list[list[list[int]]] = []
        while len(available) >= self.P:
            chosen = [available[i] for i in rng.choice(len(available), size=self.P,
                                                       replace=False)]
            plan.append([groups[p].pop(0) for p in chosen])
            available = [p for p in available if groups[p]]
        if not self.drop_last:
            while available:
                plan.append([groups[p].pop(0) for p in available])
                available = [p for p in available if groups[p]]
        self._cache = ((self.seed, epoch), plan)
        return plan

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's batches of ``epoch`` (default: the current one), from the first."""
        plan = self._global_plan(self.epoch if epoch is None else epoch)
        # Uneven splits are allowed (P = 11 over 2 ranks: 6 + 5 identities); the global-graph
        # option and the loss weighting handle ranks of different sizes.
        lo = self.rank * self.P // self.num_replicas
        hi = (self.rank + 1) * self.P // self.num_replicas
        out = []
        for batch in plan:
            if self.num_replicas > 1:
                batch = batch[lo:hi]
            out.append([i for group in batch for i in group])
        return out

    # Sampler protocol ---------------------------------------------------------------------
    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches()
        yield from batches[self.start_batch:]
        # a full pass moves on to the next epoch's plan unless set_epoch says otherwise
        self.epoch += 1
        self.start_batch = 0

    def __len__(self) -> int:
        """The number of batches the next ``__iter__`` yields (exact)."""
        return max(0, len(self._global_plan(self.epoch)) - self.start_batch)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the plan of ``epoch``; ``start_batch`` skips batches already trained on."""
        if epoch < 0 or start_batch < 0:
            raise ValueError(f"epoch and start_batch must be >= 0, got {epoch}, {start_batch}")
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "start_batch": self.start_batch,
            "P": self.P,
            "K": self.K,
            "drop_last": self.drop_last,
            "num_replicas": self.num_replicas,
            "num_samples": self.num_samples,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("P", "K", "drop_last", "num_replicas", "num_samples"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"PKSampler state has {key}={state[key]!r} but this sampler has "
                    f"{key}={getattr(self, key)!r}; the saved epoch plan would not match"
                )
        self.seed = int(state["seed"])
        self.set_epoch(int(state["epoch"]), int(state.get("start_batch", 0)))

    def __repr__(self) -> str:
        return (f"PKSampler(P={self.P}, K={self.K}, identities={len(self._pids)}, "
                f"seed={self.seed}, epoch={self.epoch})")


__all__ = ["PKSampler"]
