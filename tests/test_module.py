"""lcsc deployed as a Snakemake module: a workflow of the user's own that says `module lcsc:` with
this checkout's Snakefile and `use rule * from lcsc` (docs/module.md) runs the same jobs and writes
the same report as lcsc run directly on the same config."""

import json
import os
import subprocess

import pytest
import yaml

from conftest import TINY
from helpers import REPO, SNAKEMAKE, snakemake

# The smallest whole run: the diffusion model alone, one EMA, no other baselines.
CONFIG = dict(
    TINY,
    experiment="tiny-module",
    results_dir="results",
    train=dict(TINY["train"], ema_decays=[0.9]),
    baselines={"lawa_last": [], "ema_decays": [], "power_sigma_rels": [], "greedy_soup": False},
)

# What docs/module.md tells a user to write, with the checkout's path for the github(...) source.
WRAPPER = """\
configfile: "config/config.yaml"


module lcsc:
    snakefile:
        {snakefile!r}
    config:
        config


use rule * from lcsc

from lcsc.kernel import invocation


onstart:
    invocation.start(config)


onsuccess:
    invocation.end(config, ok=True)


onerror:
    invocation.end(config, ok=False)
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    direct = tmp_path_factory.mktemp("direct")
    (direct / "tiny.yaml").write_text(yaml.safe_dump(CONFIG))
    res = snakemake(["--cores", "2", "--configfile", "tiny.yaml", "--directory", str(direct)], direct)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]

    user = tmp_path_factory.mktemp("user workflow")  # a space in the user's path
    (user / "config").mkdir()
    # the same config, logged to an MLflow store of its own (where and how a job runs: no result changes)
    mlflow = {"enabled": True, "tracking_uri": f"sqlite:///{user / 'mlflow.db'}"}
    (user / "config" / "config.yaml").write_text(yaml.safe_dump(dict(CONFIG, mlflow=mlflow)))
    (user / "Snakefile").write_text(WRAPPER.format(snakefile=str(REPO / "Snakefile")))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LCSC_"))}
    res = subprocess.run([*SNAKEMAKE, "--cores", "2"], cwd=user, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return direct / "results" / "tiny-module", user / "results" / "tiny-module", res


def test_the_module_writes_the_same_report_and_export(runs):
    direct, module, _ = runs
    for name in ("report/summary.csv", "report/summary.md", "dm/export/lcsc/model.safetensors"):
        assert (module / name).read_bytes() == (direct / name).read_bytes(), name
    assert sorted(p.name for p in (module / "logs").iterdir()) == sorted(p.name for p in (direct / "logs").iterdir())


def test_the_module_runs_every_rule_of_the_workflow(runs):
    _, module, res = runs
    out = res.stdout + res.stderr
    for rule in ("train_dm", "train_features", "reference_stats", "baselines", "search", "evaluate", "export"):
        assert f"rule {rule}:" in out, rule
    assert (module / "benchmarks" / "train_dm" / "dm.tsv").read_text().startswith("s\th:m:s")


def test_the_users_handlers_make_one_invocation_with_its_parent_run(runs):
    """Snakemake runs only the main Snakefile's onstart/onsuccess: the user's, calling
    lcsc.kernel.invocation, give the jobs one invocation and an MLflow parent run, as lcsc's own do."""
    _, module, res = runs
    records = sorted((module / "tracking").glob("*/*.json"))
    assert len({p.parent.name for p in records}) == 1, records  # not one invocation per job
    parent = json.loads((records[0].parent / "parent.json").read_text())
    assert parent["status"] == "FINISHED", parent
    assert len(records) == 1 + len(list((module / "logs").rglob("*.log")))  # the parent and every job
    assert "MLflow parent run" in res.stdout + res.stderr
