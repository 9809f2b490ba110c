"""The whole workflow through the Snakemake CLI in a temporary folder, then MLflow read back."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, TINY

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _snakemake(args, cwd, timeout=600):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LCSC_"))}
    return subprocess.run([*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_lint_and_dry_run_of_the_default_config():
    lint = subprocess.run([*SNAKEMAKE, "--lint"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "Congratulations" in lint.stdout + lint.stderr
    dry = subprocess.run([*SNAKEMAKE, "-n", "--directory", str(REPO)], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    for rule in ("train_dm", "train_features", "reference_stats", "search", "evaluate", "tabulate"):
        assert rule in dry.stdout


def test_bad_config_is_rejected_at_parse_time(tmp_path):
    cfg = dict(TINY, train=dict(TINY["train"], iterations="abc"), extra_key=1)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    res = _snakemake(["-n", "--configfile", "bad.yaml", "--directory", str(tmp_path)], tmp_path)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "train.iterations: 'abc' is not of type 'integer'" in out
    assert "extra_key: unknown key" in out


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("wf")
    cfg = dict(TINY, experiment="tiny-wf", results_dir="results", mlflow={"enabled": True})
    (root / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    res = _snakemake(["--cores", "2", "--configfile", "tiny.yaml", "--directory", str(root)], root)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return root, res


def test_workflow_produces_the_report(workflow_run):
    root, _ = workflow_run
    report = root / "results" / "tiny-wf" / "report"
    for name in ("summary.md", "summary.csv", "fid_vs_nfe.png", "coefficients.png", "search_curve.png",
                 "samples_dm_lcsc.png", "samples_dm_last.png"):
        assert (report / name).stat().st_size > 0, name
    md = (report / "summary.md").read_text()
    assert "| lcsc |" in md and "| ema_0.99 |" in md and "| greedy_soup |" in md and "| power_0.05 |" in md
    logs = list((root / "results" / "tiny-wf" / "logs").rglob("*.log"))
    assert len(logs) == 17  # one per job
    again = _snakemake(["-n", "--configfile", "tiny.yaml", "--directory", str(root)], root)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_mlflow_parent_and_child_runs(workflow_run):
    from mlflow.tracking import MlflowClient

    root, _ = workflow_run
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny-wf")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("lcsc.role") == "invocation"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.params["search.budget"] == "8"
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    variants = ("last", "ema_0.9", "ema_0.99", "uniform", "lawa_2", "ema_0.9_profile", "ema_0.99_profile",
                "power_0.05", "power_0.1", "greedy_soup", "lcsc")
    expected = {"train_dm[model=dm]", "train_features", "reference_stats[split=train]", "baselines[model=dm]",
                "search[model=dm,nfe=2]", "tabulate", *[f"evaluate[model=dm,variant={v}]" for v in variants]}
    assert set(children) == expected
    assert all(r.info.status == "FINISHED" for r in children.values())

    train = children["train_dm[model=dm]"]
    assert train.data.params["train.iterations"] == "40" and "search.budget" not in train.data.params
    assert train.data.tags["lcsc.model"] == "dm"
    loss = client.get_metric_history(train.info.run_id, "train_loss")
    assert [m.step for m in loss] == list(range(5, 41, 5))

    search = children["search[model=dm,nfe=2]"]
    fitness = client.get_metric_history(search.info.run_id, "fitness")
    assert sorted(m.step for m in fitness) == list(range(16))  # 8 baselines, then 8 candidates
    rescore = client.get_metric_history(search.info.run_id, "rescore_fitness")
    assert sorted(m.step for m in rescore) == [16, 17, 18]
    coeffs = json.loads((root / "results" / "tiny-wf" / "dm" / "search" / "nfe2" / "coefficients.json").read_text())
    assert min(m.value for m in rescore) == pytest.approx(coeffs["rescore_fitness"])
    assert {a.path for a in client.list_artifacts(search.info.run_id)} >= {"coefficients.json", "history.csv"}

    ev = children["evaluate[model=dm,variant=lcsc]"]
    fid = {m.step: m.value for m in client.get_metric_history(ev.info.run_id, "fid")}
    on_disk = json.loads((root / "results" / "tiny-wf" / "dm" / "eval" / "lcsc.json").read_text())["fid"]
    assert fid == {int(k): pytest.approx(v) for k, v in on_disk.items()}
    assert {a.path for a in client.list_artifacts(ev.info.run_id)} == {"lcsc.json", "lcsc.png"}

    tab = children["tabulate"]
    report = {a.path for a in client.list_artifacts(tab.info.run_id, "report")}
    assert "report/summary.md" in report and "report/fid_vs_nfe.png" in report
    # checkpoints are never artifacts
    for r in children.values():
        for a in client.list_artifacts(r.info.run_id):
            assert not a.path.endswith(".safetensors")
