"""MLflow against a real tracking server (`lcsc mlflow-server`, a real `mlflow server` process on a
free loopback port): two invocations with different search settings compare through the REST API,
and a server killed in the middle of a third loses nothing: `lcsc mlflow-sync` restores its runs,
and a second sync changes nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import TINY
from helpers import snakemake

EXPERIMENT = "tiny-track"
# The baselines trimmed to the kept EMAs and uniform: this test is about the server, and five evaluate
# jobs per pipeline instead of eleven keep it short (test_workflow covers the baselines' runs).
VARIANTS = ("last", "ema_0.9", "ema_0.99", "uniform", "lcsc")
BASELINES = {"lawa_last": [], "ema_decays": [], "power_sigma_rels": [], "greedy_soup": False}
STARTS = 2  # the search's scored starting points with these baselines: last and uniform


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`lcsc mlflow-server` in its own process group, stopped (or killed) as a whole."""

    def __init__(self, root: Path, cfg_file: Path, port: int):
        self.root, self.cfg_file, self.port = root, cfg_file, port
        self.proc = None

    def start(self) -> "Server":
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LCSC_"))}
        log = open(self.root / f"server-{time.time():.0f}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lcsc", "mlflow-server", "--config", str(self.cfg_file), "--port", str(self.port)],
            cwd=self.root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 90
        while time.time() < deadline:
            assert self.proc.poll() is None, (self.root / log.name).read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise AssertionError("the MLflow server did not answer within 90 s")

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)


def _api(port: int, path: str, body: dict | None = None) -> dict:
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/{path}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _search(port: int, exp_id: str, filter_string: str) -> list[dict]:
    out = _api(port, "runs/search", {"experiment_ids": [exp_id], "filter": filter_string, "max_results": 1000})
    return out.get("runs", [])


def _tags(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _params(run: dict) -> dict:
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}


def _history(port: int, run: dict, key: str) -> dict[int, float]:
    q = urllib.parse.urlencode({"run_id": run["info"]["run_id"], "metric_key": key, "max_results": 10000})
    out = _api(port, f"metrics/get-history?{q}")
    return {m["step"]: m["value"] for m in out.get("metrics", [])}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    root = tmp_path_factory.mktemp("track")
    port = _free_port()
    base = dict(
        TINY,
        experiment=EXPERIMENT,
        results_dir="results",
        baselines=BASELINES,
        mlflow={"enabled": True, "tracking_uri": f"http://127.0.0.1:{port}"},
    )
    (root / "server.yaml").write_text(yaml.safe_dump(base))
    server = Server(root, root / "server.yaml", port).start()
    runs = {}
    try:
        for name, budget in (("a", 8), ("b", 12)):
            cfg = dict(base, search=dict(TINY["search"], budget=budget))
            (root / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
            res = snakemake(["--cores", "2", "--configfile", f"{name}.yaml", "--directory", str(root)], root)
            assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
            runs[name] = res
        yield root, port, server, base
    finally:
        server.stop()


def test_two_searches_compare_through_the_rest_api(tracked):
    root, port, _, _ = tracked
    exp_id = _api(port, f"experiments/get-by-name?experiment_name={EXPERIMENT}")["experiment"]["experiment_id"]
    parents = _search(port, exp_id, "tags.`lcsc.role` = 'invocation'")
    assert len(parents) == 2 and {p["info"]["status"] for p in parents} == {"FINISHED"}
    searches = _search(port, exp_id, "tags.`lcsc.stage` = 'search'")
    assert sorted(_params(r)["search.budget"] for r in searches) == ["12", "8"]
    # the same metric keys, tags and names, so the UI overlays them
    keys = [{m["key"] for m in r["data"]["metrics"]} for r in searches]
    assert keys[0] == keys[1] and {"fitness", "best_fitness", "rescore_fitness", "seconds"} <= keys[0]
    # named alike but for the invocation, so the comparison view tells them apart
    assert len({r["info"]["run_name"] for r in searches}) == 2
    for r in searches:
        tags = _tags(r)
        assert r["info"]["run_name"] == f"search[model=dm,nfe=2] @{tags['lcsc.invocation']}"
        assert (tags["lcsc.model"], tags["lcsc.nfe"], tags["lcsc.dataset"], tags["lcsc.features"]) == (
            "dm",
            "2",
            "digits12",
            "classifier",
        )
        assert len(tags["lcsc.git_commit"]) in (7, 40) or tags["lcsc.git_commit"] == "unknown"
        assert tags["lcsc.logged"] == "complete"
        assert len(_history(port, r, "fitness")) >= STARTS + int(_params(r)["search.budget"])
    budgets = {_params(r)["search.budget"]: _tags(r)["lcsc.config_hash"] for r in searches}
    assert budgets["8"] != budgets["12"]
    # FID by NFE for every variant; lcsc once per invocation (the second search reran it)
    evaluations = _search(port, exp_id, "tags.`lcsc.stage` = 'evaluate'")
    by_variant: dict[str, list] = {}
    for r in evaluations:
        by_variant.setdefault(_tags(r)["lcsc.variant"], []).append(r)
        assert _history(port, r, "fid").keys() == {1, 2}
        assert _tags(r)["lcsc.nfe"] == "1,2" and _params(r)["evaluate.samples"] == "96"
        assert r["info"]["status"] == "FINISHED" and _tags(r)["lcsc.logged"] == "complete"
    assert set(by_variant) == set(VARIANTS)
    # the evaluations were short jobs: they wrote records only, and the workflow logged them at its end
    records = [json.loads(p.read_text()) for p in (root / "results" / EXPERIMENT / "tracking").glob("*/*.json")]
    assert {r["name"].split("[")[0] for r in records if r.get("deferred")} == {
        "train_features",
        "reference_stats",
        "baselines",
        "evaluate",
        "export",
    }
    assert not any(r.get("deferred") for r in records if r["name"].startswith(("train_dm", "search", "tabulate")))
    lcsc = _search(port, exp_id, "tags.`lcsc.stage` = 'evaluate' and tags.`lcsc.variant` = 'lcsc'")
    assert len(lcsc) == 2
    latest = max(lcsc, key=lambda r: r["info"]["start_time"])
    on_disk = json.loads((root / "results" / EXPERIMENT / "dm" / "eval" / "lcsc.json").read_text())["fid"]
    assert _history(port, latest, "fid") == pytest.approx({int(k): v for k, v in on_disk.items()})
    # every child hangs under its invocation's parent
    parent_ids = {p["info"]["run_id"] for p in parents}
    children = _search(port, exp_id, "tags.`lcsc.stage` LIKE '%'")
    assert children and all(_tags(r).get("mlflow.parentRunId") in parent_ids for r in children)


def test_server_killed_mid_run_loses_nothing_and_sync_restores_the_runs(tracked):
    from lcsc.kernel import tracking

    root, port, server, base = tracked
    cfg = dict(base, search=dict(TINY["search"], budget=10))
    (root / "c.yaml").write_text(yaml.safe_dump(cfg))
    exp_id = _api(port, f"experiments/get-by-name?experiment_name={EXPERIMENT}")["experiment"]["experiment_id"]
    earlier = {r["info"]["run_id"] for r in _search(port, exp_id, "attributes.status != 'x'")}
    killed = threading.Event()

    def kill_while_the_search_logs():
        """SIGKILL the server once the new search run exists and is still running: that run is
        left logged in part, and every job after it finds no server."""
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                runs = _search(port, exp_id, "tags.`lcsc.stage` = 'search' and attributes.status = 'RUNNING'")
            except OSError:
                runs = []
            if any(r["info"]["run_id"] not in earlier for r in runs):
                server.stop(signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.1)

    started = time.time()
    killer = threading.Thread(target=kill_while_the_search_logs)
    killer.start()
    res = snakemake(["--cores", "2", "--configfile", "c.yaml", "--directory", str(root)], root)
    killer.join()
    assert killed.is_set(), "the search run never showed up while running"
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-5000:]
    # nothing lost on disk: the new search and its evaluation are there
    history = (root / "results" / EXPERIMENT / "dm" / "search" / "nfe2" / "history.csv").read_text()
    assert sum(1 for line in history.splitlines()[1:] if ",search," in line) == 10
    assert (root / "results" / EXPERIMENT / "report" / "summary.md").exists()
    # the jobs after the kill said so, each once, with how to recover
    logs = [p for p in (root / "results" / EXPERIMENT / "logs").rglob("*.log") if p.stat().st_mtime > started]
    counts = {p.name: p.read_text().count("logging is off for this job") for p in logs}
    assert max(counts.values()) == 1 and sum(counts.values()) >= 2, counts  # search and tabulate at least
    # each says how to recover (the job's own output is in its log, not on Snakemake's console)
    assert all("mlflow-sync" in line for p in logs for line in p.read_text().splitlines() if "logging is off" in line)
    records = sorted((root / "results" / EXPERIMENT / "tracking").glob("*/*.json"))
    invocation = max({p.parent.name for p in records})
    mine = {p.stem: json.loads(p.read_text()) for p in records if p.parent.name == invocation}
    assert {"parent", "search[model=dm,nfe=2]", "evaluate[model=dm,variant=lcsc]", "tabulate"} <= set(mine)
    assert len(mine) == len(logs) + 1  # one record per job that ran, and the parent

    server.start()
    mine_filter = f"tags.`lcsc.invocation` = '{invocation}'"
    before = [r for r in _search(port, exp_id, mine_filter) if _tags(r).get("lcsc.logged") == "complete"]
    assert len(before) < len(mine)  # the kill left runs missing or logged in part
    sync = [sys.executable, "-m", "lcsc", "mlflow-sync", "--config", "c.yaml"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LCSC_"))}
    first = subprocess.run(sync, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    # the search logged in part was replaced, the parent (whose end the dead server missed)
    # completed in place, the jobs after the kill created; the earlier invocations untouched
    done = re.search(r"(\d+) runs created, (\d+) logged in part replaced, (\d+) parents completed", first.stdout)
    created, replaced, completed = map(int, done.groups())
    assert replaced >= 1 and completed == 1 and created >= 2, first.stdout
    survivors = {r["info"]["run_id"] for r in _search(port, exp_id, "attributes.status != 'x'")}
    assert earlier <= survivors
    after = _search(port, exp_id, mine_filter)
    assert sorted(tracking.job_name(r["info"]["run_name"]) for r in after) == sorted(
        rec["name"] for rec in mine.values()
    )
    assert all(_tags(r)["lcsc.logged"] == "complete" for r in after)
    parent = next(r for r in after if _tags(r).get("lcsc.role") == "invocation")
    assert parent["info"]["status"] == "FINISHED"
    for r in after:
        if r is not parent:
            assert _tags(r)["mlflow.parentRunId"] == parent["info"]["run_id"]
            assert r["info"]["status"] == "FINISHED"
    search = next(r for r in after if tracking.job_name(r["info"]["run_name"]) == "search[model=dm,nfe=2]")
    recorded = {m[3]: m[1] for m in mine["search[model=dm,nfe=2]"]["metrics"] if m[0] == "fitness"}
    assert _history(port, search, "fitness") == pytest.approx(recorded) and len(recorded) == STARTS + 10
    assert _params(search)["search.budget"] == "10"
    # idempotent: a second sync creates and replaces nothing, and the run count stays
    total = len(_search(port, exp_id, "attributes.status != 'x'"))
    second = subprocess.run(sync, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "0 runs created, 0 logged in part replaced, 0 parents completed" in second.stdout
    assert len(_search(port, exp_id, "attributes.status != 'x'")) == total


def test_sync_removes_duplicates_reattaches_orphans_and_skips_other_stores(tmp_path, monkeypatch):
    """In process, on a SQLite store: a child logged while the parent could not be created keeps
    no parent; an HTTP retry left a second, partial run under the same key; a record made for
    another store sits beside them. Sync fixes the first two and leaves the third alone."""
    from mlflow.tracking import MlflowClient

    from conftest import tiny_config
    from lcsc.kernel import tracking
    from lcsc.stages import stage_config

    cfg = tiny_config(tmp_path / "results", experiment="sync-unit", mlflow={"enabled": True})
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    invocation, parent_id = tracking.start_parent(cfg)
    assert parent_id
    monkeypatch.setenv(tracking.INVOCATION_ENV, invocation)  # but no parent id: an orphan child
    with tracking.StageRun(cfg, "search", {"model": "dm", "nfe": "2"}, stage_config(cfg, "search")) as run:
        run.log_metrics({"fitness": 3.0}, step=0)
        run.log_metrics({"fitness": 2.0}, step=1)
    tracking.end_parent(cfg, invocation, parent_id, ok=True)
    client = MlflowClient(tracking.tracking_uri(cfg))
    exp_id = client.get_experiment_by_name("sync-unit").experiment_id
    child_key = f"{invocation}/search[model=dm,nfe=2]"
    assert "mlflow.parentRunId" not in client.get_run(run.run_id).data.tags
    client.create_run(exp_id, run_name="search[model=dm,nfe=2]", tags={"lcsc.run_key": child_key})  # the twin
    record = tracking.record_path(cfg, invocation, "search[model=dm,nfe=2]")
    foreign = json.loads(record.read_text()) | {"tracking_uri": "http://elsewhere:5000", "key": "other/x"}
    (record.parent.parent / "other").mkdir()
    (record.parent.parent / "other" / "x.json").write_text(json.dumps(foreign))

    for _ in range(2):  # the second sync finds nothing to do
        counts = tracking.sync(cfg)
        assert counts == {
            "records": 3,
            "created": 0,
            "replaced": 0,
            "completed": 0,
            "complete": 2,
            "skipped": 1,
            "failed": 0,
            "killed": 0,
            "registered": 0,
        }
        runs = client.search_runs([exp_id], filter_string=f"tags.`lcsc.run_key` = '{child_key}'")
        assert [r.info.run_id for r in runs] == [run.run_id]  # the partial twin is gone
        assert runs[0].data.tags["mlflow.parentRunId"] == parent_id  # re-attached
        assert [m.value for m in client.get_metric_history(run.run_id, "fitness")] == [3.0, 2.0]
    assert len(client.search_runs([exp_id], filter_string="tags.`lcsc.run_key` LIKE 'other%'")) == 0
