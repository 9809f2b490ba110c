"""A job's phases (lcsc/kernel/jobtime.py), the figures bench/pipeline.py adds up."""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_a_job_writes_its_phases_and_they_add_up(trained, tmp_path):
    from helpers import trained_paths

    cfg, cfg_file = trained
    features = trained_paths(cfg)[1]
    times = tmp_path / "times.jsonl"
    env = dict(os.environ, LCSC_JOB_TIMES=str(times))
    for _ in range(2):  # one line per job, appended
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "lcsc",
                "reference-stats",
                "--config",
                str(cfg_file),
                "--split",
                "train",
                "--features",
                str(features),
                "--out",
                str(tmp_path / "s.npz"),
                "--grid",
                str(tmp_path / "g.png"),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in times.read_text().splitlines()]
    assert len(lines) == 2
    for line in lines:
        assert (line["stage"], line["job"], line["exit"]) == ("reference-stats", "reference_stats", 0)
        assert all(line[k] >= 0 for k in ("start", "imports", "mlflow", "work"))
        assert line["start"] + line["imports"] + line["mlflow"] + line["work"] == pytest.approx(line["total"])
        assert line["imports"] > 0.2 and line["mlflow"] < 0.5  # torch is imported; MLflow is off (tiny config)
        if sys.platform.startswith("linux"):  # the process's own start time, from /proc
            assert line["start"] > 0


def test_bench_prints_the_overhead_share(tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
    import pipeline

    lines = [
        {
            "stage": "evaluate",
            "job": "evaluate[model=dm,variant=last]",
            "start": 1,
            "imports": 2,
            "mlflow": 3,
            "work": 14,
            "total": 20,
        },
        {
            "stage": "search",
            "job": "search[model=dm,nfe=5]",
            "start": 1,
            "imports": 2,
            "mlflow": 1,
            "work": 76,
            "total": 80,
        },
    ]
    text = pipeline.table(lines, wall=60.0)
    assert "| evaluate | 1 | 1.0 | 2.0 | 3.0 | 14.0 | 20.0 | 30% |" in text
    assert "| **all** | 2 | 2.0 | 4.0 | 4.0 | 90.0 | 100.0 | 10% |" in text
    assert "10.0 s of 100.0 s of job time (10.0%)" in text
