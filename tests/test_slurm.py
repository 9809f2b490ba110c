"""The workflow through profiles/slurm on a real single-node SLURM (tests/slurm/cluster.sh brings it
up on localhost, installing Debian's packages when it can, with two stand-in GPUs): a job that fails
on SLURM fails the workflow with its logs named, every job goes through sbatch, GPU jobs ask for
and get GPUs (training on two, through lcsc.launch) while CPU-only jobs ask for none, a rerun after the
fix redoes only what failed, and the outputs and MLflow runs are those of a local run."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, TINY
from lcsc.kernel.tracking import job_name

CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
PROFILE = REPO / "profiles" / "slurm"
# Fast polling for a cluster that answers at once, small jobs that share the 2-CPU node, and
# squeue for the status (this test cluster keeps no accounting database for sacct).
FAST = [
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "2",
    "--slurm-keep-successful-logs",
    "--default-resources",
    "mem_mb=1000",
    "runtime=10",
    "cpus_per_task=1",
    "--set-resources",
    "train_dm:mem_mb=1000",
    "search:mem_mb=1000",
    "--set-threads",
    *(f"{rule}=1" for rule in ("train_dm", "baselines", "search", "evaluate")),
]
# Fewer variants than the other workflow tests: 5 evaluate jobs instead of 11 keep this test short.
# `device: auto` makes every torch stage a GPU job (gpu=1; train_dm gpu=2 with train.gpus 2); torch
# here finds no GPU driver, so the jobs compute on the CPU, gloo for the two training processes.
CFG = dict(
    TINY,
    experiment="tiny-slurm",
    results_dir="results",
    device="auto",
    mlflow={"enabled": True},
    train=dict(TINY["train"], gpus=2),
    baselines={"lawa_last": [], "ema_decays": [], "power_sigma_rels": [], "greedy_soup": False},
)
# What each rule asks SLURM for: GPUs for the torch stages, none for the export (a weighted sum on
# the CPU) and the report
GPU_REQUESTS = {
    "train_dm": "gres:gpu:2",
    "train_features": "gres:gpu:1",
    "reference_stats": "gres:gpu:1",
    "baselines": "gres:gpu:1",
    "search": "gres:gpu:1",
    "evaluate": "gres:gpu:1",
    "export": None,
    "tabulate": None,
}
VARIANTS = ["last", "ema_0.9", "ema_0.99", "uniform", "lcsc"]


def _state() -> Path:
    return Path(os.environ.get("LCSC_SLURM_STATE", "/tmp/lcsc-slurm"))


@pytest.fixture(scope="module")
def cluster():
    """Opt-in (LCSC_SLURM_TEST=1; .ci/run sets it): as root, this installs Debian's SLURM packages
    when missing and starts daemons. Once asked for, a cluster that cannot start is a failure."""
    if os.environ.get("LCSC_SLURM_TEST") != "1":
        pytest.skip(
            "set LCSC_SLURM_TEST=1 to run it: as root it installs (apt) and starts a single-node "
            "SLURM on localhost (tests/slurm/cluster.sh); .ci/run does"
        )
    up = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=600)
    try:
        assert up.returncode == 0, f"tests/slurm/cluster.sh start failed ({up.returncode}):\n{up.stdout}{up.stderr}"
        yield {}
    finally:
        if "already up" not in up.stdout:  # stop only a cluster this test started
            subprocess.run(["bash", str(CLUSTER), "stop"], capture_output=True, text=True, timeout=120)


def _submitted() -> int:
    """Batch jobs the controller accepted so far (its log has one such line per accepted sbatch)."""
    return (_state() / "slurmctld.log").read_text().count("_slurm_rpc_submit_batch_job: JobId=")


def _jobs() -> dict[str, dict[str, str]]:
    """The jobs the controller still knows (slurm.conf's MinJobAge keeps finished ones), by id:
    `scontrol show job`'s fields."""
    shown = subprocess.run(["scontrol", "show", "job", "--oneliner"], capture_output=True, text=True, timeout=30)
    jobs = {}
    for line in shown.stdout.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "JobId" in fields:
            jobs[fields["JobId"]] = fields
    return jobs


def _check_gpus(root: Path, jobs: dict[str, dict[str, str]]) -> None:
    """Each rule's jobs asked sbatch for its GPUs (or none), and each job saw what it was given."""
    by_rule = {}
    for job in jobs.values():
        rule = re.match(r"rule_([a-z_]+?)(_wildcards_|$)", job.get("Comment", ""))
        if rule and rule.group(1) in GPU_REQUESTS:
            by_rule.setdefault(rule.group(1), []).append(job)
    assert set(by_rule) == set(GPU_REQUESTS), sorted(by_rule)
    for rule, asked in GPU_REQUESTS.items():
        assert {job.get("TresPerJob") for job in by_rule[rule]} == {asked}, (rule, by_rule[rule])
    logs = root / ".snakemake" / "slurm_logs"
    for rule, asked in GPU_REQUESTS.items():
        found = sorted((logs / f"rule_{rule}").rglob("*.log"))
        assert found, f"no SLURM log of a {rule} job under {logs}"
        # what the stage printed is in the job's own log (the rule writes its output there)
        job_logs = sorted((root / "results" / "tiny-slurm" / "logs" / rule).glob("*.log"))
        assert job_logs, f"no log of a {rule} job"
        for log in job_logs:
            text = log.read_text()
            given = re.findall(r"this job was given GPUs \(CUDA_VISIBLE_DEVICES=([0-9,]+)\)", text)
            # every lcsc process in a GPU job saw as many GPUs as it asked for (and torch here none)
            count = 0 if asked is None else int(asked.rsplit(":", 1)[1])
            assert bool(given) == bool(count) and all(len(g.split(",")) == count for g in given), (log, given)
    train_log = (root / "results" / "tiny-slurm" / "logs" / "train_dm" / "dm.log").read_text()
    assert "2 processes (gloo)" in train_log, train_log[-2000:]


def _snakemake(root: Path, slurm_env: dict, *args: str, timeout: int = 600):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LCSC_MLFLOW"))} | slurm_env
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--profile",
            str(PROFILE),
            "--configfile",
            "tiny.yaml",
            "--directory",
            str(root),
            *FAST,
            *args,
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_profile_dry_run_needs_no_slurm(tmp_path):
    """`snakemake --profile profiles/slurm -n` on a machine without any SLURM command."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "sh", "env", "which"):
        if shutil.which(tool):
            os.symlink(shutil.which(tool), bin_dir / tool)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{bin_dir}")
    for profile in (PROFILE, REPO / "profiles" / "local"):
        dry = subprocess.run(
            [sys.executable, "-m", "snakemake", "--profile", str(profile), "-n", "--forceall"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert dry.returncode == 0, dry.stdout[-2000:] + dry.stderr[-3000:]
        assert "search" in dry.stdout and "train_dm" in dry.stdout


def test_pipeline_on_slurm_with_a_failing_job_then_its_rerun(cluster, tmp_path):
    from mlflow.tracking import MlflowClient

    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(CFG))
    # a corrupted input that only the search reads: its journal, damaged before the first line's end
    journal = tmp_path / "results" / "tiny-slurm" / "dm" / "search" / "nfe2" / "state" / "journal.jsonl"
    journal.parent.mkdir(parents=True)
    journal.write_text('{"type":"header","format":"lcsc-search-journal/1"}\n{"type":"ev\n{"type":"eval"}\n')
    before = _submitted()
    first_job = max(map(int, _jobs()), default=0)  # jobs of earlier runs are not this test's
    failed = _snakemake(tmp_path, cluster, "--keep-going")
    out = failed.stdout + failed.stderr
    assert failed.returncode != 0
    retries = yaml.safe_load((PROFILE / "config.yaml").read_text())["retries"]
    # every job but the search and what needs it went through sbatch once; the search 1 + retries times
    assert _submitted() - before == 4 + (len(VARIANTS) - 1) + 1 + retries
    assert "results/tiny-slurm/logs/search/dm-nfe2.log" in out  # the job's own log is named
    assert re.search(r"\.snakemake/slurm_logs/rule_search/\S+\.log", out), out[-3000:]  # and SLURM's log of it
    log = (tmp_path / "results" / "tiny-slurm" / "logs" / "search" / "dm-nfe2.log").read_text()
    assert "line 2 of 3 is not a complete JSON record" in log

    # fixed: the rerun submits only the search and what depends on it (lcsc's evaluation, its export, the report)
    journal.unlink()
    before = _submitted()
    rerun = _snakemake(tmp_path, cluster)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-5000:]
    assert _submitted() - before == 4
    ran = set(re.findall(r"rule (\w+):", rerun.stdout + rerun.stderr))
    assert ran - {"all"} == {"search", "evaluate", "export", "tabulate"}  # `all` is a local rule
    assert "variant=lcsc" in rerun.stdout + rerun.stderr
    slurm_logs = tmp_path / ".snakemake" / "slurm_logs"
    rules = {p.relative_to(slurm_logs).parts[0] for p in slurm_logs.rglob("*.log")}
    assert rules == {
        f"rule_{r}"
        for r in (
            "train_dm",
            "train_features",
            "reference_stats",
            "baselines",
            "search",
            "evaluate",
            "export",
            "tabulate",
        )
    }
    report = tmp_path / "results" / "tiny-slurm" / "report" / "summary.md"
    assert all(f"| {v} |" in report.read_text() for v in VARIANTS)
    _check_gpus(tmp_path, {i: j for i, j in _jobs().items() if int(i) > first_job})

    # MLflow: a parent per invocation, a child per job named as in a local run; the failed search
    # attempts are FAILED children of the first invocation
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny-slurm").experiment_id], max_results=200)
    parents = sorted(
        (r for r in runs if r.data.tags.get("lcsc.role") == "invocation"), key=lambda r: r.info.start_time
    )
    assert [p.info.status for p in parents] == ["FAILED", "FINISHED"]
    children = {
        p.info.run_id: [r for r in runs if r.data.tags.get("mlflow.parentRunId") == p.info.run_id] for p in parents
    }
    first, second = (children[p.info.run_id] for p in parents)
    assert sorted(job_name(r.info.run_name) for r in first if r.info.status == "FAILED") == [
        "search[model=dm,nfe=2]"
    ] * (1 + retries)
    finished = sorted(job_name(r.info.run_name) for r in first + second if r.info.status == "FINISHED")
    assert finished == sorted(
        [
            "train_dm[model=dm]",
            "train_features",
            "reference_stats[split=train]",
            "baselines[model=dm]",
            "search[model=dm,nfe=2]",
            "tabulate",
            "export[model=dm,variant=lcsc]",
            *(f"evaluate[model=dm,variant={v}]" for v in VARIANTS),
        ]
    )
