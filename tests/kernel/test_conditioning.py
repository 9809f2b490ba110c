"""Class-conditional models: the U-Net's label embedding, labels drawn from the seed with the noise
(class-balanced, the same for every candidate and NFE of one seed), passed to every network call,
training with the data set's classes, and each mismatch of class counts as one line."""

import copy
import json

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from conftest import tiny_config
from helpers import check_one_line, trained_paths
from lcsc.cli import main
from lcsc.kernel.data import Split
from lcsc.kernel.errors import ConfigError
from lcsc.kernel.nets import UNet, build_unet
from lcsc.kernel.paths import Layout
from lcsc.kernel.scoring import Evaluator, Objective, Scorer, make_labels, make_noise
from lcsc.kernel.training import Labels, training_labels

CPU = torch.device("cpu")


def test_the_label_embedding_is_added_only_to_a_conditional_unet():
    torch.manual_seed(0)
    plain = build_unet(
        {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention": False, "dropout": 0.0}, 1
    )
    torch.manual_seed(0)
    same = UNet(1, 8, (1, 2))
    assert plain.state_dict().keys() == same.state_dict().keys() and not any("label" in k for k in plain.state_dict())
    conditional = UNet(1, 8, (1, 2), num_classes=10)
    guided = UNet(1, 8, (1, 2), num_classes=10, label_dropout=0.1)
    assert conditional.label.num_embeddings == 10 and guided.label.num_embeddings == 11  # + "no label"
    nn.init.normal_(conditional.out[-1].weight)  # (a fresh U-Net's output layer is zero)
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 10.0)
    a, b = conditional(x, t, torch.tensor([0, 1, 2, 3])), conditional(x, t, torch.tensor([0, 1, 2, 4]))
    assert torch.equal(a[:3], b[:3]) and not torch.equal(a[3], b[3])  # each image its own label
    with pytest.raises(ValueError, match="class-conditional"):
        conditional(x, t)
    with pytest.raises(ValueError, match="unconditional"):
        plain(x, t, torch.zeros(4, dtype=torch.long))


def test_labels_are_class_balanced_and_drawn_from_the_seed():
    labels = make_labels(2000, 10, 7, CPU)
    assert torch.equal(labels, make_labels(2000, 10, 7, CPU)) and not torch.equal(
        labels, make_labels(2000, 10, 8, CPU)
    )
    assert torch.bincount(labels).tolist() == [200] * 10
    counts = torch.bincount(make_labels(96, 10, 7, CPU), minlength=10)
    assert sorted(counts.tolist()) == [9] * 4 + [10] * 6  # 6 classes drawn once more for the remainder
    assert torch.bincount(make_labels(4, 10, 7, CPU), minlength=10).max() == 1  # fewer samples than classes


@pytest.fixture(scope="module")
def conditional(trained, tmp_path_factory):
    """A tiny class-conditional DM trail on the session's data, features and stats."""
    cfg, _ = trained
    root = tmp_path_factory.mktemp("cond")
    mine = tiny_config(root / "results", model={"num_classes": 10})
    config = root / "cond.yaml"
    config.write_text(yaml.safe_dump(mine))
    assert main(["train-dm", "--config", str(config)]) == 0
    _, features, stats = trained_paths(cfg)
    return mine, config, Layout.of(mine).manifest("dm"), features, stats


class Recording(nn.Module):
    """The scorer's network, recording the labels of every call."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, []

    def forward(self, x, t, labels=None):
        self.calls.append(None if labels is None else labels.clone())
        return self.net(x, t, labels)


def _per_sample(calls, calls_per_batch):
    """The labels of each sample, from the first call of each batch; and each batch's calls agree."""
    batches = [calls[i : i + calls_per_batch] for i in range(0, len(calls), calls_per_batch)]
    assert all(c is not None and torch.equal(c, batch[0]) for batch in batches for c in batch)
    return torch.cat([batch[0] for batch in batches])


def test_the_labels_reach_every_network_call_the_same_for_every_candidate_and_nfe(conditional):
    cfg, _, manifest, features, stats = conditional
    scorer = Scorer.open(cfg, manifest, features, stats, CPU, 32)
    recording = Recording(scorer.model)
    scorer.model = recording
    scfg = cfg["search"]
    objective = Objective.of(scfg)
    noises = Evaluator([scorer]).noises(scorer, objective, 64, scfg["seed"])
    seen = []
    for c in (np.array([0.0, 0.0, 0.0, 1.0]), np.array([0.4, 0.3, 0.2, 0.1])):  # two candidates of a search
        recording.calls.clear()
        scorer.measure(c, objective, noises)
        assert len(recording.calls) == 2 * scfg["nfe"]  # 2 batches of 32, nfe calls each
        seen.append(_per_sample(recording.calls, scfg["nfe"]))
    assert torch.equal(seen[0], seen[1])
    assert torch.equal(
        noises[scfg["nfe"]].noise, make_noise(64, scorer.shape, scfg["seed"], CPU)
    )  # the noise is unchanged
    evaluation = []
    for seed in (2000, 2001):
        noise = scorer.make_noise(64, seed)
        for nfe in (1, 2):  # one seed, every NFE of the sweep
            recording.calls.clear()
            scorer.quality(None, nfe, noise)
            evaluation.append((seed, _per_sample(recording.calls, nfe)))
    assert torch.equal(evaluation[0][1], evaluation[1][1]) and torch.equal(evaluation[2][1], evaluation[3][1])
    assert not torch.equal(evaluation[0][1], evaluation[2][1])  # another seed, other labels
    assert torch.equal(evaluation[0][1], make_labels(64, 10, 2000, CPU))


@pytest.mark.slow
def test_a_conditional_model_trains_searches_and_evaluates_with_its_classes(conditional, capsys):
    cfg, config, manifest, features, stats = conditional
    layout = Layout.of(cfg)
    assert json.loads(manifest.read_text())["model_config"]["num_classes"] == 10
    given = ["--config", str(config), "--features", str(features), "--stats", str(stats)]
    assert main(["train-cm", "--mode", "cd", "--config", str(config), "--set", "consistency.modes=[cd]"]) == 0
    assert main(["search", "--model", "dm", *given]) == 0
    assert main(["evaluate", "--model", "dm", "--variant", "lcsc", *given]) == 0
    result = json.loads(layout.eval_json("dm", "lcsc").read_text())
    assert result["conditioning"] == {
        "num_classes": 10,
        "labels": "class-balanced labels: each of the 10 classes 9 or 10 times (6 classes drawn for the remainder)",
    }
    from PIL import Image

    with Image.open(layout.eval_grid("dm", "lcsc")) as grid:  # a row per class: 10 rows of 1 (grid 16)
        assert grid.size == ((1 * 13 + 1) * 4, (10 * 13 + 1) * 4)
    assert json.loads(layout.manifest("cm_cd").read_text())["model_config"]["num_classes"] == 10


def test_training_labels_and_label_dropout():
    data = Split(torch.zeros(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2]), 3, "train")
    assert training_labels({"channels": 8}, data) is None
    labels = training_labels({"num_classes": 3, "label_dropout": 0.5}, data)
    assert labels.num_classes == 3 and labels.dropout == 0.5
    batch = Labels(torch.arange(3).repeat(100), 3, 0.5).batch(torch.arange(300), torch.Generator().manual_seed(0))
    assert 100 < (batch == 3).sum() < 200 and torch.equal(
        Labels(data.labels, 3).batch(torch.tensor([5, 0]), torch.Generator()), torch.tensor([2, 0])
    )
    with pytest.raises(
        ConfigError,
        match=r"model.num_classes: 4, but the data set has 3 classes; set "
        r"model.num_classes: 3",
    ):
        training_labels({"num_classes": 4}, data)
    unlabelled = Split(torch.zeros(6, 1, 4, 4), torch.zeros(6, dtype=torch.long), 1, "train")
    with pytest.raises(ConfigError, match="the data's images are unlabelled"):
        training_labels({"num_classes": 10}, unlabelled)


@pytest.mark.parametrize(
    "model, needles",
    [
        ({"num_classes": 7}, ["model.num_classes: 7, but data.dataset digits has 10 classes"]),
        ({"label_dropout": 0.1}, ["model.label_dropout: set, but the model is unconditional"]),
    ],
)
def test_a_class_count_that_does_not_fit_the_data_is_one_line(tmp_path, capsys, model, needles):
    cfg = copy.deepcopy(tiny_config(tmp_path / "results"))
    cfg["model"] |= model
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(cfg))
    check_one_line(main(["train-dm", "--config", str(config)]), capsys.readouterr().err, "train-dm", needles)


def test_a_conditional_trail_under_an_unconditional_config_is_one_line(conditional, tmp_path, capsys):
    cfg, config, manifest, features, stats = conditional
    given = ["--manifest", str(manifest), "--features", str(features), "--stats", str(stats)]
    rc = main(
        [
            "evaluate",
            "--model",
            "dm",
            "--variant",
            "last",
            "--config",
            str(config),
            *given,
            "--set",
            "model.num_classes=null",
            "--set",
            f"results_dir={tmp_path}",
        ]
    )
    check_one_line(
        rc,
        capsys.readouterr().err,
        "evaluate",
        ["model.num_classes: None in the config, but the trail", "was trained with 10"],
    )


def test_a_teacher_conditioned_otherwise_is_one_line(trained, conditional, tmp_path, capsys):
    cfg, config, *_ = conditional
    teacher = trained_paths(trained[0])[0]  # the session's unconditional DM
    rc = main(
        [
            "train-cm",
            "--mode",
            "cd",
            "--config",
            str(config),
            "--teacher",
            str(teacher),
            "--set",
            "consistency.modes=[cd]",
            "--set",
            f"results_dir={tmp_path}",
        ]
    )
    check_one_line(
        rc,
        capsys.readouterr().err,
        "train-cm",
        ["model.num_classes: 10 for the consistency model, but its teacher", "was trained with None"],
    )
