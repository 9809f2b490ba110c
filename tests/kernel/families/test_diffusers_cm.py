"""diffusers consistency models (`trail.sampler: cm`): a class-conditional `UNet2DModel` trained as
diffusers' consistency-training example trains it, in its folders, is imported, searched at 1 and
2 steps, evaluated and exported as a `ConsistencyModelPipeline` folder, which diffusers loads and
samples, from the evaluation's noise and labels, to the evaluated FID. lcsc's sampler is the
pipeline's loop (1, 2 and 3 steps, and the `timesteps` it is given), conditional or not; what
does not fit is one line."""

import copy
import json
from unittest import mock

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import tiny_config
from foreign_trails import UNET, diffusers_cm_run, diffusers_run
from helpers import check_one_line, run_card_snippet
from lcsc.cli import main
from lcsc.kernel.config import load_config
from lcsc.kernel.data import load_split
from lcsc.kernel.families.diffusers_cm import ConsistencyPipelineSampler
from lcsc.kernel.families.diffusers_run import effective_decay
from lcsc.kernel.models import for_model, search_nfe
from lcsc.kernel.paths import Layout, dataset_name
from lcsc.kernel.scoring import Scorer

RGB = {"dataset": "folder", "image_size": 12, "channels": 3}  # ConsistencyModelPipeline samples RGB only


def _rgb_digits(folder):
    """The digits as RGB images in one sub-folder per class (a labelled folder), each class tinted."""
    digits = load_split(
        {
            "dataset": "digits",
            "image_size": 12,
            "channels": 1,
            "split_seed": 0,
            "test_fraction": 0.2,
            "folder": None,
            "root": "",
            "download": False,
        },
        "all",
    )
    grey = ((digits.images[:, 0] + 1) / 2).numpy()
    for i, (image, label) in enumerate(zip(grey, digits.labels.tolist())):
        tint = np.array([1.0, 0.4 + 0.06 * label, 1.0 - 0.08 * label])
        arr = (np.clip(image[..., None] * tint, 0, 1) * 255).astype(np.uint8)
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr, "RGB").save(folder / str(label) / f"{i:04d}.png")
    return folder


def _pipeline_images(pipe, noise, labels, nfe, timesteps=None):
    """ConsistencyModelPipeline's samples in [-1, 1], from `noise` [B, S, C, H, W]: [:, 0] as its
    latents, [:, k] as the noise its scheduler draws after step k (a generator's draws otherwise)."""
    import diffusers.schedulers.scheduling_consistency_models as module

    draws = iter([noise[:, k] for k in range(1, noise.shape[1])] + [torch.zeros_like(noise[:, 0])] * 2)
    with mock.patch.object(module, "randn_tensor", lambda *args, **kwargs: next(draws)):
        images = pipe(
            batch_size=len(noise),
            class_labels=labels,
            num_inference_steps=None if timesteps else nfe,
            timesteps=timesteps,
            latents=noise[:, 0],
            output_type="pt",
        ).images
    return images * 2 - 1


@pytest.mark.parametrize("num_classes", [None, 10])
def test_sampled_as_the_pipeline_samples_at_1_2_and_3_steps_and_at_given_timesteps(num_classes):
    from diffusers import CMStochasticIterativeScheduler, ConsistencyModelPipeline, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(**dict(UNET, in_channels=3, out_channels=3), num_class_embeds=num_classes).eval()
    scheduler = CMStochasticIterativeScheduler(num_train_timesteps=40)
    pipe = ConsistencyModelPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    noise = torch.randn(6, 3, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    labels = None if num_classes is None else torch.tensor([3, 0, 9, 3, 5, 1])
    sampler = ConsistencyPipelineSampler(dict(scheduler.config), "test", timesteps=[[22, 0]], max_nfe=3)
    for nfe in (1, 2, 3):
        theirs = _pipeline_images(pipe, noise, labels, nfe, [22, 0] if nfe == 2 else None)
        torch.testing.assert_close(sampler.sample(unet, noise, nfe, labels), theirs, rtol=1e-5, atol=1e-5)
    plain = ConsistencyPipelineSampler(dict(scheduler.config), "test", max_nfe=2)  # 2 steps spread evenly
    torch.testing.assert_close(
        plain.sample(unet, noise, 2, labels), _pipeline_images(pipe, noise, labels, 2), rtol=1e-5, atol=1e-5
    )
    assert not torch.allclose(plain.sample(unet, noise, 2, labels), sampler.sample(unet, noise, 2, labels))
    assert sampler.settings(2)["timesteps"] == [22, 0] and plain.settings(2)["timesteps"] is None
    with pytest.raises(ValueError, match="NFE 4"):
        sampler.network_calls(4)


@pytest.fixture(scope="module")
def cm_setup(tmp_path_factory):
    """A labelled RGB folder, its feature network and reference stats, and a class-conditional CM
    run on it in diffusers' layout, imported with trail.sampler cm."""
    root = tmp_path_factory.mktemp("dcm")
    cfg = tiny_config(
        root / "results",
        data=dict(RGB, folder=str(_rgb_digits(root / "digits rgb"))),
        consistency={"search_nfe": [1, 2], "evaluate_nfe": [1, 2]},
        evaluate={"repeats": 1},
    )
    run = diffusers_cm_run(root / "cm run; 'x'", load_split(cfg["data"], "train"), num_classes=10)
    settings = json.loads((run / "checkpoint-40" / "unet_ema" / "config.json").read_text())
    cfg["trail"] = {
        "source": "diffusers",
        "path": str(run),
        "sampler": "cm",
        "ema": "unet_ema",
        "ema_decay": effective_decay(settings),
    }
    config = root / "cm.yaml"
    config.write_text(yaml.safe_dump(cfg))
    for stage in (["train-features"], ["reference-stats", "--split", "train"], ["import-trail"]):
        assert main([*stage, "--config", str(config)]) == 0
    return load_config(config), config, run


@pytest.mark.slow
def test_searched_evaluated_and_exported_as_a_pipeline_that_samples_the_evaluated_fid(cm_setup):
    from diffusers import ConsistencyModelPipeline

    cfg, config, run = cm_setup
    layout = Layout.of(cfg)
    features = layout.feature_net("classifier")
    stats = layout.stats(dataset_name(cfg["data"]), "train", "classifier")
    manifest = json.loads(layout.manifest("imported").read_text())
    assert manifest["kind"] == "diffusers" and manifest["sampler"] == "cm"
    assert [c["step"] for c in manifest["checkpoints"]] == [10, 20, 30, 40]
    assert manifest["scheduler_config"]["_class_name"] == "CMStochasticIterativeScheduler"

    given = ["--config", str(config), "--model", "imported", "--features", str(features), "--stats", str(stats)]
    assert main(["search", *given]) == 0
    search = json.loads(layout.coefficients("imported", search_nfe(cfg, "imported")).read_text())
    assert len(search["coefficients"]) == 4
    variants = ("lcsc", "last", f"ema_{cfg['trail']['ema_decay']:g}")
    for variant in variants:
        assert main(["evaluate", *given, "--variant", variant]) == 0
    evaluations = [str(layout.eval_json("imported", v)) for v in variants]
    evaluated = json.loads(layout.eval_json("imported", "lcsc").read_text())
    assert evaluated["conditioning"]["num_classes"] == 10
    assert evaluated["sampler"]["sampler"] == "diffusers-CMStochasticIterativeScheduler"
    assert (
        main(
            [
                "export",
                "--config",
                str(config),
                "--model",
                "imported",
                "--variant",
                "lcsc",
                "--evaluations",
                *evaluations,
            ]
        )
        == 0
    )
    out = layout.export_dir("imported", "lcsc")
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["pipeline"]
    scope = run_card_snippet(out)  # the card's snippet, as a user runs it in the export folder
    assert "ConsistencyModelPipeline.from_pretrained('pipeline')" in scope["__snippet__"]
    assert "class_labels=labels" in scope["__snippet__"]
    assert len(scope["images"]) == 16 and scope["images"][0].size == (12, 12)

    # the export, loaded by diffusers, samples the evaluation's noise and labels to its FIDs
    pipe = ConsistencyModelPipeline.from_pretrained(out / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    mine = for_model(cfg, "imported")
    scorer = Scorer.open(mine, layout.manifest("imported"), features, stats, torch.device("cpu"), 96)
    latents = scorer.make_noise(mine["evaluate"]["samples"], mine["evaluate"]["seed"])
    assert latents.noise.shape[1] == 2 and sorted(latents.labels.bincount().tolist()) == [9] * 4 + [10] * 6
    for nfe in (1, 2):
        images = _pipeline_images(pipe, latents.noise, latents.labels, nfe)
        fid = scorer.reference.fid(scorer.features(images, 96))
        assert fid == pytest.approx(evaluated["fid"][str(nfe)], rel=1e-5)
    assert evaluated["fid"]["1"] != evaluated["fid"]["2"]


def _write(cfg, tmp_path, **trail):
    bad = copy.deepcopy(cfg)
    bad["results_dir"] = str(tmp_path / "results")
    bad["trail"] = dict(bad["trail"], **trail)
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(bad))
    return str(config)


def test_what_does_not_fit_is_one_line(cm_setup, tmp_path, capsys):
    cfg, _, run = cm_setup
    cases = [
        (dict(sampler="dm"), ["trail.sampler: dm, but", "CMStochasticIterativeScheduler", "set trail.sampler: cm"]),
        (dict(timesteps=[[0, 22]]), ["trail.timesteps: [0, 22] must decrease"]),
        (dict(timesteps=[[40, 0]]), ["trail.timesteps: [40, 0] reaches 40", "num_train_timesteps 40"]),
        (dict(sampler="dm", timesteps=[[22, 0]]), ["trail.timesteps: set, but trail.sampler is dm"]),
    ]
    for trail, needles in cases:
        config = _write(cfg, tmp_path, **trail)
        check_one_line(main(["import-trail", "--config", config]), capsys.readouterr().err, "import-trail", needles)
    # the trail imported as consistency models, then sampled as a diffusion model: the manifest says otherwise
    layout = Layout.of(cfg)
    config = _write(cfg, tmp_path, sampler="dm")
    check_one_line(
        main(
            [
                "evaluate",
                "--config",
                config,
                "--model",
                "imported",
                "--variant",
                "last",
                "--manifest",
                str(layout.manifest("imported")),
                "--features",
                str(layout.feature_net("classifier")),
                "--stats",
                str(layout.stats(dataset_name(cfg["data"]), "train", "classifier")),
                "--out",
                str(tmp_path / "last.json"),
            ]
        ),
        capsys.readouterr().err,
        "evaluate",
        ["sampler 'cm', but the config's trail.sampler is 'dm'", "rerun import_trail"],
    )
    over = copy.deepcopy(cfg)
    over["consistency"]["evaluate_nfe"] = [1, 2, 41]
    config = tmp_path / "over.yaml"
    over["results_dir"] = str(tmp_path / "results")
    config.write_text(yaml.safe_dump(over))
    check_one_line(
        main(["import-trail", "--config", str(config)]),
        capsys.readouterr().err,
        "import-trail",
        ["consistency.evaluate_nfe: NFE 41", "num_train_timesteps 40"],
    )


def test_a_diffusion_models_run_sampled_as_consistency_models_is_one_line(trained, tmp_path, capsys):
    run = diffusers_run(tmp_path / "dm run", steps=10, every=5)
    cfg = copy.deepcopy(trained[0])
    cfg["results_dir"] = str(tmp_path / "results")
    cfg["trail"] = {"source": "diffusers", "path": str(run), "sampler": "cm"}
    config = tmp_path / "dm-as-cm.yaml"
    config.write_text(yaml.safe_dump(cfg))
    check_one_line(
        main(["import-trail", "--config", str(config)]),
        capsys.readouterr().err,
        "import-trail",
        ["trail.sampler: cm, but", "DDPMScheduler's config, a diffusion model's", "set trail.sampler: dm"],
    )
