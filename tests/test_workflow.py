"""The whole workflow through the Snakemake CLI in a temporary folder, then MLflow read back."""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

import inception_standin
from conftest import REPO, TINY
from helpers import SNAKEMAKE, hold_when, snakemake
from lcsc.kernel.report import kid_text
from lcsc.kernel.tracking import job_name


def test_lint_and_dry_run_of_the_default_config():
    lint = subprocess.run([*SNAKEMAKE, "--lint"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "Congratulations" in lint.stdout + lint.stderr
    # --forceall: every job of the default DAG, also in a checkout where `make run` has finished it
    dry = subprocess.run(
        [*SNAKEMAKE, "-n", "--forceall", "--directory", str(REPO)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dry.returncode == 0, dry.stderr
    for rule in ("train_dm", "train_features", "reference_stats", "search", "evaluate", "tabulate"):
        assert rule in dry.stdout


def test_bad_config_is_rejected_at_parse_time(tmp_path):
    cfg = dict(TINY, train=dict(TINY["train"], iterations="abc"), extra_key=1)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(["-n", "--configfile", "bad.yaml", "--directory", str(tmp_path)], tmp_path)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "train.iterations: 'abc' is not of type 'integer'" in out
    assert "extra_key: unknown key" in out


def test_an_unknown_optimizer_or_device_fails_the_dry_run(tmp_path):
    """Found before training starts, not when the search does."""
    cfg = dict(TINY, search=dict(TINY["search"], optimizer="Foo", devices=["cpu", "gpu0"]))
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(["-n", "--configfile", "bad.yaml", "--directory", str(tmp_path)], tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "search.devices: ['cpu', 'gpu0'] is not one of" in out, out[-2000:]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(dict(TINY, search=dict(TINY["search"], optimizer="Foo"))))
    res = snakemake(["-n", "--configfile", "bad.yaml", "--directory", str(tmp_path)], tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "search.optimizer: 'Foo' is not a nevergrad optimizer" in out, out[-2000:]
    # a search output at an NFE the config does not search at
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(TINY))
    res = snakemake(
        [
            "-n",
            "--configfile",
            "ok.yaml",
            "--directory",
            str(tmp_path),
            "results/tiny/dm/search/nfe7/coefficients.json",
        ],
        tmp_path,
    )
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "dm's search targets NFE 2 in this config, not 7" in out, out[-2000:]


# The tiny pipeline with both consistency models and the training-cost experiment (the first 70%
# of the CD trail: 2 of its 3 checkpoints), with fewer baselines to keep the job count down.
WF_VARIANTS = ("last", "ema_0.9", "ema_0.99", "uniform", "ema_0.9_profile", "lcsc")


WF_MODELS = {"dm": 2, "cm_cd": 1, "cm_ct": 1, "cm_cd_first70": 1}  # model: search NFE


# A results folder as a careless or hostile user names it: a space, quotes, `;` with a command after
# it, `$`, a non-ASCII letter. Every path reaches the shell quoted, so the run completes, writes
# inside it only and runs nothing injected.
RESULTS = 'res dir/it\'s "q";touch pwned;$HOME ü'


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("wf")
    cfg = dict(
        TINY,
        experiment="tiny-wf",
        results_dir=RESULTS,
        mlflow={"enabled": True},
        consistency=dict(TINY["consistency"], modes=["cd", "ct"]),
        cost={"fraction": 0.7, "models": ["cm_cd"]},
        baselines={"lawa_last": [], "ema_decays": [0.9], "power_sigma_rels": [], "greedy_soup": False},
    )
    (root / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(["--cores", "2", "--configfile", "tiny.yaml", "--directory", str(root)], root)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return root, res


def test_workflow_produces_the_report(workflow_run):
    root, _ = workflow_run
    report = root / RESULTS / "tiny-wf" / "report"
    for name in (
        "summary.md",
        "summary.csv",
        "fid_vs_nfe.png",
        "coefficients.png",
        "search_curve.png",
        "samples_dm_lcsc.png",
        "samples_dm_last.png",
        "samples_cm_cd_lcsc.png",
        "samples_cm_ct_ema_0.99.png",
        "samples_cm_cd_first70_lcsc.png",
    ):
        assert (report / name).stat().st_size > 0, name
    md = (report / "summary.md").read_text()
    sections = {part.split("\n", 1)[0]: part for part in md.split("\n## ")[1:]}
    assert list(sections)[:4] == [
        "dm (diffusion model)",
        "cm_cd (consistency distillation)",
        "cm_ct (consistency training)",
        "cm_cd_first70 (training-cost experiment)",
    ]
    for model in ("dm", "cm_cd", "cm_ct"):
        body = next(v for k, v in sections.items() if k.startswith(model + " "))
        table = body.split("\n\n")[1]  # the FID table (after the title); the NFE-saving and coefficient tables follow
        rows = [
            line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ") and "---" not in line
        ]
        assert rows == ["variant", *WF_VARIANTS]
        assert "- Against the best baseline at each NFE, LCSC " in body
        assert "| best baseline at NFE | its FID | LCSC reaches that FID at NFE | NFE saving |" in body
        assert re.search(r"^\| lcsc \| 1\.000 \| [0-9.]+ \| [0-9.]+ \| [0-9]+ of [0-9]+ \|$", body, flags=re.M)
        header = next(line for line in body.splitlines() if line.startswith("| variant"))
        assert header == "| variant | NFE 1 | NFE 2 |"
    fids = {}
    for model in ("cm_cd", "cm_ct", "cm_cd_first70"):
        for v in ("lcsc", "last", "ema_0.9", "ema_0.99"):
            path = root / RESULTS / "tiny-wf" / model / "eval" / f"{v}.json"
            if path.exists():
                fids[model, v] = {int(k): f for k, f in json.loads(path.read_text())["fid"].items()}
    for model, title in (("cm_cd", "cm_cd (consistency distillation)"), ("cm_ct", "cm_ct (consistency training)")):
        # the claim sentence, with the measured numbers in it
        best_ema = min(("ema_0.9", "ema_0.99"), key=lambda v: fids[model, v][2])
        claim = next(line for line in sections[title].splitlines() if line.startswith("- Paper's claim"))
        assert f"LCSC scores {fids[model, 'lcsc'][1]:.2f} at 1 NFE" in claim
        assert f"the last checkpoint at 2 NFE scores {fids[model, 'last'][2]:.2f}" in claim
        assert f"({best_ema}) {fids[model, best_ema][2]:.2f}" in claim
        holds = fids[model, "lcsc"][1] < min(fids[model, "last"][2], fids[model, best_ema][2])
        assert ("the paper's claim holds here" in claim) == holds
    cost = sections["cm_cd_first70 (training-cost experiment)"]
    assert (
        "LCSC over the first 70% of cm_cd's training (2 checkpoints, steps up to 20 of 30) scores FID "
        f"{fids['cm_cd_first70', 'lcsc'][1]:.2f} at 1 NFE" in cost
    )
    assert ("implied training speed-up of 30/20 = 1.5x" in cost) != ("implies no training speed-up" in cost)
    # the training-cost table and plot, with the same verdict
    curve = sections["Training cost"]
    row = next(line for line in curve.splitlines() if line.startswith("| 0.7 |"))
    assert row.startswith(f"| 0.7 | 2 | 20 of 30 | {fids['cm_cd_first70', 'lcsc'][1]:.2f} |")
    assert row.endswith("| 1.5x |") == ("implied training speed-up of 30/20 = 1.5x" in cost)
    assert (report / "cost_curve.png").stat().st_size > 0
    # precision, recall and KID beside FID, in the same feature space
    ev = json.loads((root / RESULTS / "tiny-wf" / "dm" / "eval" / "lcsc.json").read_text())
    assert set(ev["kid"]) == set(ev["precision"]) == set(ev["recall"]) == {"1", "2"}
    assert all(0 <= ev[k][n] <= 1 for k in ("precision", "recall") for n in ("1", "2"))
    q = next(
        line
        for line in sections["dm (diffusion model)"].splitlines()
        if line.startswith("| lcsc | ") and " / " in line
    )
    assert f"{kid_text(ev['kid']['1'])} / {ev['precision']['1']:.2f} / {ev['recall']['1']:.2f}" in q
    logs = list((root / RESULTS / "tiny-wf" / "logs").rglob("*.log"))
    # one per job: features and stats, 3 trainings, 1 truncation, 4 x (baselines, search),
    # 3 x 6 + 2 evaluations, tabulate, the 3 full models' exports
    assert len(logs) == 2 + 3 + 1 + 8 + 20 + 1 + 3
    for model in ("dm", "cm_cd", "cm_ct"):  # lcsc's own trails export safetensors of the searched combination
        export = root / RESULTS / "tiny-wf" / model / "export" / "lcsc"
        meta = json.loads((export / "coefficients.json").read_text())
        searched = json.loads(
            (
                root / RESULTS / "tiny-wf" / model / "search" / f"nfe{WF_MODELS[model]}" / "coefficients.json"
            ).read_text()
        )
        assert meta["coefficients"] == searched["coefficients"] and (export / "model.safetensors").is_file()
        assert "| lcsc |" in (export / "README.md").read_text()
    again = snakemake(["-n", "--configfile", "tiny.yaml", "--directory", str(root)], root)
    assert "Nothing to be done" in again.stdout + again.stderr
    # where and how jobs run (MLflow, devices, CPU threads, trail chunks, training processes) reruns nothing
    cfg = yaml.safe_load((root / "tiny.yaml").read_text())
    (root / "moved.yaml").write_text(
        yaml.safe_dump(
            dict(
                cfg,
                device="cpu",
                mlflow={"enabled": True, "tracking_uri": "http://127.0.0.1:9", "experiment": "elsewhere"},
                search=dict(cfg["search"], devices=["cpu", "cpu"], trail_chunk_mb=1),
                train=dict(cfg["train"], gpus=2),
                consistency=dict(cfg["consistency"], train=dict(cfg["consistency"]["train"], gpus=4)),
            )
        )
    )
    runtime = snakemake(
        ["-n", "--configfile", "moved.yaml", "--directory", str(root), "--set-threads", "search=1"], root
    )
    assert runtime.returncode == 0, runtime.stderr[-3000:]
    assert "Nothing to be done" in runtime.stdout + runtime.stderr, runtime.stdout[-3000:]
    # ... and forced, training goes through lcsc.launch with train.gpus processes, asking no GPU on the CPU
    forced = snakemake(
        ["-n", "-p", "--configfile", "moved.yaml", "--directory", str(root), "--forcerun", "train_dm", "train_cm"],
        root,
    )
    out = forced.stdout + forced.stderr
    assert "lcsc_train 2 train-dm" in out and "lcsc_train 4 train-cm" in out, out[-3000:]
    assert re.search(r"resources: .*processes=2, gpu=0", out) and re.search(r"resources: .*processes=4, gpu=0", out)
    # another DM sampler reruns only the DM's sampling stages and the report; other truncated
    # models (cost.models) add their own jobs and touch none of the existing ones
    cfg = yaml.safe_load((root / "tiny.yaml").read_text())
    (root / "edit.yaml").write_text(
        yaml.safe_dump(dict(cfg, diffusion={"sampler": "dpmpp2m"}, cost={"fraction": 0.7, "models": ["cm_cd", "dm"]}))
    )
    dry = snakemake(["-n", "--configfile", "edit.yaml", "--directory", str(root)], root)
    assert dry.returncode == 0, dry.stderr[-3000:]
    jobs = []  # (rule, wildcards) of each job the dry run lists
    for block in re.split(r"^(?=(?:local)?rule \w+:$)", dry.stdout, flags=re.M)[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", block).group(1)
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, flags=re.M)
        jobs.append((rule, wildcards.group(1) if wildcards else ""))
    assert {r for r, _ in jobs} == {
        "truncate_trail",
        "baselines",
        "search",
        "evaluate",
        "tabulate",
        "export",
        "all",
    }, jobs
    for rule, wildcards in jobs:
        if rule not in ("tabulate", "all"):
            assert re.search(r"\b(model|base)=dm(_first70)?(,|$)", wildcards), (rule, wildcards)
    # more searches (search.repeats) add one job each and leave the first search alone; lcsc's
    # evaluation then reads every search's coefficients
    (root / "repeats.yaml").write_text(yaml.safe_dump(dict(cfg, search=dict(cfg["search"], repeats=2))))
    dry = snakemake(["-n", "-p", "--configfile", "repeats.yaml", "--directory", str(root)], root)
    assert dry.returncode == 0, dry.stderr[-3000:]
    blocks = re.split(r"^(?=(?:local)?rule \w+:$)", dry.stdout, flags=re.M)[1:]
    rules = [re.match(r"(?:local)?rule (\w+):", b).group(1) for b in blocks]
    assert rules.count("search_repeat") == len(WF_MODELS) and "search" not in rules, rules
    second = next(b for b in blocks if b.startswith("rule search_repeat:") and "model=dm," in b)
    assert "--repeat 1" in second and "/dm/search/nfe2-r1/coefficients.json" in second
    ev = next(b for b in blocks if b.startswith("rule evaluate:") and "variant=lcsc" in b and "model=dm," in b)
    command = shlex.split(re.search(r"^Shell command: (.*)$", ev, flags=re.M).group(1))
    files = command[command.index("--coefficients") + 1 : command.index("--coefficients") + 3]
    assert [Path(f).parent.name for f in files] == ["nfe2", "nfe2-r1"]


def test_a_hostile_results_folder_holds_everything_and_runs_nothing(workflow_run):
    root, _ = workflow_run
    assert (root / RESULTS / "tiny-wf" / "report" / "summary.md").stat().st_size > 0
    written = {p.relative_to(root).parts[0] for p in root.iterdir()}
    assert written <= {".snakemake", "tiny.yaml", "edit.yaml", "moved.yaml", "repeats.yaml", RESULTS.split("/")[0]}, (
        written
    )
    outside = [p for p in (root / RESULTS.split("/")[0]).rglob("*") if not str(p).startswith(str(root / RESULTS))]
    assert outside == []
    assert not list(root.rglob("pwned")) and not (REPO / "pwned").exists() and not (Path.cwd() / "pwned").exists()


def test_snakemake_and_the_cli_build_the_same_stage_configs(tmp_path):
    """A file that leaves keys out gets the schema's defaults both ways (not the embedded default's:
    here consistency.train is absent, so the consistency model trains as long as `train` says)."""
    from lcsc.kernel.config import load_config
    from lcsc.stages import stage_config

    (tmp_path / "mine.yaml").write_text(
        yaml.safe_dump(
            {
                "experiment": "mine",
                "train": {"iterations": 100, "checkpoint_every": 20, "ema_decays": [0.9]},
                "consistency": {"modes": ["ct"]},
                "baselines": {"lawa_last": [2], "ema_decays": [0.9]},
                "cost": {"fraction": 0.5, "models": ["cm_ct"]},
            }
        )
    )
    dry = snakemake(["-n", "-p", "--configfile", "mine.yaml", "--directory", str(tmp_path)], tmp_path)
    assert dry.returncode == 0, dry.stderr[-3000:]
    cfg = load_config(tmp_path / "mine.yaml")  # what `lcsc <stage> --config mine.yaml` reads
    assert cfg["consistency"]["train"]["iterations"] is None
    checked = set()
    for block in re.split(r"^(?=(?:local)?rule \w+:$)", dry.stdout, flags=re.M)[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", block).group(1)
        command = re.search(r"^Shell command: (.*)$", block, flags=re.M)
        if command is None or rule == "all":
            continue
        argv = shlex.split(command.group(1))
        model = argv[argv.index("--model") + 1] if "--model" in argv else None
        if rule == "train_cm":
            model = f"cm_{argv[argv.index('--mode') + 1]}"
        if rule == "truncate_trail":
            model = None
        ours = json.dumps(stage_config(cfg, rule, model), sort_keys=True)
        assert argv[argv.index("--config-json") + 1] == ours, (rule, model)
        checked.add((rule, model))
        if rule == "train_cm":
            train_cm = json.loads(argv[argv.index("--config-json") + 1])
    assert {
        ("train_dm", None),
        ("train_cm", "cm_ct"),
        ("search", "cm_ct"),
        ("search", "cm_ct_first50"),
        ("evaluate", "dm"),
        ("tabulate", None),
        ("truncate_trail", None),
    } <= checked, checked
    assert train_cm["train"]["iterations"] == 100  # `train`'s, not the embedded default's 1000


def test_mlflow_parent_and_child_runs(workflow_run):
    from mlflow.tracking import MlflowClient

    root, _ = workflow_run
    client = MlflowClient(tracking_uri=f"sqlite:///{root / RESULTS / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny-wf")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("lcsc.role") == "invocation"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.params["search.budget"] == "8"
    children = {
        job_name(r.info.run_name): r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    # the parent carries the headline numbers, the same as the evaluations on disk
    dm_lcsc = json.loads((root / RESULTS / "tiny-wf" / "dm" / "eval" / "lcsc.json").read_text())["fid"]
    assert parent.data.metrics["dm.lcsc_fid_nfe2"] == pytest.approx(dm_lcsc["2"])
    assert {"dm.best_baseline_fid_nfe1", "dm.nfe_saving", "cm_cd.training_speedup"} <= set(parent.data.metrics)
    assert all(r.info.run_name.endswith(f" @{parent.data.tags['lcsc.invocation']}") for r in children.values())
    expected = {
        "train_dm[model=dm]",
        "train_cm[model=cm_cd]",
        "train_cm[model=cm_ct]",
        "train_features",
        "reference_stats[split=train]",
        "tabulate",
        *[f"export[model={m},variant=lcsc]" for m in ("dm", "cm_cd", "cm_ct")],
    }
    for model, nfe in WF_MODELS.items():
        expected |= {f"baselines[model={model}]", f"search[model={model},nfe={nfe}]"}
        expected |= {
            f"evaluate[model={model},variant={v}]" for v in (("last", "lcsc") if "_first" in model else WF_VARIANTS)
        }
    assert set(children) == expected
    assert all(r.info.status == "FINISHED" for r in children.values())

    train = children["train_dm[model=dm]"]
    assert train.data.params["train.iterations"] == "40" and "search.budget" not in train.data.params
    assert train.data.tags["lcsc.model"] == "dm"
    loss = client.get_metric_history(train.info.run_id, "train_loss")
    assert [m.step for m in loss] == list(range(5, 41, 5))

    search = children["search[model=dm,nfe=2]"]
    fitness = client.get_metric_history(search.info.run_id, "fitness")
    # 3 starting profiles (last, uniform, ema_0.9_profile), then 8 candidates
    assert sorted(m.step for m in fitness) == list(range(11))
    rescore = client.get_metric_history(search.info.run_id, "rescore_fitness")
    assert sorted(m.step for m in rescore) == [11, 12, 13]
    coeffs = json.loads((root / RESULTS / "tiny-wf" / "dm" / "search" / "nfe2" / "coefficients.json").read_text())
    assert min(m.value for m in rescore) == pytest.approx(coeffs["rescore_fitness"])
    assert {a.path for a in client.list_artifacts(search.info.run_id)} >= {"coefficients.json", "history.csv"}

    ev = children["evaluate[model=dm,variant=lcsc]"]
    fid = {m.step: m.value for m in client.get_metric_history(ev.info.run_id, "fid")}
    on_disk = json.loads((root / RESULTS / "tiny-wf" / "dm" / "eval" / "lcsc.json").read_text())["fid"]
    assert fid == {int(k): pytest.approx(v) for k, v in on_disk.items()}
    assert {a.path for a in client.list_artifacts(ev.info.run_id)} == {"lcsc.json", "lcsc.png"}

    # consistency models: one training run per mode, search and evaluate runs per model, tagged
    for mode in ("cd", "ct"):
        run = children[f"train_cm[model=cm_{mode}]"]
        assert run.data.tags["lcsc.model"] == f"cm_{mode}" and run.data.tags["lcsc.stage"] == "train_cm"
        other = "consistency.ct.s0" if mode == "cd" else "consistency.cd.steps"  # the other mode's settings
        assert run.data.params["train.iterations"] == "30" and other not in run.data.params
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == list(range(5, 31, 5))
    search = children["search[model=cm_ct,nfe=1]"]
    assert search.data.tags["lcsc.nfe"] == "1" and search.data.params["search.nfe"] == "1"
    ev = children["evaluate[model=cm_cd_first70,variant=lcsc]"]
    assert ev.data.tags["lcsc.nfe"] == "1,2" and ev.data.tags["lcsc.model"] == "cm_cd_first70"
    on_disk = json.loads((root / RESULTS / "tiny-wf" / "cm_cd_first70" / "eval" / "lcsc.json").read_text())["fid"]
    fid = {m.step: m.value for m in client.get_metric_history(ev.info.run_id, "fid")}
    assert fid == {int(k): pytest.approx(v) for k, v in on_disk.items()}

    tab = children["tabulate"]
    report = {a.path for a in client.list_artifacts(tab.info.run_id, "report")}
    assert "report/summary.md" in report and "report/fid_vs_nfe.png" in report
    # checkpoints are never artifacts
    for r in children.values():
        for a in client.list_artifacts(r.info.run_id):
            assert not a.path.endswith(".safetensors")


def test_pipeline_end_to_end_with_inception_features_and_a_local_weights_file(tmp_path, standin):
    """The tiny pipeline through Snakemake with `features: inception` (the stand-in network as the
    local weights file); replacing the weights file reruns every FID stage. Held mid-run, it meets a
    second invocation on its results folder from another working directory, which refuses."""
    weights = tmp_path / "inception.pt"
    shutil.copyfile(standin, weights)
    cfg = dict(
        TINY,
        experiment="tiny-inception",
        results_dir=str(tmp_path / "results"),
        features={"kind": "inception", "weights": str(weights)},
        baselines={"lawa_last": [], "ema_decays": [0.9], "power_sigma_rels": [], "greedy_soup": False},
    )
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    _with_a_second_invocation(
        tmp_path,
        ["--cores", "2", "--configfile", str(tmp_path / "c.yaml")],
        tmp_path / "results" / "tiny-inception" / "lcsc.lock",
    )
    root = tmp_path / "results" / "tiny-inception"
    descriptor = json.loads((root / "features" / "inception-clean.json").read_text())
    assert descriptor["weights"] == str(weights) and descriptor["dim"] == inception_standin.DIM
    assert not (root / "features" / "classifier.safetensors").exists()  # no classifier trained
    with np.load(root / "stats" / "digits12-train-inception-clean.npz") as z:
        assert str(z["feature_hash"]) == descriptor["hash"] and z["mu"].shape == (inception_standin.DIM,)
    baselines = json.loads((root / "dm" / "baselines.json").read_text())
    assert baselines["feature_hash"] == descriptor["hash"]
    summary = (root / "report" / "summary.md").read_text()
    assert "FID (inception-clean features)" in summary and "| lcsc |" in summary
    fids = json.loads((root / "dm" / "eval" / "lcsc.json").read_text())["fid"]
    assert all(np.isfinite(v) and v > 0 for v in fids.values())
    # nothing to do on a rerun; a replaced weights file reruns the features and all FID stages
    dry = snakemake(["-n", "--configfile", "c.yaml", "--directory", str(tmp_path)], tmp_path)
    assert "Nothing to be done" in dry.stdout + dry.stderr
    inception_standin.build(weights, seed=3)
    os.utime(weights)
    dry = snakemake(["-n", "--configfile", "c.yaml", "--directory", str(tmp_path)], tmp_path)
    for rule in ("inception_features", "reference_stats", "baselines", "search", "evaluate"):
        assert f"rule {rule}:" in dry.stdout, rule
    assert "rule train_dm:" not in dry.stdout
    # a weights file that is gone fails at parse time, naming the key
    weights.unlink()
    dry = snakemake(["-n", "--configfile", "c.yaml", "--directory", str(tmp_path)], tmp_path)
    assert dry.returncode != 0 and "features.weights:" in dry.stdout + dry.stderr


def _with_a_second_invocation(tmp_path, args: list[str], lock: Path) -> None:
    """Run Snakemake with `args` in `tmp_path` to the end; held (SIGSTOP) while one of its jobs
    runs, a second Snakemake with the same arguments starts from another working directory (their
    own locks, in `.snakemake/`, differ): it refuses at once, naming the first, and runs no job;
    the first then goes on. Snakemake's own lock is per working directory, so only lcsc's sees it."""
    import psutil

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LCSC_"))}
    command = [*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), *args]
    (tmp_path / "elsewhere").mkdir()

    def job_running(pid: int) -> bool:
        for p in psutil.Process(pid).children(recursive=True):
            try:
                if "-m" in p.cmdline():
                    return True
            except psutil.Error:  # ended meanwhile
                continue
        return False

    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            hold_when(
                first,
                lambda: lock.exists() and job_running(first.pid),
                300,
                "a running job of the first invocation",
                group=True,
            )
            holder = json.loads(lock.read_text())
            second = subprocess.run(
                command, cwd=tmp_path / "elsewhere", env=env, capture_output=True, text=True, timeout=300
            )
            out = second.stdout + second.stderr
            assert second.returncode != 0, out[-3000:]
            assert f"{lock}: the results folder is in use by invocation {holder['invocation']}" in out, out[-3000:]
            assert f"working directory {tmp_path}" in out and "Finished jobid" not in out, out[-3000:]
            os.killpg(first.pid, signal.SIGCONT)
            assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text()[-3000:]
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
                first.wait()
    assert not lock.exists()  # released with the first invocation
    assert not list(lock.parent.rglob(".*.tmp"))
