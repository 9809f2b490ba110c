"""One writer per results folder (lcsc.kernel.lock): the lock names its holder, a live holder is
refused, a stale one (its process gone from this host) is taken over with a warning, and a stage
run by hand writes only when no other invocation holds the folder."""

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import tiny_config
from helpers import check_one_line
from lcsc.cli import main
from lcsc.kernel import lock
from lcsc.kernel.errors import BusyError


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.delenv(lock.INVOCATION_ENV, raising=False)
    yield tiny_config(tmp_path / "results")
    lock.release()


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def _write(cfg, **holder):
    path = lock.lock_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_started": None,
        "invocation": "other",
        "started": "2026-12-01 10:00:00",
        "cwd": "/somewhere",
        "token": "t",
    }
    path.write_text(json.dumps(base | holder))
    return path


def test_the_lock_names_its_holder_and_is_released(cfg):
    path = lock.acquire(cfg, "inv-1")
    holder = json.loads(path.read_text())
    assert holder["invocation"] == "inv-1" and holder["pid"] == os.getpid()
    assert holder["host"] == socket.gethostname() and holder["cwd"] == os.getcwd()
    with pytest.raises(BusyError, match=r"in use by invocation inv-1 \(host .*, pid \d+, since .*, working directory"):
        lock.acquire(cfg, "inv-2")
    lock.release()
    assert not path.exists()
    lock.acquire(cfg, "inv-2")  # free again


def test_a_live_holder_is_refused_and_keeps_its_lock(cfg):
    path = _write(cfg)  # this very process, under another invocation
    with pytest.raises(BusyError, match="in use by invocation other"):
        lock.acquire(cfg, "mine")
    assert json.loads(path.read_text())["invocation"] == "other"
    lock.release()  # not ours: left in place
    assert path.exists()


def test_a_holder_on_another_host_cannot_be_checked_and_is_refused(cfg):
    _write(cfg, host="some-other-node", pid=_dead_pid())
    with pytest.raises(BusyError, match="host some-other-node.*delete"):
        lock.acquire(cfg, "mine")


def test_a_stale_lock_is_taken_over_with_a_warning(cfg, capsys):
    _write(cfg, pid=_dead_pid(), invocation="killed")
    path = lock.acquire(cfg, "mine")
    assert json.loads(path.read_text())["invocation"] == "mine"
    assert "taking over the lock of invocation killed" in capsys.readouterr().err


def test_a_reused_pid_is_no_holder(cfg, capsys):
    """The recorded pid runs, but it is another process (it started at another time)."""
    _write(cfg, pid=os.getpid(), pid_started=1.0, invocation="long-gone")
    lock.acquire(cfg, "mine")
    assert "taking over the lock of invocation long-gone" in capsys.readouterr().err


def test_a_damaged_lock_file_is_refused_with_its_name(cfg):
    path = lock.lock_path(cfg)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(BusyError, match="lcsc.lock: a lock file that is not lcsc's"):
        lock.acquire(cfg, "mine")


def test_a_stage_by_hand_does_not_write_under_a_live_invocation(cfg, tmp_path, monkeypatch, capsys):
    import yaml

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    _write(cfg, invocation="running")
    check_one_line(
        main(["train-dm", "--config", str(config)]),
        capsys.readouterr().err,
        "train-dm",
        ["lcsc.lock", "in use by invocation running", "wait for that invocation to end"],
    )
    assert not (tmp_path / "results" / "tiny" / "dm").exists()
    # a job of that invocation (it carries its id) writes; so does anyone once the holder is gone
    monkeypatch.setenv(lock.INVOCATION_ENV, "running")
    lock.check_writer(cfg)
    monkeypatch.delenv(lock.INVOCATION_ENV)
    _write(cfg, invocation="running", pid=_dead_pid())
    lock.check_writer(cfg)
