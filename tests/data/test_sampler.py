"""PKSampler: P x K composition, the epoch rule, determinism, resume, distributed split."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from hrnet_pyg.data import FeatureDataset, PKSampler


def _pids(counts):
    """Dataset pid list with ``counts[p]`` images of identity ``p``, shuffled index order."""
    pids = [p for p, n in counts.items() for _ in range(n)]
    rng = np.random.default_rng(123)
    return [pids[i] for i in rng.permutation(len(pids))]


COUNTS = {p: n for p, n in zip(range(20), [6, 7, 12, 13, 3, 1, 6, 18, 9, 6, 6, 24, 2, 6, 11,
                                            6, 8, 5, 6, 30], strict=False)}


def _check_epoch(batches, pids, P, K, drop_last=True):
    """The rule of one epoch, checked from the outside (independent of the implementation)."""
    groups_total = {p: max(1, n // K) for p, n in Counter(pids).items()}
    used = Counter()
    seen_without_replacement = Counter()
    for batch in batches:
        if drop_last:
            assert len(batch) == P * K
        assert len(batch) % K == 0
        ids = []
        for g in range(len(batch) // K):
            group = batch[g * K:(g + 1) * K]
            group_pids = {pids[i] for i in group}
            assert len(group_pids) == 1  # identity-major: K images of one identity in a row
            pid = group_pids.pop()
            ids.append(pid)
            used[pid] += 1
            if Counter(pids)[pid] >= K:
                seen_without_replacement.update(group)
            else:  # fewer than K images: each of them once, the rest drawn from them again
                assert set(group) == {i for i, p in enumerate(pids) if p == pid}
        assert len(set(ids)) == len(ids)  # P distinct identities
        if drop_last:
            assert len(ids) == P
    # each image at most once per epoch (identities with >= K images)
    assert max(seen_without_replacement.values(), default=1) == 1
    for pid, n in used.items():
        assert n <= groups_total[pid]
    left = [p for p in groups_total if used[p] < groups_total[p]]
    if drop_last:
        assert len(left) < P  # stopped only when fewer than P identities had groups left
    else:
        assert left == []  # every group emitted
    return used


@pytest.mark.parametrize("P,K", [(4, 3), (5, 6), (11, 6), (1, 1)])
def test_composition_and_epoch_rule(P, K):
    pids = _pids(COUNTS)
    sampler = PKSampler(pids, P=P, K=K, seed=7)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        n = len(sampler)
        batches = list(sampler)
        assert n == len(batches) > 0
        _check_epoch(batches, pids, P, K)


def test_with_replacement_identity():
    pids = [0] * 2 + [1] * 6 + [2] * 6
    sampler = PKSampler(pids, P=3, K=4, seed=0)
    batches = list(sampler)
    assert len(batches) == 1
    group0 = [i for i in batches[0] if pids[i] == 0]
    assert len(group0) == 4 and set(group0) <= {0, 1}


def test_identity_with_fewer_than_k_images_gives_every_image_in_its_group():
    # VIPeR-like: 2 images per identity, K = 6. Drawing all 6 with replacement would leave out one
    # of the two images in 1/32 of the groups (2 * 0.5^6); here every group holds both, always.
    pids = [p for p in range(40) for _ in range(2)]
    sampler = PKSampler(pids, P=8, K=6, seed=0)
    seen_orders = set()
    for epoch in range(20):
        for batch in sampler.batches(epoch):
            for g in range(8):
                group = batch[g * 6:(g + 1) * 6]
                pid = pids[group[0]]
                assert sorted(set(group)) == [2 * pid, 2 * pid + 1]
                seen_orders.add(tuple(group))
    assert len(seen_orders) > 10  # the fill and the order are random, not a fixed pattern


def test_drop_last_false_emits_every_group():
    pids = _pids(COUNTS)
    sampler = PKSampler(pids, P=5, K=4, seed=3, drop_last=False)
    batches = list(sampler)
    used = _check_epoch(batches, pids, 5, 4, drop_last=False)
    assert sum(used.values()) == sum(max(1, n // 4) for n in COUNTS.values())
    assert len(batches[-1]) < 5 * 4


def test_determinism_and_epochs():
    pids = _pids(COUNTS)
    a, b = PKSampler(pids, P=4, K=3, seed=1), PKSampler(pids, P=4, K=3, seed=1)
    assert list(a) == list(b)  # same seed, same epoch
    # a full pass advances the epoch; set_epoch(e) reproduces epoch e directly
    e1 = list(a)
    fresh = PKSampler(pids, P=4, K=3, seed=1)
    fresh.set_epoch(1)
    assert list(fresh) == e1
    fresh.set_epoch(0)
    assert list(fresh) != e1
    other_seed = PKSampler(pids, P=4, K=3, seed=2)
    assert list(other_seed) != list(PKSampler(pids, P=4, K=3, seed=1))
    assert a.epoch == 2 and fresh.epoch == 1


def test_len_is_exact_and_resume():
    pids = _pids(COUNTS)
    s = PKSampler(pids, P=4, K=3, seed=5)
    s.set_epoch(4)
    full = list(s)
    s.set_epoch(4, start_batch=3)
    assert len(s) == len(full) - 3
    assert list(s) == full[3:]
    s.set_epoch(4, start_batch=2)
    state = s.state_dict()
    t = PKSampler(pids, P=4, K=3, seed=99)
    t.load_state_dict(state)
    assert t.seed == 5 and list(t) == full[2:]
    with pytest.raises(ValueError, match="K=3 but this sampler has K=4"):
        PKSampler(pids, P=4, K=4).load_state_dict(state)


def test_errors():
    with pytest.raises(ValueError, match="at least P=11 identities, the data has 3"):
        PKSampler([0, 1, 2, 2], P=11, K=6)
    with pytest.raises(ValueError, match="P and K must be >= 1"):
        PKSampler([0, 1], P=0, K=2)
    with pytest.raises(ValueError, match="P and K must be >= 1"):
        PKSampler([0, 1], P=1, K=0)
    with pytest.raises(ValueError, match="at least one identity"):
        PKSampler(list(range(10)), P=2, K=1, num_replicas=3, rank=0)
    with pytest.raises(ValueError, match="rank"):
        PKSampler(list(range(10)), P=4, K=1, num_replicas=2, rank=2)


def test_distributed_split_is_disjoint_and_complete():
    pids = _pids(COUNTS)
    single = PKSampler(pids, P=6, K=3, seed=11)
    ranks = [PKSampler(pids, P=6, K=3, seed=11, num_replicas=3, rank=r) for r in range(3)]
    for s in [single] + ranks:
        s.set_epoch(2)
    global_batches = list(single)
    per_rank = [list(s) for s in ranks]
    assert all(len(b) == len(global_batches) for b in per_rank)
    for step, gb in enumerate(global_batches):
        parts = [per_rank[r][step] for r in range(3)]
        assert all(len(p) == 2 * 3 for p in parts)  # P/R identities x K per rank
        assert sum(parts, []) == gb  # the ranks together make the global batch
        id_sets = [{pids[i] for i in p} for p in parts]
        assert not (id_sets[0] & id_sets[1]) and not (id_sets[1] & id_sets[2])


def test_with_dataloader_and_paper_batch():
    # Sec. 4.2: 11 identities x 6 images = 66
    pids = [p for p in range(15) for _ in range(7)]
    feats = torch.arange(len(pids), dtype=torch.float32)[:, None].repeat(1, 4)
    ds = FeatureDataset(feats, pids)
    sampler = PKSampler(ds.pids, seed=0)
    assert (sampler.P, sampler.K) == (11, 6)
    loader = DataLoader(ds, batch_sampler=sampler)
    batches = list(loader)
    assert len(batches) == len(sampler.batches(0))
    f, pid, cam, idx = batches[0]
    assert f.shape == (66, 4) and pid.shape == (66,)
    assert torch.equal(f[:, 0].long(), idx)
    assert pid.view(11, 6).unique(dim=1).shape == (11, 1)  # 6 equal ids per row
    assert pid.view(11, 6)[:, 0].unique().numel() == 11


def test_distributed_split_of_p_11_over_2_ranks_is_uneven_and_complete():
    pids = _pids(COUNTS)
    single = PKSampler(pids, P=5, K=2, seed=3)
    ranks = [PKSampler(pids, P=5, K=2, seed=3, num_replicas=2, rank=r) for r in range(2)]
    for s in [single] + ranks:
        s.set_epoch(1)
    for gb, b0, b1 in zip(list(single), list(ranks[0]), list(ranks[1]), strict=False):
        assert (len(b0), len(b1)) == (2 * 2, 3 * 2)  # 5 // 2 and the rest, K = 2 each
        assert b0 + b1 == gb
        assert not {pids[i] for i in b0} & {pids[i] for i in b1}
