"""Shared fixtures: a tiny config and a tiny trained trail made once per session, the bad-input
workshop over it (`ctx`), and the Inception stand-in with its image folders (`standin`, `folders`)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

import inception_standin
from lcsc.kernel.config import validate
from lcsc.kernel.paths import Layout

REPO = Path(__file__).resolve().parent.parent

TINY = {
    "experiment": "tiny",
    "model": {"channels": 8, "channel_mult": [1, 2]},
    "train": {
        "iterations": 40,
        "checkpoint_every": 10,
        "batch_size": 32,
        "log_every": 5,
        "ema_decays": [0.9, 0.99],
        "warmup": 5,
    },
    # no consistency models unless a test asks for them (consistency={"modes": [...]})
    "consistency": {
        "modes": [],
        "cd": {"teacher": "ema_0.99", "steps": 6},
        "ct": {"s0": 4, "s1": 16},
        "train": {"iterations": 30},
    },
    "features": {"epochs": 3, "dim": 16, "width": 8},
    "baselines": {"lawa_last": [2], "ema_decays": [0.9, 0.99], "power_sigma_rels": [0.05, 0.1]},
    "search": {
        "budget": 8,
        "num_workers": 4,
        "samples": 64,
        "nfe": 2,
        "batch_size": 64,
        "rescore_top": 3,
        "rescore_samples": 128,
    },
    "evaluate": {"nfe": [1, 2], "samples": 96, "batch_size": 96, "grid": 16},
    "mlflow": {"enabled": False},
}


def tiny_config(results_dir: Path, **overrides) -> dict:
    cfg = copy.deepcopy(TINY)
    cfg["results_dir"] = str(results_dir)
    for section, values in overrides.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    return validate(cfg)


# The files that run whole pipelines, longest first. `make test` spreads files over two processes
# (pytest-xdist, --dist loadfile: a file's module fixtures are built once); starting these first
# lets the SLURM test's waits on the scheduler overlap the other pipelines instead of ending the run.
LONG_FILES = ("test_slurm.py", "test_workflow.py", "test_tracking.py", "test_your_own_run.py", "test_module.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONG_FILES.index(name) if name in LONG_FILES else len(LONG_FILES)

    for item in items:  # whole pipelines: `e2e` (and `slurm`); `make test-fast` leaves them out
        if item.path.name in LONG_FILES:
            item.add_marker(pytest.mark.e2e)
        if item.path.name == "test_slurm.py":
            item.add_marker(pytest.mark.slurm)
    items.sort(key=rank)  # stable: the order within each file, and of the other files, is kept


def _threads_per_process() -> int:
    """2 torch threads, or 1 when pytest-xdist's processes already fill the cores: on 2 cores, two
    processes of two threads each took 231 s for four files of stage tests that one thread each ran
    in 143 s (2026-12-07)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return 1 if workers >= (os.cpu_count() or 1) else 2


THREADS = _threads_per_process()
if THREADS == 1:  # the stages the tests start as processes inherit it (torch's default thread count)
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(autouse=True)
def _no_outer_runtime(monkeypatch):
    """A stage called with --config-json reads the run-time keys the workflow sets in the
    environment: none from the shell that runs the tests."""
    monkeypatch.delenv("LCSC_RUNTIME_JSON", raising=False)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _no_open_invocation():
    """A test that starts an invocation in-process leaves it to the test: not to this process's exit."""
    yield
    from lcsc.kernel.tracking import run

    run._OPEN_PARENT.clear()


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny DM trail, feature net and reference stats shared by the stage tests."""
    from lcsc.cli import main

    root = tmp_path_factory.mktemp("trained")
    cfg = tiny_config(root / "results")
    cfg_file = root / "tiny.yaml"
    import yaml

    cfg_file.write_text(yaml.safe_dump(cfg))
    for stage in (["train-dm"], ["train-features"], ["reference-stats", "--split", "train"]):
        assert main([*stage, "--config", str(cfg_file)]) == 0
    return cfg, cfg_file


@pytest.fixture
def ctx(trained, tmp_path):
    """A bad input's workshop (helpers.Ctx) over the session's trained trail, features and stats."""
    from helpers import Ctx

    cfg, _ = trained
    moved = copy.deepcopy(cfg)
    moved["results_dir"] = str(tmp_path / "results")
    return Ctx(tmp_path, moved, Layout.of(cfg))


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """A small stand-in for clean-fid's TorchScript Inception (tests/inception_standin.py)."""
    return inception_standin.build(tmp_path_factory.mktemp("w") / "standin.pt")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two folders of random images: 90 RGB at 16x16, 90 grey at 12x12."""
    from helpers import write_folder

    root = tmp_path_factory.mktemp("img")
    return write_folder(root / "a", 90, 16, seed=1), write_folder(root / "b", 90, 12, seed=2, grey=True)


@pytest.fixture(scope="module")
def sd_run(trained, tmp_path_factory):
    """The session trail as state dicts (the second checkpoint in bfloat16), and the factory's folder."""
    from foreign_trails import state_dict_run, write_factory
    from helpers import trained_paths

    cfg, _ = trained
    root = tmp_path_factory.mktemp("sd")
    run = state_dict_run(
        trained_paths(cfg)[0], root / "my run; 'x'", dtype=lambda i: torch.bfloat16 if i == 1 else None
    )
    factory = write_factory(root / "code")
    return cfg, run, root / "code", factory
