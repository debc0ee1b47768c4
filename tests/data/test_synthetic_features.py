"""The generated feature world of the efficacy study (hrnet_pyg.data.synthetic_features)."""
import pytest
import torch

from hrnet_pyg.data.synthetic_features import FeatureWorldConfig, generate_feature_world
from hrnet_pyg.evaluation import cosine_distance, evaluate_rank
from hrnet_pyg.kreciprocal import k_reciprocal_rerank_features

SMALL = dict(dim=32, num_train_ids=20, num_test_ids=30, imgs_per_id=8)


def test_world_is_a_pure_function_of_its_config():
    a = generate_feature_world(FeatureWorldConfig(**SMALL, seed=3))
    b = generate_feature_world(FeatureWorldConfig(**SMALL, seed=3))
    c = generate_feature_world(FeatureWorldConfig(**SMALL, seed=4))
    for split in ("train", "query", "gallery"):
        assert torch.equal(getattr(a, split).feats, getattr(b, split).feats)
    assert not torch.equal(a.query.feats, c.query.feats)


def test_splits_sizes_labels_and_cross_camera_matches():
    cfg = FeatureWorldConfig(**SMALL, seed=0)
    w = generate_feature_world(cfg)
    assert w.train.feats.shape == (20 * 8, 32) and w.train.feats.dtype == torch.float32
    assert len(w.query) == 30 * cfg.queries_per_id
    assert len(w.gallery) == 30 * (8 - cfg.queries_per_id)
    assert set(w.train.pids.tolist()) == set(range(20)) and w.num_train_pids == 20
    assert not set(w.train.pids.tolist()) & set(w.query.pids.tolist())  # disjoint identities
    assert set(w.query.pids.tolist()) == set(w.gallery.pids.tolist())
    for p, c in zip(w.query.pids.tolist(), w.query.camids.tolist(), strict=False):  # a match the protocol keeps
        same = (w.gallery.pids == p) & (w.gallery.camids != c)
        assert bool(same.any())
    # queries of one identity come from distinct cameras
    for p in set(w.query.pids.tolist()):
        cams = w.query.camids[w.query.pids == p].tolist()
        assert len(cams) == len(set(cams))
    assert 0.0 < float(w.train.occluded.float().mean()) < 1.0
    assert set(w.train.views.tolist()) <= set(range(cfg.num_views))


def test_cosine_is_imperfect_and_neighbourhoods_carry_information():
    # A deterministic property of the world at seed 0 (no training involved): ranking by
    # cosine is far from perfect, and the gallery's own neighbourhoods (k-reciprocal) help.
    w = generate_feature_world(FeatureWorldConfig(dim=64, num_train_ids=50, num_test_ids=100, seed=0))
    mu, sd = w.train.feats.mean(0), w.train.feats.std(0)
    q, g = (w.query.feats - mu) / sd, (w.gallery.feats - mu) / sd
    args = (w.query.pids.numpy(), w.gallery.pids.numpy(), w.query.camids.numpy(), w.gallery.camids.numpy())
    cos = evaluate_rank(cosine_distance(q, g), *args)
    kr = evaluate_rank(k_reciprocal_rerank_features(q, g, progress=False), *args)
    assert 0.3 < cos.mAP < 0.9
    assert kr.mAP > cos.mAP + 0.03


def test_removing_the_nuisances_makes_retrieval_easy():
    # Each nuisance term is a real term of the model: without them retrieval is near perfect.
    easy = FeatureWorldConfig(dim=64, num_train_ids=20, num_test_ids=50, family_rho=0.0,
                              view_shared=0.0, view_personal=0.0, camera_bias=0.0,
                              occlusion_p=0.0, noise=0.1, seed=1)
    w = generate_feature_world(easy)
    args = (w.query.pids.numpy(), w.gallery.pids.numpy(), w.query.camids.numpy(), w.gallery.camids.numpy())
    assert evaluate_rank(cosine_distance(w.query.feats, w.gallery.feats), *args).mAP > 0.99


@pytest.mark.parametrize("bad,match", [
    (dict(cams_per_id=9), "cams_per_id"),
    (dict(queries_per_id=3, cams_per_id=3), "queries_per_id"),
    (dict(imgs_per_id=3), "imgs_per_id"),
    (dict(family_rho=1.0), "family_rho"),
])
def test_bad_config_is_one_clear_error(bad, match):
    with pytest.raises(ValueError, match=match):
        generate_feature_world(FeatureWorldConfig(**{**SMALL, **bad}))
