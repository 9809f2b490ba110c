"""SIGINT / SIGTERM: stages stop within seconds, leave state a rerun resumes from, and their MLflow
runs end KILLED; runs of jobs killed outright (SIGKILL) are ended by the next invocation, by the
failed invocation itself, or by `lcsc mlflow-sync`; Snakemake passes the interrupt to its jobs."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from conftest import REPO, tiny_config
from helpers import hold_when, like_a_terminal
from lcsc.kernel import interrupts, tracking

LCSC = [sys.executable, "-m", "lcsc"]
EXIT_INTERRUPTED = 130  # what `lcsc` returns when stopped by a signal


def _env() -> dict:
    """This checkout's lcsc, run from a temporary folder (MLflow puts the artifacts of a store given
    by URI in ./mlruns), with no MLflow or lcsc settings from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LCSC_"))}
    return env | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))}


def _mlflow(tmp_path: Path, name: str) -> dict:
    return {"enabled": True, "tracking_uri": f"sqlite:///{tmp_path / (name + '.db')}"}


def _runs(uri: str, experiment: str, stage: str | None = None) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    query = f"tags.`lcsc.stage` = '{stage}'" if stage else ""
    return client.search_runs([exp.experiment_id], filter_string=query, max_results=1000)


def _wait_for(predicate, timeout: float, what: str, proc=None) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (code {proc.returncode}) before {what}")
        if time.time() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen, sig: int, stopped: bool = False) -> float:
    """Send `sig` (to a process held by SIGSTOP: then let it go on); the seconds until it has
    exited. The bound is no timing target (the seconds are printed): a stage that ignored the
    signal would run on for minutes."""
    t0 = time.perf_counter()
    proc.send_signal(sig)
    if stopped:
        os.kill(proc.pid, signal.SIGCONT)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"still running 120 s after {signal.Signals(sig).name}") from None
    return time.perf_counter() - t0


def _trail_hashes(manifest: Path):
    return [(c["step"], c["sha256"]) for c in json.loads(manifest.read_text())["checkpoints"]]


@pytest.mark.slow
def test_sigterm_stops_training_at_once_and_the_rerun_resumes_to_the_same_trail(tmp_path):
    overrides = {"train": {"iterations": 160, "checkpoint_every": 20}}
    for name in ("killed", "whole"):
        cfg = tiny_config(
            tmp_path / name, mlflow=_mlflow(tmp_path, name) if name == "killed" else {"enabled": False}, **overrides
        )
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [*LCSC, "train-dm", "--threads", "1", "--config"]
    # the uninterrupted run, meanwhile
    whole = subprocess.Popen(
        [*cmd, str(tmp_path / "whole.yaml")],
        cwd=tmp_path,
        env=_env(),
        preexec_fn=like_a_terminal,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with open(tmp_path / "killed.err", "w") as err:
        proc = subprocess.Popen(
            [*cmd, str(tmp_path / "killed.yaml")],
            cwd=tmp_path,
            env=_env(),
            preexec_fn=like_a_terminal,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        trail = tmp_path / "killed" / "tiny" / "dm" / "trail"
        hold_when(
            proc,
            lambda: len(list(trail.glob("step_*.safetensors"))) >= 2 and not (trail / "manifest.json").exists(),
            300,
            "second checkpoint",
        )
        seconds = _stop(proc, signal.SIGTERM, stopped=True)
    stderr = (tmp_path / "killed.err").read_text()
    print(f"train-dm stopped {seconds:.2f} s after SIGTERM")
    assert proc.returncode == EXIT_INTERRUPTED, stderr[-3000:]
    assert "Traceback" not in stderr and "interrupted" in stderr, stderr[-3000:]
    assert not (trail / "manifest.json").exists(), "the job finished before it could be stopped"
    assert not list(trail.glob(".*.tmp"))
    uri = _mlflow(tmp_path, "killed")["tracking_uri"]
    [run] = _runs(uri, "tiny", "train_dm")
    assert run.info.status == "KILLED" and run.info.end_time
    [record] = (tmp_path / "killed" / "tiny" / "tracking").glob("*/train_dm.json")
    assert json.loads(record.read_text())["status"] == "KILLED"

    rerun = subprocess.run(
        [*cmd, str(tmp_path / "killed.yaml")], cwd=tmp_path, env=_env(), capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from step" in rerun.stdout
    assert whole.wait(timeout=120) == 0
    resumed = _trail_hashes(trail / "manifest.json")
    assert [s for s, _ in resumed] == list(range(20, 161, 20))
    assert resumed == _trail_hashes(tmp_path / "whole" / "tiny" / "dm" / "trail" / "manifest.json")
    assert sorted(r.info.status for r in _runs(uri, "tiny", "train_dm")) == ["FINISHED", "KILLED"]


def _history(path: Path) -> list[dict]:
    """history.csv without the timings (they differ from run to run)."""
    with open(path, newline="") as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


@pytest.mark.slow
def test_sigint_stops_a_search_and_the_rerun_ends_as_an_uninterrupted_one(trained, tmp_path):
    cfg, _ = trained
    configs = {}
    for name in ("killed", "whole"):
        shutil.copytree(
            cfg["results_dir"],
            tmp_path / name,
            ignore=shutil.ignore_patterns(
                "search", "eval", "baselines*", "tracking", "mlflow.db*", "mlartifacts", "logs"
            ),
        )
        mine = dict(
            cfg,
            results_dir=str(tmp_path / name),
            search=dict(cfg["search"], budget=12),
            mlflow=_mlflow(tmp_path, name) if name == "killed" else {"enabled": False},
        )
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(mine))
    cmd = [*LCSC, "search", "--threads", "1", "--config"]
    whole = subprocess.Popen(
        [*cmd, str(configs["whole"])],
        cwd=tmp_path,
        env=_env(),
        preexec_fn=like_a_terminal,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    out = tmp_path / "killed" / "tiny" / "dm" / "search" / f"nfe{cfg['search']['nfe']}"
    journal = out / "state" / "journal.jsonl"

    def searching() -> bool:  # past the start profiles, some candidates measured
        lines = journal.read_text().splitlines() if journal.exists() else []
        asks = [i for i, line in enumerate(lines) if '"type":"ask"' in line]
        return bool(asks) and sum('"type":"eval"' in line for line in lines[asks[0] :]) >= 2

    with open(tmp_path / "killed.err", "w") as err:
        proc = subprocess.Popen(
            [*cmd, str(configs["killed"])],
            cwd=tmp_path,
            env=_env(),
            preexec_fn=like_a_terminal,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        # held where it is searching and not done: the signal lands mid-search on any machine
        hold_when(proc, lambda: searching() and not (out / "coefficients.json").exists(), 300, "search evaluations")
        seconds = _stop(proc, signal.SIGINT, stopped=True)
    stderr = (tmp_path / "killed.err").read_text()
    print(f"search stopped {seconds:.2f} s after SIGINT")
    assert proc.returncode == EXIT_INTERRUPTED, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert not (out / "history.csv").exists() and not (out / "coefficients.json").exists()
    assert not list(out.rglob(".*.tmp"))
    assert journal.read_bytes().endswith(b"\n")  # closed after whole records only
    [run] = _runs(_mlflow(tmp_path, "killed")["tracking_uri"], "tiny", "search")
    assert run.info.status == "KILLED"

    rerun = subprocess.run([*cmd, str(configs["killed"])], cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from" in rerun.stdout
    assert whole.wait(timeout=120) == 0
    other = tmp_path / "whole" / "tiny" / "dm" / "search" / f"nfe{cfg['search']['nfe']}"
    assert _history(out / "history.csv") == _history(other / "history.csv")
    a, b = (json.loads((d / "coefficients.json").read_text()) for d in (out, other))
    assert (a["coefficients"], a["fitness"], a["evaluation"]) == (b["coefficients"], b["fitness"], b["evaluation"])


@pytest.mark.slow
def test_runs_left_running_by_killed_jobs_are_ended(tmp_path, monkeypatch):
    """A job SIGKILLed leaves its run RUNNING (and, where it wrote one, its record): the failed
    invocation's end_parent ends them; sync and the next invocation end older ones; runs under a
    parent that still runs are left alone."""
    from mlflow.tracking import MlflowClient

    from lcsc.stages import stage_config

    cfg = tiny_config(tmp_path / "results", experiment="orphans", mlflow=_mlflow(tmp_path, "m"))
    client = MlflowClient(tracking.tracking_uri(cfg))
    for key in (tracking.PARENT_ENV, tracking.INVOCATION_ENV):
        monkeypatch.delenv(key, raising=False)

    def invocation_with_a_killed_job():
        invocation, parent = tracking.start_parent(cfg)
        monkeypatch.setenv(tracking.INVOCATION_ENV, invocation)
        monkeypatch.setenv(tracking.PARENT_ENV, parent)
        run = tracking.StageRun(cfg, "train_dm", {"model": "dm"}, stage_config(cfg, "train_dm")).__enter__()
        run.log_metrics({"train_loss": 1.0}, step=1)
        run.flush()  # ... and SIGKILL: no __exit__; a record written as it ran
        path = tracking.record_path(cfg, invocation, run.name)
        tracking.write_record(path, run.record)
        with tracking.StageRun(cfg, "train_features", {}, stage_config(cfg, "train_features")):
            pass  # a job that ended normally
        return invocation, parent, run, path

    status = lambda run_id: client.get_run(run_id).info.status  # noqa: E731

    def killed_jobs(invocation: str) -> list[str]:
        return [
            r.info.status
            for r in _runs(client.tracking_uri, "orphans", "train_dm")
            if r.data.tags["lcsc.invocation"] == invocation
        ]

    # end_parent of the failed invocation ends its own killed job at once
    inv, parent, run, path = invocation_with_a_killed_job()
    assert status(run.run_id) == "RUNNING"
    tracking.end_parent(cfg, inv, parent, ok=False)
    assert (status(parent), status(run.run_id)) == ("FAILED", "KILLED")
    assert client.get_run(run.run_id).info.end_time >= client.get_run(run.run_id).info.start_time
    assert json.loads(path.read_text())["status"] == "KILLED"
    assert tracking.sync(cfg)["failed"] == 0  # logs the record (KILLED) in place of the partial run
    assert killed_jobs(inv) == ["KILLED"]

    # a parent ended by someone else (its end_parent never ran the cleanup): sync ends the child
    inv, parent, run, path = invocation_with_a_killed_job()
    client.set_terminated(parent, "FAILED")
    parent_record = tracking.record_path(cfg, inv, "parent")
    ended = {"status": "FAILED", "end_time": int(time.time() * 1000)}
    tracking.write_record(parent_record, json.loads(parent_record.read_text()) | ended)
    assert tracking.sync(cfg)["failed"] == 0
    assert json.loads(path.read_text())["status"] == "KILLED"
    assert killed_jobs(inv) == ["KILLED"]
    # ... and without a record (a job killed before it wrote one): sync ends the run in the store
    inv, parent, run, path = invocation_with_a_killed_job()
    path.unlink()
    client.set_terminated(parent, "FAILED")
    assert tracking.sync(cfg)["killed"] == 1
    assert status(run.run_id) == "KILLED"

    # the next invocation ends runs of older ones; a run whose parent still runs is left alone
    inv, parent, run, path = invocation_with_a_killed_job()
    client.set_terminated(parent, "FAILED")
    live_inv, live_parent = tracking.start_parent(cfg)
    live_child = client.create_run(
        client.get_run(live_parent).info.experiment_id,
        run_name="search",
        tags={"mlflow.parentRunId": live_parent, "lcsc.run_key": f"{live_inv}/search"},
    )
    tracking.start_parent(cfg)
    assert status(run.run_id) == "KILLED"
    assert status(live_child.info.run_id) == "RUNNING"
    assert status(live_parent) == "RUNNING"


KILLED_DRIVER = """
import os, signal, sys, yaml
from lcsc.kernel import tracking
from lcsc.stages import stage_config
cfg = yaml.safe_load(open(sys.argv[1]))
if sys.argv[2] == "stopped":  # a Snakemake driver stopped by Ctrl-C: no onsuccess, no onerror
    tracking.start_parent(cfg)
    raise SystemExit(1)
if sys.argv[2] == "driver":  # a Snakemake driver with one job, both killed outright
    invocation, parent = tracking.start_parent(cfg)
    os.environ[tracking.INVOCATION_ENV], os.environ[tracking.PARENT_ENV] = invocation, parent
tracking.StageRun(cfg, "train_dm", {"model": "dm"}, stage_config(cfg, "train_dm")).__enter__()
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_runs_of_a_process_killed_outright_are_ended(tmp_path, monkeypatch):
    """SIGKILL to the Snakemake driver leaves its parent run and its job's run RUNNING with nobody
    left to end them, and so does SIGKILL to a stage run by hand (no parent at all): the next
    invocation, or `lcsc mlflow-sync`, sees that their processes are gone and ends them KILLED."""
    cfg = tiny_config(tmp_path / "results", experiment="gone", mlflow=_mlflow(tmp_path, "m"))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    for key in (tracking.PARENT_ENV, tracking.INVOCATION_ENV):
        monkeypatch.delenv(key, raising=False)
    for role in ("driver", "manual"):
        proc = subprocess.run(
            [sys.executable, "-c", KILLED_DRIVER, str(tmp_path / "c.yaml"), role],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    runs = _runs(cfg["mlflow"]["tracking_uri"], "gone")
    assert sorted(r.info.status for r in runs) == ["RUNNING"] * 3  # a parent, its job, a job run by hand
    records = sorted(tracking.records_dir(cfg).rglob("*.json"))
    assert [json.loads(p.read_text())["status"] for p in records] == ["RUNNING"] * 3
    invocation, parent = tracking.start_parent(cfg)  # the next invocation
    runs = {r.info.run_id: r.info.status for r in _runs(cfg["mlflow"]["tracking_uri"], "gone")}
    assert runs.pop(parent) == "RUNNING" and sorted(runs.values()) == ["KILLED"] * 3
    assert [json.loads(p.read_text())["status"] for p in records] == ["KILLED"] * 3
    assert tracking.sync(cfg)["failed"] == 0
    runs = [r for r in _runs(cfg["mlflow"]["tracking_uri"], "gone") if r.info.run_id != parent]
    assert sorted(r.info.status for r in runs) == ["KILLED"] * 3  # sync replaced nothing with RUNNING
    tracking.end_parent(cfg, invocation, parent, ok=True)


@pytest.mark.slow
def test_an_invocation_that_exits_without_ending_its_run_ends_it_killed(tmp_path):
    cfg = tiny_config(tmp_path / "results", experiment="stopped", mlflow=_mlflow(tmp_path, "m"))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_DRIVER, str(tmp_path / "c.yaml"), "stopped"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert [r.info.status for r in _runs(cfg["mlflow"]["tracking_uri"], "stopped")] == ["KILLED"]
    assert [json.loads(p.read_text())["status"] for p in tracking.records_dir(cfg).rglob("parent.json")] == ["KILLED"]


def test_stage_run_ends_killed_on_an_interrupt(tmp_path, monkeypatch):
    from lcsc.stages import stage_config

    for key in (tracking.PARENT_ENV, tracking.INVOCATION_ENV):
        monkeypatch.delenv(key, raising=False)
    cfg = tiny_config(tmp_path / "results", experiment="ended", mlflow=_mlflow(tmp_path, "m"))
    for exc, expected in (
        (interrupts.Interrupted(signal.SIGTERM), "KILLED"),
        (KeyboardInterrupt(), "KILLED"),
        (RuntimeError("boom"), "FAILED"),
    ):
        with pytest.raises(type(exc)):
            with tracking.StageRun(cfg, "search", {"model": "dm"}, stage_config(cfg, "search")) as run:
                raise exc
        record = json.loads(tracking.record_path(cfg, run.invocation, run.name).read_text())
        assert (record["status"], tracking.store_client(cfg).get_run(run.run_id).info.status) == (expected, expected)


def test_install_turns_sigterm_into_an_interrupt_once(monkeypatch):
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        interrupts.install()
        with pytest.raises(interrupts.Interrupted) as err:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        assert isinstance(err.value, KeyboardInterrupt) and err.value.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)  # the same interrupt again (terminal and Snakemake): ignored
        time.sleep(0.1)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@pytest.mark.parametrize("use_psutil", [True, False])
def test_forward_to_children_stops_lcsc_processes_only(monkeypatch, use_psutil):
    if not use_psutil:
        monkeypatch.setitem(sys.modules, "psutil", None)  # the /proc fallback
    sleep = "import time; time.sleep(60)"
    # a shell between, as Snakemake has; `-m lcsc` in the arguments marks the lcsc job
    job = subprocess.Popen(["bash", "-c", f"{sys.executable} -c '{sleep}' -m lcsc train-dm; true"])
    other = subprocess.Popen([sys.executable, "-c", sleep, "lcsc"])
    try:
        found = []
        _wait_for(
            lambda: (
                found.extend(p for p, cmd in interrupts._descendants(os.getpid()) if interrupts._is_lcsc(cmd)) or found
            ),
            10,
            "the job's process",
        )
        assert interrupts.forward_to_children(signal.SIGTERM) == found
        assert job.wait(timeout=5) == 0  # the shell goes on once its python is gone
        assert other.poll() is None
    finally:
        for proc in (job, other):
            proc.kill()
            proc.wait()


def _lcsc_processes(root_pid: int) -> list[psutil.Process]:
    try:
        procs = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in procs:
        try:
            if interrupts._is_lcsc(p.cmdline()):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            pass
    return out


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_sigint_to_snakemake_stops_its_running_jobs(tmp_path):
    """SIGINT to the Snakemake process alone (a scheduler's or a wrapper's, not a terminal's, which
    reaches every process): Snakemake itself would wait for the running job to finish."""
    cfg = tiny_config(
        Path("results"),
        experiment="tiny-int",
        mlflow=_mlflow(tmp_path, "m"),
        train={"iterations": 100000, "checkpoint_every": 20},
    )
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    log = open(tmp_path / "snakemake.log", "w")
    target = "results/tiny-int/dm/trail/manifest.json"  # train_dm alone
    smk = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "snakemake",
            target,
            "--snakefile",
            str(REPO / "Snakefile"),
            "--cores",
            "2",
            "--configfile",
            "tiny.yaml",
            "--directory",
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=like_a_terminal,
    )
    try:
        trail = tmp_path / "results" / "tiny-int" / "dm" / "trail"
        jobs: list[psutil.Process] = []

        def training() -> bool:
            jobs[:] = [p for p in _lcsc_processes(smk.pid) if "train-dm" in p.cmdline()]
            return bool(jobs) and any(trail.glob("step_*.safetensors"))

        _wait_for(training, 300, "training job", smk)
        t0 = time.perf_counter()
        os.kill(smk.pid, signal.SIGINT)
        # Snakemake ends only once its jobs have; this one trains 100000 steps (an hour here), so
        # it ends within the bound only if the interrupt reached it (no timing target: printed)
        assert smk.wait(timeout=180) != 0
        seconds = time.perf_counter() - t0
        print(f"train-dm under Snakemake gone {seconds:.2f} s after SIGINT to Snakemake")
        assert not any(_alive(p) for p in jobs), "the job outlived Snakemake"
        assert not _lcsc_processes(smk.pid)
    finally:
        if smk.poll() is None:
            os.killpg(smk.pid, signal.SIGKILL)
            smk.wait()
        log.close()
    out = (tmp_path / "snakemake.log").read_text()
    job_log = (tmp_path / "results" / "tiny-int" / "logs" / "train_dm" / "dm.log").read_text()
    assert "lcsc train-dm: interrupted" in job_log, job_log[-3000:]  # the stage's own handler ran
    assert not (trail / "manifest.json").exists()
    [run] = _runs(cfg["mlflow"]["tracking_uri"], "tiny-int", "train_dm")
    assert run.info.status == "KILLED", out[-3000:]
    [parent] = [r for r in _runs(cfg["mlflow"]["tracking_uri"], "tiny-int") if r.data.tags.get("lcsc.role")]
    assert parent.info.status == "FAILED", out[-3000:]
