"""A class-conditional diffusers run (`UNet2DModel` with `num_class_embeds`): imported, sampled with
the labels as `class_labels` exactly as diffusers' own scheduler loop samples it, exported as `unet/`
and `scheduler/` (DDPMPipeline cannot condition) with a loading snippet that runs, and a class
count that is not the data set's is one line."""

import copy
import json

import pytest
import torch
import yaml

from foreign_trails import diffusers_run
from helpers import check_one_line, run_card_snippet, trained_paths
from lcsc.cli import main
from lcsc.kernel.config import load_config
from lcsc.kernel.paths import Layout
from lcsc.kernel.scoring import Scorer


@pytest.fixture(scope="module")
def conditional_run(trained, tmp_path_factory):
    root = tmp_path_factory.mktemp("dcond")
    run = diffusers_run(root / "conditional run; 'x'", steps=20, every=10, num_classes=10)
    cfg = copy.deepcopy(trained[0])
    cfg["results_dir"] = str(root / "results")
    cfg["evaluate"] = dict(cfg["evaluate"], repeats=1)
    cfg["trail"] = {"source": "diffusers", "path": str(run)}
    config = root / "dcond.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["import-trail", "--config", str(config)]) == 0
    return load_config(config), config, run


@pytest.mark.slow
def test_sampled_as_diffusers_samples_it_with_class_labels_and_exported_as_it_loads(conditional_run, trained):
    from diffusers import DDIMScheduler, UNet2DModel

    cfg, config, run = conditional_run
    layout = Layout.of(cfg)
    _, features, stats = trained_paths(trained[0])
    scorer = Scorer.open(cfg, layout.manifest("imported"), features, stats, torch.device("cpu"), 32)
    assert scorer.num_classes == 10
    noise = scorer.make_noise(48, 2000)
    flat = scorer.weights_from_file(run / "checkpoint-20" / "unet" / "diffusion_pytorch_model.safetensors")
    ours = scorer.sample(flat, 3, noise)
    unet = UNet2DModel.from_pretrained(run / "checkpoint-20" / "unet").eval()
    scheduler = DDIMScheduler.from_pretrained(run / "scheduler")
    scheduler.set_timesteps(3)
    x = noise.noise * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t, class_labels=noise.labels).sample, t, x).prev_sample
    torch.testing.assert_close(ours, x.clamp(-1, 1), rtol=1e-5, atol=1e-5)

    given = ["--config", str(config), "--model", "imported", "--features", str(features), "--stats", str(stats)]
    for variant in ("uniform", "last"):
        assert main(["evaluate", *given, "--variant", variant]) == 0
    assert json.loads(layout.eval_json("imported", "last").read_text())["conditioning"]["num_classes"] == 10
    evaluations = [str(layout.eval_json("imported", v)) for v in ("uniform", "last")]
    assert (
        main(
            [
                "export",
                "--config",
                str(config),
                "--model",
                "imported",
                "--variant",
                "uniform",
                "--evaluations",
                *evaluations,
            ]
        )
        == 0
    )
    out = layout.export_dir("imported", "uniform")
    assert (out / "unet" / "config.json").is_file() and (out / "scheduler" / "scheduler_config.json").is_file()
    assert not (out / "pipeline").exists()
    scope = run_card_snippet(out)  # the card's snippet, as a user runs it in the export folder
    assert "class_labels=labels" in scope["__snippet__"]
    assert scope["x"].shape == (16, 1, 12, 12) and torch.isfinite(scope["x"]).all()


def test_a_class_count_other_than_the_data_sets_is_one_line(trained, tmp_path, capsys):
    run = diffusers_run(tmp_path / "five classes", steps=10, every=5, num_classes=5)
    cfg = copy.deepcopy(trained[0])
    cfg["results_dir"] = str(tmp_path / "results")
    cfg["trail"] = {"source": "diffusers", "path": str(run)}
    config = tmp_path / "five.yaml"
    config.write_text(yaml.safe_dump(cfg))
    check_one_line(
        main(["import-trail", "--config", str(config)]),
        capsys.readouterr().err,
        "import-trail",
        ["data.dataset: digits has 10 classes, but the network", "class-conditional with 5 classes"],
    )
