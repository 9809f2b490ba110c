"""A diffusers training run brought to lcsc (docs/your-own-run.md): a tiny UNet2DModel trained on
digits with diffusers' DDPMScheduler and EMAModel, saved as diffusers' unconditional training
example saves it, goes through the whole workflow in Snakemake (import, stats, baselines, search,
evaluate, tabulate, export), and the exported pipeline, loaded back by diffusers alone, scores
the FID that the evaluation measured for lcsc."""

import json

import pytest
import torch
import yaml

from foreign_trails import diffusers_run
from helpers import snakemake
from lcsc.kernel.features import load_features
from lcsc.kernel.fid import Reference, load_stats
from lcsc.kernel.paths import Layout

diffusers = pytest.importorskip("diffusers")

NFE = [2, 3]


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    root = tmp_path_factory.mktemp("byo")
    marker = root / "PWNED"
    run = diffusers_run(root / "diffusers run; 'one'", steps=30, every=10, marker=marker)
    cfg = {
        "experiment": "byo",
        "results_dir": str(root / "results"),
        "data": {"image_size": 12},
        "trail": {"source": "diffusers", "path": str(run), "ema": "unet_ema", "ema_decay": 0.7692},
        "features": {"epochs": 3, "dim": 16, "width": 8},
        "baselines": {"lawa_last": [], "ema_decays": [], "power_sigma_rels": [], "greedy_soup": False},
        "search": {
            "budget": 6,
            "num_workers": 3,
            "samples": 64,
            "nfe": 2,
            "batch_size": 64,
            "rescore_top": 2,
            "rescore_samples": 96,
        },
        "evaluate": {"nfe": NFE, "samples": 96, "batch_size": 96, "grid": 16},
        "mlflow": {"enabled": False},
    }
    config = root / "byo.yaml"
    config.write_text(yaml.safe_dump(cfg))
    result = snakemake(["--cores", "2", "--configfile", str(config)], cwd=root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return cfg, Layout(cfg["results_dir"], "byo"), run, marker, result


def test_the_workflow_imports_instead_of_training(workflow):
    cfg, layout, run, marker, result = workflow
    log = result.stdout + result.stderr
    assert "import_trail" in log and "train_dm" not in log and "train_cm" not in log
    manifest = json.loads(layout.manifest("imported").read_text())
    assert manifest["kind"] == "diffusers" and manifest["root"] == str(run)
    assert [c["file"] for c in manifest["checkpoints"]] == [
        f"checkpoint-{s}/unet/diffusion_pytorch_model.safetensors" for s in (10, 20, 30)
    ]
    assert manifest["ema"][0]["file"] == "checkpoint-30/unet_ema/diffusion_pytorch_model.safetensors"
    assert not marker.exists()  # accelerate's random_states_0.pkl beside the checkpoints is never unpickled
    summary = (layout.report_dir() / "summary.csv").read_text()
    assert "imported" in summary and "ema_0.7692" in summary and "lcsc" in summary


@pytest.mark.parametrize("nfe", NFE)
def test_the_exported_pipeline_scores_the_evaluated_fid(workflow, nfe):
    cfg, layout, _, _, _ = workflow
    pipe = diffusers.DDPMPipeline.from_pretrained(layout.export_dir("imported", "lcsc") / "pipeline")
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"  # diffusion.sampler: ddim, as evaluated
    pipe.set_progress_bar_config(disable=True)
    ecfg = cfg["evaluate"]
    images = pipe(
        batch_size=ecfg["samples"],
        generator=torch.Generator().manual_seed(2000),  # evaluate.seed
        num_inference_steps=nfe,
        output_type="np",
    ).images
    x = torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1
    net = load_features(layout.feature_net("classifier"), "cpu")
    stats = next(layout.stats("x", "y", "z").parent.glob("*-train-classifier.npz"))
    fid = Reference(*load_stats(stats, net.hash), torch.device("cpu")).fid(net(x, ecfg["batch_size"]))
    evaluation = json.loads(layout.eval_json("imported", "lcsc").read_text())
    assert evaluation["repeats"]["seeds"] == 2  # an imported trail's default; the first run is evaluate.seed's
    evaluated = evaluation["runs"][0]["fid"][str(nfe)]
    assert abs(fid - evaluated) / evaluated < 1e-5, (fid, evaluated)
    unet = diffusers.UNet2DModel.from_pretrained(layout.export_dir("imported", "lcsc") / "unet")
    for a, b in zip(unet.state_dict().values(), pipe.unet.state_dict().values()):
        assert torch.equal(a, b)
