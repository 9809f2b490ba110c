"""Consistency models: the parameterization's boundary condition, exact NFE, the training losses,
the teacher's change of coordinates, the CD/CT trails and the training-cost trail."""

import json
import math

import pytest
import torch
import yaml

from lcsc.cli import main
from lcsc.config import ConfigError, for_model, load_config, models, stage_config, validate
from lcsc.consistency import (ConsistencyLoss, ConsistencySampler, Parameterization, VPTeacher, curriculum,
                              distance, lognormal_probs)
from lcsc.diffusion import VPDiffusion
from lcsc.evaluate import make_noise
from lcsc.io import load_tensors
from lcsc.nets import build_unet
from lcsc.trail import Trail, TrailError, truncate

from conftest import REPO, tiny_config
from test_diffusion import Counting


def _net(seed=0):
    torch.manual_seed(seed)
    net = build_unet({"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention": False,
                      "dropout": 0.0}, 1)
    with torch.no_grad():  # large weights: the skip connection alone could not hide the output
        for p in net.parameters():
            p.mul_(3.0)
    return net.eval()


def test_boundary_condition_holds_exactly():
    param = Parameterization()
    net = _net()
    x = torch.randn(6, 1, 12, 12) * 3
    with torch.no_grad():
        at_min = param(net, x, torch.full((6,), param.sigma_min))
        above = param(net, x, torch.full((6,), 0.01))
    assert torch.equal(at_min, x)  # bit for bit, whatever the weights
    assert not torch.allclose(above, x, atol=1e-3)  # the network does act above sigma_min


@pytest.mark.parametrize("nfe", [1, 2, 3])
def test_sampling_calls_the_network_exactly_nfe_times(nfe):
    net = Counting(_net())
    sampler = ConsistencySampler(Parameterization(), [2.0, 0.5])
    noise = make_noise(5, (1, 12, 12), 0, "cpu", steps=sampler.max_nfe)
    x = sampler.sample(net, noise, nfe)
    assert net.calls == nfe
    assert x.shape == (5, 1, 12, 12) and x.abs().max() <= 1
    with pytest.raises(ValueError, match="1 to 3 NFE"):
        sampler.sample(net, noise, 4)


def test_two_step_sampling_uses_the_intermediate_sigma_and_the_second_noise():
    seen = []

    def spy(x, t):
        seen.append(t[0].item())
        return torch.zeros_like(x)

    param = Parameterization()
    sampler = ConsistencySampler(param, [0.821])
    noise = make_noise(3, (1, 4, 4), 0, "cpu", steps=2)
    x1 = sampler.sample(spy, noise, 1)
    x2 = sampler.sample(spy, noise, 2)
    assert seen[0] == pytest.approx(250 * math.log(80.0)) and seen[2] == pytest.approx(250 * math.log(0.821))
    # with F = 0, f(x, s) = c_skip(s) x: the second step re-noises x1 with z_1 to sigma 0.821
    s = 0.821
    c_skip = 0.25 / ((s - 0.002) ** 2 + 0.25)
    expected = (c_skip * (x1 + math.sqrt(s ** 2 - 0.002 ** 2) * noise[:, 1])).clamp(-1, 1)
    assert torch.allclose(x2, expected, atol=1e-6)


def test_noise_with_steps_extends_the_single_step_noise():
    one = make_noise(7, (1, 4, 4), 3, "cpu")
    two = make_noise(7, (1, 4, 4), 3, "cpu", steps=2)
    three = make_noise(7, (1, 4, 4), 3, "cpu", steps=3)
    assert torch.equal(two[:, 0], one) and torch.equal(three[:, :2], two)
    assert not torch.allclose(two[:, 1], one)


def test_curriculum_and_lognormal_pairs():
    total = 600
    ns = [curriculum(k, total, 10, 1280) for k in range(total)]
    assert ns[0] == 11 and ns[-1] == 1281  # s0 + 1 to s1 + 1
    assert sorted(set(ns)) == [11, 21, 41, 81, 161, 321, 641, 1281]  # doubling in 8 equal stages
    assert ns.index(21) == total // 8
    sigmas = Parameterization().karras(ns[0])
    assert sigmas[0].item() == pytest.approx(0.002) and sigmas[-1].item() == pytest.approx(80.0)
    p = lognormal_probs(sigmas, -1.1, 2.0)
    assert p.shape == (10,) and p.sum().item() == pytest.approx(1.0) and (p >= 0).all()
    # each pair's probability is the lognormal mass between its sigmas, by the normal CDF of log sigma
    cdf = [0.5 * (1 + math.erf((math.log(x) + 1.1) / (2.0 * math.sqrt(2)))) for x in sigmas.tolist()]
    mass = [b - a for a, b in zip(cdf, cdf[1:])]
    assert p.tolist() == pytest.approx([m / sum(mass) for m in mass], rel=1e-6)


def test_pseudo_huber_distance():
    a, b = torch.zeros(2, 1, 10, 10), torch.zeros(2, 1, 10, 10)
    b[0, 0, 0, 0] = 3.0
    c = 0.00054 * 10
    d = distance(a, b, "pseudo_huber", None)
    assert d[0].item() == pytest.approx(math.sqrt(9 + c * c) - c) and d[1].item() == 0
    assert distance(a, b, "l2", None)[0].item() == pytest.approx(9.0)


def test_teacher_matches_the_vp_model_at_its_own_steps():
    diffusion = VPDiffusion()
    net = _net()
    teacher = VPTeacher(net, diffusion.alpha_bar, clip=False)
    t = torch.tensor([0.0, 10.0, 500.0, 999.0])
    ab = diffusion.alpha_bar[t.long()].float()
    sigma = ((1 - ab) / ab).sqrt()
    assert torch.allclose(teacher.time_of(sigma), t, atol=2e-3)
    x_ve = torch.randn(4, 1, 12, 12)
    with torch.no_grad():
        eps = net(x_ve * ab.sqrt()[:, None, None, None], teacher.time_of(sigma))
    x0_vp = (x_ve * ab.sqrt()[:, None, None, None] - (1 - ab).sqrt()[:, None, None, None] * eps) / ab.sqrt()[:, None, None, None]
    assert torch.allclose(teacher.denoise(x_ve, sigma), x0_vp, atol=1e-4)


def test_teacher_step_is_exact_for_a_perfect_denoiser_of_one_point():
    """With one data point, D(x, sigma) = that point and the ODE is a straight line to it."""
    point = torch.full((1, 1, 4, 4), 0.3)

    class Oracle(VPTeacher):
        def __init__(self):
            pass

        def denoise(self, x, sigma):
            return point.expand_as(x)

    z = torch.randn(2, 1, 4, 4)
    s, sn = torch.tensor([5.0, 5.0]), torch.tensor([1.0, 1.0])
    for solver in ("euler", "heun"):
        out = Oracle().step(point + 5.0 * z, s, sn, solver)
        assert torch.allclose(out, point + 1.0 * z, atol=1e-5)


def _cm_config(tmp_path, **consistency):
    return tiny_config(tmp_path / "results", consistency={"modes": ["cd", "ct"], **consistency})


def test_cd_loss_falls_and_cd_ct_trails_use_the_dm_manifest_format(trained, tmp_path):
    cfg, _ = trained
    cfg = dict(cfg, consistency=dict(cfg["consistency"], modes=["cd", "ct"],
                                     train={**cfg["consistency"]["train"], "iterations": 120,
                                            "checkpoint_every": 40, "lr": 2e-3}))
    cfg_file = tmp_path / "cm.yaml"
    cfg_file.write_text(yaml.safe_dump(validate(cfg)))
    for mode in ("cd", "ct"):
        assert main(["train-cm", "--mode", mode, "--config", str(cfg_file),
                     "--out-dir", str(tmp_path / mode)]) == 0
    dm = Trail.open(f"{cfg['results_dir']}/{cfg['experiment']}/dm/trail/manifest.json")
    cd, ct = Trail.open(tmp_path / "cd" / "manifest.json"), Trail.open(tmp_path / "ct" / "manifest.json")
    losses = [c["loss"] for c in cd.manifest["checkpoints"]]
    assert losses[-1] < 0.7 * losses[0], losses  # the CD loss falls over a tiny run
    for trail, mode in ((cd, "cd"), (ct, "ct")):
        m = trail.manifest
        assert m["format"] == dm.manifest["format"] and m["kind"] == "cm" and m["mode"] == mode
        assert set(dm.manifest) - {"diffusion"} <= set(m)  # every key of a DM manifest but the VP schedule
        assert [set(c) for c in m["checkpoints"]] == [set(dm.manifest["checkpoints"][0])] * 3
        assert trail.steps == [40, 80, 120] and sorted(trail.ema_paths()) == [0.9, 0.99]
        # the checkpoints are the U-Net's own weights, with the DM's names and shapes
        a, b = load_tensors(trail.checkpoint_path(0)), load_tensors(dm.checkpoint_path(0))
        assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert cd.manifest["teacher"]["weights"] == "ema_0.99"
    assert cd.manifest["teacher"]["sha256"] == dm.manifest["ema"][1]["sha256"]
    assert ct.manifest["training"]["curriculum_iterations"] == 120 and "teacher" not in ct.manifest


def test_ct_resume_equals_uninterrupted(tmp_path):
    """The curriculum depends on the step, which the resume state restores."""
    from lcsc.train import train

    cfg = _cm_config(tmp_path)
    tcfg = dict(for_model(cfg, "cm_ct")["train"], checkpoint_every=10)
    data = torch.rand(40, 1, 8, 8) * 2 - 1

    def run(out, iterations):
        torch.manual_seed(0)
        loss = ConsistencyLoss(cfg["consistency"], "ct", 30)
        return train(build_unet(cfg["model"], 1), loss, data, dict(tcfg, iterations=iterations), out, seed=0,
                     device=torch.device("cpu"), manifest_extra={"kind": "cm", "curriculum_iterations": 30})

    full = Trail.open(run(tmp_path / "full", 30))
    run(tmp_path / "resumed", 20)
    resumed = Trail.open(run(tmp_path / "resumed", 30))
    assert full.fingerprint == resumed.fingerprint


def test_truncated_trail(tmp_path):
    from lcsc.train import train

    out = tmp_path / "r" / "cm_ct" / "trail"
    cfg = _cm_config(tmp_path)
    train(build_unet(cfg["model"], 1), ConsistencyLoss(cfg["consistency"], "ct", 40), torch.rand(20, 1, 8, 8),
          dict(for_model(cfg, "cm_ct")["train"], iterations=40, checkpoint_every=10), out, seed=0,
          device=torch.device("cpu"), manifest_extra={"kind": "cm"})
    short = tmp_path / "r" / "cm_ct_first50" / "trail" / "manifest.json"
    truncate(out / "manifest.json", 0.5, short)
    trail = Trail.open(short)
    assert trail.steps == [10, 20] and trail.manifest["iterations"] == 20 and trail.ema_paths() == {}
    assert trail.manifest["checkpoints"][0]["file"].startswith("../../cm_ct/trail/")
    assert trail.fingerprint == Trail.open(out / "manifest.json").fingerprint[:2]
    with pytest.raises(TrailError, match="at least 2"):
        truncate(out / "manifest.json", 0.3, tmp_path / "x" / "manifest.json")


def test_models_and_their_config():
    cfg = load_config(REPO / "config" / "config.yaml")
    assert models(cfg) == ["dm", "cm_cd", "cm_ct"]
    cm = for_model(cfg, "cm_ct")
    assert cm["search"]["nfe"] == 1 and cm["evaluate"]["nfe"] == [1, 2]
    assert for_model(cm, "cm_ct") == cm  # applying it twice changes nothing
    assert "consistency" not in for_model(cfg, "dm") and for_model(cfg, "dm")["search"]["nfe"] == cfg["search"]["nfe"]
    with_cost = load_config(REPO / "config" / "config.yaml", {"cost.fraction": 0.4})
    assert models(with_cost) == ["dm", "cm_cd", "cm_ct", "cm_cd_first40", "cm_ct_first40"]
    assert for_model(with_cost, "cm_ct_first40")["search"]["nfe"] == 1

    # slices: the DM's stages never see `consistency`; CT's training ignores CD's settings
    other = load_config(REPO / "config" / "config.yaml", {"consistency.cd.steps": 40, "consistency.sigma_max": 60.0})
    for stage in ("baselines", "search", "evaluate"):
        assert stage_config(cfg, stage, "dm") == stage_config(other, stage, "dm")
    assert stage_config(cfg, "train_cm", "cm_ct") != stage_config(other, "train_cm", "cm_ct")  # sigma_max
    only_cd = load_config(REPO / "config" / "config.yaml", {"consistency.cd.steps": 40})
    assert stage_config(cfg, "train_cm", "cm_ct") == stage_config(only_cd, "train_cm", "cm_ct")
    assert stage_config(cfg, "train_cm", "cm_cd") != stage_config(only_cd, "train_cm", "cm_cd")
    # the sampling sigmas do not retrain, nor (at the default 1-NFE target) rerun baselines or search
    sampling = load_config(REPO / "config" / "config.yaml", {"consistency.sampling_sigmas": [1.5]})
    for stage, same in (("train_cm", True), ("baselines", True), ("search", True), ("evaluate", False)):
        assert (stage_config(cfg, stage, "cm_cd") == stage_config(sampling, stage, "cm_cd")) == same, stage
    two = load_config(REPO / "config" / "config.yaml", {"consistency.search_nfe": 2})
    assert stage_config(two, "search", "cm_cd")["consistency"]["sampling_sigmas"] == [0.821]
    # nor does a sampler setting of the diffusion model touch the consistency models' sampling
    ddim = load_config(REPO / "config" / "config.yaml", {"diffusion.sampler": "dpmpp2m"})
    for stage in ("baselines", "search", "evaluate"):
        assert stage_config(cfg, stage, "cm_cd") == stage_config(ddim, stage, "cm_cd")
        assert stage_config(cfg, stage, "cm_ct_first40") == stage_config(ddim, stage, "cm_ct_first40")
        assert stage_config(cfg, stage, "dm") != stage_config(ddim, stage, "dm")
    assert stage_config(cfg, "train_dm") == stage_config(ddim, "train_dm")  # nor retrain anything
    assert stage_config(cfg, "train_cm", "cm_cd") == stage_config(ddim, "train_cm", "cm_cd")
    clip = load_config(REPO / "config" / "config.yaml", {"diffusion.clip_denoised": False})
    assert stage_config(cfg, "train_cm", "cm_cd") != stage_config(clip, "train_cm", "cm_cd")  # the teacher clips
    assert stage_config(cfg, "train_cm", "cm_ct") == stage_config(clip, "train_cm", "cm_ct")


def test_a_job_slice_read_back_as_the_workflow_passes_it_is_the_same_config():
    """Rules pass a stage's slice as JSON; the CLI validates it (filling defaults) and applies
    for_model again: the job must see the same slice the workflow hashed."""
    from lcsc.cli import _config

    cfg = load_config(REPO / "config" / "config.yaml", {"cost.fraction": 0.4, "consistency.search_nfe": 2,
                                                         "consistency.evaluate_nfe": [1, 2]})
    for model in models(cfg):
        for stage in ("baselines", "search", "evaluate", *(["train_cm"] if "first" not in model and model != "dm" else [])):
            sliced = stage_config(cfg, stage, model)
            args = type("Args", (), {"set": None, "config_json": json.dumps(sliced), "config": None})()
            again = for_model(_config(args), model)
            assert stage_config(again, stage, model) == sliced, (model, stage)
            if stage in ("search", "baselines"):
                assert again["search"]["nfe"] == (2 if model != "dm" else cfg["search"]["nfe"])


@pytest.mark.parametrize("name", ["cm_cd_firstx", "dm_first", "cm_ct_first100", "xx_first20"])
def test_bad_truncated_model_names(name):
    from lcsc.config import truncation

    with pytest.raises(ConfigError, match="does not name a truncated trail"):
        truncation(name)


@pytest.mark.parametrize("overrides, message", [
    ({"consistency.search_nfe": 3}, "consistency.search_nfe: 3 is not in consistency.evaluate_nfe"),
    ({"consistency.evaluate_nfe": [1, 2, 3]}, "need 2 consistency.sampling_sigmas"),
    ({"consistency.sampling_sigmas": [0.5, 0.8]}, "must decrease"),
    ({"consistency.cd.teacher": "ema_0.5"}, "consistency.cd.teacher: 'ema_0.5' is not an EMA"),
    ({"cost.fraction": 0.25, "consistency.modes": ["ct"]}, r"cost.models: \['cm_cd'\] do not run"),
    ({"cost.fraction": 0.01}, "cost.fraction: the first 0.01 of cm_cd"),
])
def test_consistency_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "config" / "config.yaml", overrides)


def test_the_cli_refuses_a_trail_of_another_model(trained, tmp_path, capsys):
    cfg, cfg_file = trained
    dm_manifest = f"{cfg['results_dir']}/{cfg['experiment']}/dm/trail/manifest.json"
    assert main(["baselines", "--model", "cm_cd", "--manifest", dm_manifest, "--config", str(cfg_file),
                 "--out", str(tmp_path / "b.json")]) == 2
    assert "holds a dm trail; pass --model dm" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()
    assert main(["evaluate", "--model", "dm", "--variant", "ema_0.5", "--config", str(cfg_file),
                 "--out", str(tmp_path / "e.json")]) == 2
    assert "no weights 'ema_0.5'; it has last and the EMAs ema_0.9, ema_0.99" in capsys.readouterr().err
    assert main(["search", "--model", "cm_cd_firstx", "--config", str(cfg_file)]) == 2
    assert "does not name a truncated trail" in capsys.readouterr().err


def test_the_report_stage_runs_without_torch():
    """tabulate runs in envs/report.yaml, which has no torch: the CLI and the report must not import it."""
    import subprocess
    import sys

    code = ("import builtins, sys\n"
            "real = builtins.__import__\n"
            "def guard(name, *a, **k):\n"
            "    if name == 'torch' or name.startswith('torch.'): raise ModuleNotFoundError('no torch here')\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = guard\n"
            "import lcsc.cli, lcsc.report, lcsc.errors\n"
            "assert lcsc.cli.main(['tabulate', '--config', 'missing.yaml']) == 2\n"
            "assert 'torch' not in sys.modules\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_sampling_a_cm_trail_checks_the_parameterization(tmp_path):
    from lcsc.evaluate import make_sampler

    trail = Trail(tmp_path, {"kind": "cm", "consistency": Parameterization().settings()})
    cfg = _cm_config(tmp_path)
    assert isinstance(make_sampler(cfg, trail), ConsistencySampler)
    bad = dict(cfg, consistency=dict(cfg["consistency"], sigma_max=60.0))
    with pytest.raises(ConfigError, match="name the model, e.g. --model cm_cd"):
        make_sampler({k: v for k, v in cfg.items() if k != "consistency"}, Trail(tmp_path, dict(trail.manifest, mode="cd")))
    with pytest.raises(ConfigError, match="consistency.sigma_max: 60.0 in the config, but the trail"):
        make_sampler(bad, trail)
