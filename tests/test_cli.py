"""The hrnet-pyg verbs end to end on a tiny generated dataset (images, a real ResNet-18 trunk)."""
import json

import pytest

from hrnet_pyg.cli import build_parser, main
from hrnet_pyg.protocol import RerankConfig
from hrnet_pyg.runtime import load_checkpoint

VERBS = ["train", "eval", "extract", "search", "export", "demo", "visualize", "datasets"]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_explains_every_option(verb, capsys):
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    sub = build_parser()._subparsers._group_actions[0].choices[verb]
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{verb} {action.option_strings} has no help text"
            assert action.option_strings[-1] in text


TINY = [
    "--set",
    "data.name=synthetic",
    "--set",
    "data.kwargs={num_train_ids: 6, num_test_ids: 4, imgs_per_id: 6, num_distractors: 2, num_junk: 1, progress: false}",
    "--set",
    "model.backbone=resnet18",
    "--set",
    "model.pretrained=false",
    "--set",
    "model.image_size=[32, 16]",
    "--set",
    "model.k=3",
    "--set",
    "model.num_identities=3",
    "--set",
    "model.num_instances=2",
    "--set",
    "rerank.shortlist=10",
    "--set",
    "run.num_workers=0",
    "--set",
    "run.max_steps_per_epoch=2",
    "--set",
    "run.eval_batch_size=16",
    "--device",
    "cpu",
]


def test_train_resume_eval_on_generated_images(tmp_path, capsys, caplog):
    data = TINY + ["--data-root", str(tmp_path / "data")]
    common = data + ["--output-dir", str(tmp_path / "run")]
    assert main(["train", *common, "--epochs", "1", "--no-progress"]) == 0
    first = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(first) == {"cnn", "hrnet"}
    ckpt = tmp_path / "run" / "last.pth"
    assert main(["train", *common, "--epochs", "2", "--resume", str(ckpt), "--no-progress"]) == 0
    lines = (tmp_path / "run" / "metrics.csv").read_text().strip().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2"]  # epoch 2 continued epoch 1
    capsys.readouterr()
    assert main(["eval", *data, "--checkpoint", str(ckpt), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "CNN (cosine)" in out and "relational re-ranking" in out
    # the checkpoint carries the run's test protocol (--set rerank.shortlist=10), and eval uses it
    # (the table names it in a line under it)
    assert load_checkpoint(ckpt)["rerank"] == RerankConfig(shortlist=10).to_dict()
    assert "test protocol: rerank.shortlist=10, rerank.ir_score=ir_bn_cosine," in out
    # --shortlist and --set rerank.<field> change it for this evaluation; --top-k is --shortlist's
    # former name: the same, with one deprecation line
    for flag in ("--shortlist", "--top-k"):
        caplog.clear()
        with caplog.at_level("WARNING", logger="hrnet_pyg"):
            assert main(["eval", *data, "--checkpoint", str(ckpt), "--no-progress", flag, "5",
                         "--set", "rerank.norm=none"]) == 0
        out = capsys.readouterr().out
        assert "test protocol: rerank.shortlist=5, rerank.ir_score=ir_bn_cosine, rerank.pr_score=pr_prob, " \
               "rerank.norm=none, rerank.pr_weight=0.25" in out
        notes = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
        assert notes == ([] if flag == "--shortlist" else ["deprecated: --top-k is now --shortlist"])
    # --protocol switches the re-ranking itself (--set rerank.protocol=...), its options by --set
    assert main(["eval", *data, "--checkpoint", str(ckpt), "--no-progress", "--protocol", "gallery",
                 "--set", "rerank.gallery_k=2"]) == 0
    out = capsys.readouterr().out
    assert "| re-ranking (rerank.protocol=gallery) |" in out
    assert "test protocol: rerank.protocol=gallery, rerank.gallery_k=2, rerank.gallery_neighbours=all," in out


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    code = main(["eval", "--checkpoint", str(tmp_path / "missing.pth"), "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert "missing.pth" in err and "Traceback" not in err
    code = main(["datasets", "--name", "market1501", "--root", str(tmp_path)])
    assert code == 2
    assert str(tmp_path) in capsys.readouterr().err
