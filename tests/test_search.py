"""Features of one's own images and search (hrnet_pyg/search.py, ``hrnet-pyg extract --images`` / ``search``)."""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hrnet_pyg import HRNet
from hrnet_pyg.cli import main
from hrnet_pyg.config import HRNetConfig
from hrnet_pyg.data import DatasetError, DatasetNotFoundError
from hrnet_pyg.protocol import RerankConfig
from hrnet_pyg.scoring import score_query_graphs
from hrnet_pyg.search import (
    UNKNOWN_COLOR,
    ImageFeatures,
    extract_images,
    list_images,
    search,
    search_features,
    write_grid,
)
from hrnet_pyg.topk import stable_k_smallest
from hrnet_pyg.visualize import MATCH_COLOR, MISMATCH_COLOR

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def tiny_config(**kw) -> HRNetConfig:
    return HRNetConfig(
        backbone="resnet18", pretrained=False, image_size=(64, 32), k=3, num_identities=2,
        num_instances=2, **kw,
    )


def tiny_model(seed: int = 0) -> HRNet:
    torch.manual_seed(seed)
    model = HRNet(tiny_config(), num_classes=2)
    # Non-trivial BNNeck statistics, so that "BN(F)" differs from F in the references below.
    bn = model.bnneck.bn
    g = torch.Generator().manual_seed(seed + 1)
    bn.running_mean.copy_(torch.rand(bn.num_features, generator=g) * 0.5)
    bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
    bn.weight.data.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
    return model.eval()


def write_noise(path: Path, seed: int, size=(20, 40)) -> Path:
    """A random RGB image of ``size`` = (width, height)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def model() -> HRNet:
    return tiny_model()


@pytest.fixture(scope="module")
def gallery_dir(tmp_path_factory) -> Path:
    """3 identities x 2 cameras in Market-1501 names, mixed image sizes."""
    d = tmp_path_factory.mktemp("gallery")
    for pid in range(1, 4):
        for cam in range(1, 3):
            write_noise(d / f"{pid:04d}_c{cam}s1_00000{cam}_00.jpg", seed=10 * pid + cam, size=(20 + 4 * cam, 40 + pid))
    return d


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model.pth"
    model.save(path)
    return path


def reference_features(model: HRNet, paths) -> torch.Tensor:
    """F of each image, the test transform written plainly: bilinear resize, /255, ImageNet norm."""
    h, w = model.config.image_size
    batch = []
    for p in paths:
        with Image.open(p) as im:
            arr = np.asarray(im.convert("RGB").resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0
        batch.append(torch.from_numpy(((arr - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy()))
    with torch.no_grad():
        return model.eval().extract_features(torch.stack(batch))


def reference_bn_cosine(model: HRNet, qf: torch.Tensor, gf: torch.Tensor) -> np.ndarray:
    """1 - cosine of BN(F) with BN written out: gamma (f - mu) / sqrt(var + eps) + beta."""
    bn = model.bnneck.bn
    mu, var = bn.running_mean.double().numpy(), bn.running_var.double().numpy()
    gamma, beta = bn.weight.detach().double().numpy(), bn.bias.detach().double().numpy()

    def bnf(f):
        return gamma * (f.double().numpy() - mu) / np.sqrt(var + bn.eps) + beta

    q, g = bnf(qf), bnf(gf)
    out = np.zeros((len(q), len(g)))
    for i in range(len(q)):
        for j in range(len(g)):
            out[i, j] = 1 - q[i] @ g[j] / (np.linalg.norm(q[i]) * np.linalg.norm(g[j]))
    return out


# ---------------------------------------------------------------------------- image lists
def test_list_images_folder_recursive_sorted_with_market_labels(tmp_path):
    write_noise(tmp_path / "b" / "0002_c2s1_000001_00.jpg", 1)
    write_noise(tmp_path / "0001_c1s1_000001_00.png", 2)
    write_noise(tmp_path / "a" / "deep" / "0003_c3s1_000001_00.jpeg", 3)
    write_noise(tmp_path / ".hidden.jpg", 4)  # hidden file
    write_noise(tmp_path / ".cache" / "0009_c1s1_000001_00.jpg", 5)  # hidden folder
    (tmp_path / "notes.txt").write_text("not an image")
    imgs = list_images(tmp_path)
    names = [Path(p).name for p in imgs.paths]
    assert names == ["0001_c1s1_000001_00.png", "0003_c3s1_000001_00.jpeg", "0002_c2s1_000001_00.jpg"]
    assert all(Path(p).is_absolute() for p in imgs.paths)
    assert imgs.pids.tolist() == [1, 3, 2]
    assert imgs.camids.tolist() == [0, 2, 1]  # 0-based, as the dataset parsers
    assert list_images(tmp_path, labels="none").pids is None


def test_list_images_auto_without_market_names_has_no_labels(tmp_path):
    write_noise(tmp_path / "0001_c1s1_000001_00.jpg", 1)
    write_noise(tmp_path / "holiday.jpg", 2)
    imgs = list_images(tmp_path)
    assert len(imgs) == 2 and imgs.pids is None and imgs.camids is None
    with pytest.raises(DatasetError, match="holiday.jpg"):
        list_images(tmp_path, labels="market")


def test_list_images_folder_labels(tmp_path):
    write_noise(tmp_path / "alice" / "1.jpg", 1)
    write_noise(tmp_path / "alice" / "2.jpg", 2)
    write_noise(tmp_path / "bob" / "1.jpg", 3)
    imgs = list_images(tmp_path, labels="folder")
    assert imgs.pids.tolist() == ["alice", "alice", "bob"] and imgs.camids is None
    write_noise(tmp_path / "7" / "x.jpg", 4)
    write_noise(tmp_path / "loose.jpg", 5)
    with pytest.raises(DatasetError, match="loose.jpg.*sub-folder per identity"):
        list_images(tmp_path, labels="folder")


def test_list_images_single_file_and_errors(tmp_path):
    img = write_noise(tmp_path / "0005_c2s1_000001_00.jpg", 1)
    one = list_images(img)
    assert one.paths == [str(img.resolve())] and one.pids.tolist() == [5]
    with pytest.raises(DatasetNotFoundError, match="nothere"):
        list_images(tmp_path / "nothere")
    with pytest.raises(FileNotFoundError):  # DatasetNotFoundError is also a FileNotFoundError
        list_images(tmp_path / "nothere")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"empty holds no images"):
        list_images(empty)
    np.savez(tmp_path / "f.npz", features=np.zeros((1, 2)))
    with pytest.raises(DatasetError, match="feature file"):
        list_images(tmp_path / "f.npz")
    with pytest.raises(ValueError, match="labels must be one of"):
        list_images(tmp_path, labels="guess")


def test_list_images_csv(tmp_path):
    write_noise(tmp_path / "imgs" / "a.jpg", 1)
    write_noise(tmp_path / "imgs" / "b.jpg", 2)
    (tmp_path / "with.csv").write_text("path,pid,camid\nimgs/a.jpg,7,1\nimgs/b.jpg,9,0\n")
    imgs = list_images(tmp_path / "with.csv")
    assert [Path(p).name for p in imgs.paths] == ["a.jpg", "b.jpg"]
    assert imgs.pids.dtype.kind == "i" and imgs.pids.tolist() == [7, 9] and imgs.camids.tolist() == [1, 0]
    (tmp_path / "names.csv").write_text("Path,PID\nimgs/a.jpg,alice\nimgs/b.jpg,bob\n")
    named = list_images(tmp_path / "names.csv")
    assert named.pids.tolist() == ["alice", "bob"] and named.camids is None
    (tmp_path / "plain.csv").write_text("path\nimgs/b.jpg\n")
    assert list_images(tmp_path / "plain.csv").pids is None
    (tmp_path / "nopath.csv").write_text("file,pid\nimgs/a.jpg,1\n")
    with pytest.raises(DatasetError, match="no 'path' column"):
        list_images(tmp_path / "nopath.csv")
    (tmp_path / "missing.csv").write_text("path\nimgs/a.jpg\nimgs/gone.jpg\n")
    with pytest.raises(DatasetNotFoundError, match="gone.jpg"):
        list_images(tmp_path / "missing.csv")
    (tmp_path / "dup.csv").write_text("path\nimgs/a.jpg\nimgs/../imgs/a.jpg\n")
    with pytest.raises(DatasetError, match="listed twice"):
        list_images(tmp_path / "dup.csv")
    (tmp_path / "hole.csv").write_text("path,pid\nimgs/a.jpg,1\nimgs/b.jpg,\n")
    with pytest.raises(DatasetError, match="empty 'pid' on line 3"):
        list_images(tmp_path / "hole.csv")


# ---------------------------------------------------------------------------- extraction
def test_extract_images_equals_plain_transform_and_model(model, gallery_dir):
    feats = extract_images(model, gallery_dir, batch_size=4, device="cpu", progress=False)
    ref = reference_features(model, feats.paths)
    assert feats.features.shape == (6, model.feat_dim) and feats.features.dtype == torch.float32
    torch.testing.assert_close(feats.features, ref, atol=1e-5, rtol=1e-5)
    assert feats.pids.tolist() == [1, 1, 2, 2, 3, 3] and feats.camids.tolist() == [0, 1] * 3
    one_by_one = extract_images(model, gallery_dir, batch_size=1, device="cpu", progress=False)
    torch.testing.assert_close(one_by_one.features, feats.features, atol=1e-5, rtol=1e-5)


def test_extract_images_takes_a_list_of_paths(model, gallery_dir):
    folder = extract_images(model, gallery_dir, device="cpu", progress=False)
    order = [folder.paths[i] for i in (3, 0, 5)]
    listed = extract_images(model, [Path(p) for p in order], device="cpu", progress=False)
    assert listed.paths == order and listed.pids is None
    torch.testing.assert_close(listed.features, folder.features[[3, 0, 5]], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="list of images is empty"):
        extract_images(model, [], progress=False)


def test_extract_images_names_unreadable_image(model, tmp_path):
    write_noise(tmp_path / "good.jpg", 1)
    (tmp_path / "broken.jpg").write_text("this is not a JPEG")
    with pytest.raises(DatasetError, match=r"broken\.jpg"):
        extract_images(model, tmp_path, device="cpu", progress=False)


def test_extract_images_needs_a_backbone(tmp_path):
    cfg = HRNetConfig(backbone=None, feat_dim=8, k=3)
    write_noise(tmp_path / "a.jpg", 1)
    with pytest.raises(ValueError, match="no backbone"):
        extract_images(HRNet(cfg, num_classes=2), tmp_path, progress=False)


def test_feature_file_roundtrip_and_errors(g_feats, tmp_path):
    feats = g_feats
    back = ImageFeatures.load(feats.save(tmp_path / "g.npz"))
    assert torch.equal(back.features, feats.features) and back.paths == feats.paths
    assert back.pids.tolist() == feats.pids.tolist() and back.camids.tolist() == feats.camids.tolist()
    assert back.model_fingerprint == feats.model_fingerprint
    unlabelled = ImageFeatures(features=torch.zeros(2, 3), paths=["a", "b"])
    unlabelled.save(tmp_path / "u.npz")
    with np.load(tmp_path / "u.npz") as data:
        assert "pids" not in data.files and "camids" not in data.files
    # the file written by ``extract --split`` loads too
    np.savez(tmp_path / "split.npz", features=np.ones((2, 3), np.float32), pids=np.array([1, 2]),
             camids=np.array([0, 1]), paths=np.array(["x.jpg", "y.jpg"]))
    assert ImageFeatures.load(tmp_path / "split.npz").pids.tolist() == [1, 2]
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        ImageFeatures.load(tmp_path / "nothere.npz")
    np.savez(tmp_path / "nopaths.npz", features=np.ones((2, 3)))
    with pytest.raises(ValueError, match="no 'paths' array"):
        ImageFeatures.load(tmp_path / "nopaths.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="junk.npz could not be read"):
        ImageFeatures.load(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match="3 paths for 2 feature rows"):
        ImageFeatures(features=torch.zeros(2, 3), paths=["a", "b", "c"])


# ---------------------------------------------------------------------------- search
@pytest.fixture(scope="module")
def query_dir(tmp_path_factory, gallery_dir) -> Path:
    """Copies of two gallery images under other names, plus one image absent from the gallery."""
    d = tmp_path_factory.mktemp("query")
    shutil.copy(gallery_dir / "0001_c1s1_000001_00.jpg", d / "0001_c3s1_000009_00.jpg")
    shutil.copy(gallery_dir / "0003_c2s1_000002_00.jpg", d / "0003_c4s1_000009_00.jpg")
    write_noise(d / "0002_c5s1_000009_00.jpg", seed=99)
    return d


@pytest.fixture(scope="module")
def g_feats(model, gallery_dir) -> ImageFeatures:
    return extract_images(model, gallery_dir, device="cpu", progress=False)


@pytest.fixture(scope="module")
def q_feats(model, query_dir) -> ImageFeatures:
    return extract_images(model, query_dir, device="cpu", progress=False)


def test_search_without_rerank_is_cosine_of_bn_features(model, q_feats, g_feats):
    q, g = q_feats, g_feats
    res = search_features(model, q, g, topk=4, rerank=False, device="cpu", progress=False)
    ref = reference_bn_cosine(model, q.features, g.features)
    for i in range(len(q)):
        order = sorted(range(len(g)), key=lambda j: (ref[i, j], j))[:4]
        assert res.indices[i].tolist() == order
        np.testing.assert_allclose(res.cosine_distance[i].numpy(), ref[i, order], atol=1e-5)
    assert res.relational_score is None and not res.reranked
    # an exact copy of a gallery image is found first, at distance 0
    names = [Path(g.paths[int(j)]).name for j in res.indices[:, 0]]
    assert names[0] == "0001_c1s1_000001_00.jpg" and names[2] == "0003_c2s1_000002_00.jpg"
    assert float(res.cosine_distance[0, 0]) < 1e-5 and float(res.cosine_distance[2, 0]) < 1e-5


def test_search_rerank_orders_shortlist_by_relational_scores(model, q_feats, g_feats):
    # The literal sum of the two terms: z-scores over a 4-image shortlist of a random model would
    # divide float rounding by a tiny spread (the fusion itself is tested in test_rerank.py).
    model = copy.copy(model)
    model.rerank_config = RerankConfig(norm="none")
    q, g = q_feats, g_feats
    shortlist = 4  # < G = 6: both the re-scored part and the cosine-ordered tail are checked
    res = search_features(model, q, g, topk=6, shortlist=shortlist, device="cpu", progress=False)
    assert res.reranked
    cos = reference_bn_cosine(model, q.features, g.features)
    for i in range(len(q)):
        top = sorted(range(len(g)), key=lambda j: (cos[i, j], j))
        short, rest = top[:shortlist], top[shortlist:]
        graph = torch.cat([q.features[i : i + 1], g.features[short]]).unsqueeze(0)  # (1, 1 + k, d)
        with torch.no_grad():
            scores = score_query_graphs(model, graph)[0]
        by_score = [short[j] for j in sorted(range(shortlist), key=lambda j: -float(scores[j]))]
        assert res.indices[i].tolist() == by_score + rest
        np.testing.assert_allclose(
            res.relational_score[i, :shortlist].numpy(), sorted(scores.tolist(), reverse=True), atol=1e-5
        )
        assert torch.isnan(res.relational_score[i, shortlist:]).all()
        np.testing.assert_allclose(res.cosine_distance[i].numpy(), cos[i, by_score + rest], atol=1e-5)
    text = res.format()
    assert "relational re-ranking" in text and "score" in text and "query 3/3" in text


def test_search_drops_the_query_itself_unless_asked(model, g_feats):
    g = g_feats
    res = search_features(model, g, g, topk=10, rerank=False, device="cpu", progress=False)
    assert res.topk == 5  # 6 gallery images minus the query itself
    for i in range(len(g)):
        assert i not in res.indices[i].tolist()
    kept = search_features(model, g, g, topk=3, rerank=False, exclude_self=False, device="cpu", progress=False)
    assert kept.indices[:, 0].tolist() == list(range(len(g)))
    assert float(kept.cosine_distance[:, 0].abs().max()) < 1e-5
    single = ImageFeatures(features=g.features[:1], paths=g.paths[:1])
    with pytest.raises(ValueError, match="only the query image itself"):
        search_features(model, single, single, rerank=False, progress=False)


def test_search_checks_feature_dimension_and_source_model(model, q_feats, g_feats):
    q, g = q_feats, g_feats
    bad = ImageFeatures(features=torch.zeros(2, 7), paths=["a", "b"])
    with pytest.raises(ValueError, match="dimension 7.*dimension 512"):
        search_features(model, bad, g, progress=False)
    other = tiny_model(seed=5)
    with pytest.warns(UserWarning, match="extracted by another model"):
        res = search_features(other, q, g, rerank=False, device="cpu", progress=False)
    assert any("another model" in n for n in res.notes)


def test_search_from_paths_and_feature_file(model, g_feats, gallery_dir, query_dir, tmp_path):
    g_feats.save(tmp_path / "g.npz")
    from_file = search(model, query_dir, tmp_path / "g.npz", topk=3, device="cpu", progress=False)
    from_imgs = search(model, query_dir, gallery_dir, topk=3, device="cpu", progress=False)
    assert torch.equal(from_file.indices, from_imgs.indices)


def test_write_grid_borders(model, q_feats, g_feats, tmp_path):
    q, g = q_feats, g_feats
    res = search_features(model, q, g, topk=3, rerank=False, device="cpu", progress=False)
    grid = write_grid(res, tmp_path / "known.png", max_queries=2)
    with Image.open(grid.path) as im:
        px = im.convert("RGB")
        assert len(grid.boxes) == 2
        for r, row in enumerate(grid.boxes):
            for c, (x0, y0, _, _) in enumerate(row[1:]):
                same = int(g.pids[int(res.indices[r, c])]) == int(q.pids[r])
                assert px.getpixel((x0 + 1, y0 + 1)) == (MATCH_COLOR if same else MISMATCH_COLOR)
    assert grid.matches[0][0]  # the copy of the query's own image is a match
    res.q_pids = None  # unknown identities: neutral borders, no false "mismatch"
    grid = write_grid(res, tmp_path / "unknown.png")
    with Image.open(grid.path) as im:
        px = im.convert("RGB")
        for row in grid.boxes:
            for x0, y0, x1, y1 in row[1:]:
                assert px.getpixel((x0 + 1, y0 + 1)) == UNKNOWN_COLOR
                assert px.getpixel((x1 - 2, y1 - 2)) == UNKNOWN_COLOR


# ---------------------------------------------------------------------------- CLI
def test_cli_extract_images_and_search(checkpoint, gallery_dir, query_dir, tmp_path, capsys):
    out = tmp_path / "g.npz"
    assert main(["extract", "--checkpoint", str(checkpoint), "--images", str(gallery_dir), "--out", str(out),
                 "--batch-size", "4", "--no-progress"]) == 0
    assert "wrote 6 features of dimension 512 (with pids)" in capsys.readouterr().out
    feats = ImageFeatures.load(out)
    assert len(feats) == 6 and feats.pids.tolist() == [1, 1, 2, 2, 3, 3]

    grid, csv = tmp_path / "grid.png", tmp_path / "ranks.csv"
    query = query_dir / "0001_c3s1_000009_00.jpg"
    assert main(["search", "--checkpoint", str(checkpoint), "--query", str(query), "--gallery", str(out),
                 "--topk", "3", "--no-rerank", "--grid", str(grid), "--csv", str(csv), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    lines = [ln for ln in printed.splitlines() if ln.strip().startswith(("1 ", "2 ", "3 "))]
    assert len(lines) == 3 and lines[0].split()[0] == "1"
    assert lines[0].endswith("0001_c1s1_000001_00.jpg") and "yes" in lines[0]  # the copy, rank 1
    assert grid.is_file() and csv.is_file()
    assert len(csv.read_text().strip().splitlines()) == 1 + 3

    assert main(["search", "--checkpoint", str(checkpoint), "--query", str(query_dir), "--gallery",
                 str(gallery_dir), "--topk", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("(ordered by relational re-ranking)") == 3

    # the CSV and grid the user has are never replaced silently: one line, before any work
    before = {p: p.read_bytes() for p in (grid, csv)}
    again = ["search", "--checkpoint", str(checkpoint), "--query", str(query), "--gallery", str(out),
             "--topk", "2", "--no-rerank", "--grid", str(grid), "--csv", str(csv), "--no-progress"]
    assert main(again) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--csv {csv} exists" in err[0] and "--overwrite" in err[0]
    assert {p: p.read_bytes() for p in (grid, csv)} == before
    csv.unlink()
    assert main(again) == 2 and f"--grid {grid} exists" in capsys.readouterr().err
    assert not csv.exists()
    assert main([*again, "--overwrite"]) == 0
    assert len(csv.read_text().strip().splitlines()) == 1 + 2


def test_cli_search_protocol(checkpoint, model, gallery_dir, query_dir, g_feats, q_feats, tmp_path, capsys):
    """``search --protocol NAME`` ranks as ``rerank.protocol=NAME`` of the checkpoint's protocol does."""
    from hrnet_pyg.gallery import gallery_rerank

    out = tmp_path / "g.npz"
    g_feats.save(out)
    base = ["search", "--checkpoint", str(checkpoint), "--query", str(query_dir), "--gallery", str(out),
            "--topk", "6", "--no-progress", "--csv"]
    assert main([*base, str(tmp_path / "gallery.csv"), "--protocol", "gallery"]) == 0
    assert capsys.readouterr().out.count("(ordered by rerank.protocol=gallery)") == 3
    dist = gallery_rerank(model, q_feats.features, g_feats.features, k=model.rerank_config.gallery_k,
                          output="distances", progress=False)
    names = [Path(p).name for p in g_feats.paths]
    rows = [line.split(",") for line in (tmp_path / "gallery.csv").read_text().splitlines()[1:]]
    for q in range(3):
        listed = [Path(r[2]).name for r in rows if Path(r[0]).name == Path(q_feats.paths[q]).name]
        assert listed == [names[j] for j in stable_k_smallest(dist[q : q + 1], 6)[0].tolist()]
    assert main([*base, str(tmp_path / "none.csv"), "--protocol", "none"]) == 0
    assert main([*base, str(tmp_path / "plain.csv"), "--no-rerank"]) == 0
    assert (tmp_path / "none.csv").read_text() == (tmp_path / "plain.csv").read_text()
    capsys.readouterr()
    assert main([*base, str(tmp_path / "x.csv"), "--no-rerank", "--protocol", "gallery"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "hrnet-pyg search: error: --no-rerank ranks by cosine, --protocol gallery re-ranks: give one of them"


def test_cli_clear_errors(checkpoint, gallery_dir, tmp_path, capsys):
    def run(*argv: str) -> str:
        assert main(list(argv)) == 2
        return capsys.readouterr().err

    missing = str(tmp_path / "none.pth")
    err = run("search", "--checkpoint", missing, "--query", str(gallery_dir), "--gallery", str(gallery_dir))
    assert "none.pth does not exist" in err and "Traceback" not in err
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    err = run(
        "search",
        "--checkpoint",
        str(tmp_path / "other.pth"),
        "--query",
        str(gallery_dir),
        "--gallery",
        str(gallery_dir),
    )
    assert "not an hrnet_pyg checkpoint" in err
    err = run(
        "search",
        "--checkpoint",
        str(checkpoint),
        "--query",
        str(tmp_path / "q.jpg"),
        "--gallery",
        str(gallery_dir),
        "--no-progress",
    )
    assert "q.jpg does not exist" in err
    (tmp_path / "empty").mkdir()
    err = run(
        "extract",
        "--checkpoint",
        str(checkpoint),
        "--images",
        str(tmp_path / "empty"),
        "--out",
        str(tmp_path / "x.npz"),
    )
    assert "holds no images" in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"\x89PNG broken")
    err = run(
        "extract",
        "--checkpoint",
        str(checkpoint),
        "--images",
        str(tmp_path / "bad"),
        "--out",
        str(tmp_path / "x.npz"),
        "--no-progress",
    )
    assert "x.png" in err and "cannot decode" in err
    err = run(
        "extract",
        "--checkpoint",
        str(checkpoint),
        "--images",
        str(gallery_dir),
        "--split",
        "query",
        "--out",
        str(tmp_path / "x.npz"),
    )
    assert "either --images" in err


def test_cli_extract_split_mode_still_works_and_agrees_with_images_mode(checkpoint, tmp_path, capsys):
    """``extract --split`` (a dataset split) and ``extract --images`` give the same features."""
    root = tmp_path / "mydata"
    seed = 0
    for split, ids in (("train", ("5", "6")), ("query", ("1", "2")), ("gallery", ("1", "2"))):
        for pid in ids:
            for n in range(2):
                seed += 1
                write_noise(root / split / pid / f"{n}.jpg", seed=seed)
    split_out, images_out = tmp_path / "split.npz", tmp_path / "images.npz"
    with pytest.warns(UserWarning, match="no camera ids"):
        assert (
            main(
                [
                    "extract",
                    "--checkpoint",
                    str(checkpoint),
                    "--set",
                    "data.name=folder",
                    "--data-root",
                    str(root),
                    "--set",
                    "run.num_workers=0",
                    "--split",
                    "query",
                    "--out",
                    str(split_out),
                    "--no-progress",
                ]
            )
            == 0
        )
    assert (
        main(
            [
                "extract",
                "--checkpoint",
                str(checkpoint),
                "--images",
                str(root / "query"),
                "--labels",
                "folder",
                "--out",
                str(images_out),
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    a, b = ImageFeatures.load(split_out), ImageFeatures.load(images_out)
    assert [Path(p).resolve() for p in a.paths] == [Path(p) for p in b.paths]
    torch.testing.assert_close(a.features, b.features, atol=1e-5, rtol=1e-5)
    assert a.pids.tolist() == b.pids.tolist() == [1, 1, 2, 2]
