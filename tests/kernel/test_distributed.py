"""Training on several processes (train.gpus; gloo processes on the CPU here): the steps of one
process on the whole batch, the trail written once by rank 0, a SIGKILLed run resuming, and Ctrl-C
or a failing process ending the launch with one line."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import yaml

from conftest import REPO, tiny_config
from helpers import check_one_line, hold_when, like_a_terminal, trail_hashes
from lcsc.kernel.distributed import Ranks
from lcsc.kernel.errors import ConfigError
from lcsc.kernel.families.diffusion import VPDiffusion
from lcsc.kernel.nets import build_unet
from lcsc.kernel.tensors import load_tensors
from lcsc.kernel.trail import Trail
from lcsc.kernel.training import train

pytestmark = pytest.mark.slow  # every test starts several processes

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
LAUNCH = [sys.executable, "-m", "lcsc.launch", "2"]  # torchrun as the training rules call it
MODEL = {"channels": 8, "channel_mult": [1, 2], "attention": True, "num_res_blocks": 1, "dropout": 0.0}
TRAIN = {
    "iterations": 12,
    "checkpoint_every": 4,
    "batch_size": 16,
    "log_every": 4,
    "ema_decays": [0.9],
    "warmup": 3,
    "lr": 1e-3,
    "grad_clip": 1.0,
}
# The kernel's loop in float64, in each of torchrun's processes or alone: rounding is then far
# below what the comparison looks at, and any other difference (a batch, a noise draw, a
# gradient left unaveraged) would show as a gap of the size of a training step.
KERNEL = textwrap.dedent("""
    import sys, torch
    from lcsc.kernel import distributed
    from lcsc.kernel.families.diffusion import VPDiffusion
    from lcsc.kernel.nets import build_unet
    from lcsc.kernel.training import train

    torch.set_default_dtype(torch.float64)
    model_cfg, train_cfg, out = eval(sys.argv[1]), eval(sys.argv[2]), sys.argv[3]
    ranks, device = distributed.start({"device": "cpu", "train": train_cfg})
    torch.manual_seed(0)
    data = torch.rand(40, 1, 8, 8) * 2 - 1
    model = build_unet(model_cfg, 1)
    train(model, VPDiffusion().loss, data, train_cfg, out, seed=3, device=device, manifest_extra={},
          ranks=ranks)
    distributed.stop()
""")


def _kernel(tmp_path, out, launcher):
    script = tmp_path / "kernel.py"
    script.write_text(KERNEL)
    done = subprocess.run(
        [*launcher, str(script), repr(MODEL), repr(TRAIN), str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return Trail.open(out / "manifest.json")


def _max_gap(a: Trail, b: Trail, i: int) -> float:
    x, y = load_tensors(a.checkpoint_path(i)), load_tensors(b.checkpoint_path(i))
    assert x.keys() == y.keys()
    return max((x[k] - y[k]).abs().max().item() for k in x)


def test_two_gloo_processes_take_the_steps_of_one_process_on_the_whole_batch(tmp_path):
    one = _kernel(tmp_path, tmp_path / "one", [sys.executable])
    two = _kernel(tmp_path, tmp_path / "two", TORCHRUN)
    assert one.steps == two.steps == [4, 8, 12]
    for i in range(3):
        # float64: 1e-12 (measured: 1e-14 to 1e-13); one training step moves weights by about lr = 1e-3
        assert _max_gap(one, two, i) < 1e-12
    a, b = load_tensors(one.ema_paths()[0.9]), load_tensors(two.ema_paths()[0.9])
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-12
    for ca, cb in zip(one.manifest["checkpoints"], two.manifest["checkpoints"]):
        assert cb["loss"] == pytest.approx(ca["loss"], rel=1e-12)
    # rank 0 alone wrote: the files of one trail, no second copy, no temporary left
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def test_a_batch_that_does_not_split_over_the_processes_is_refused():
    with pytest.raises(ConfigError, match=r"train.batch_size: 10 images per step do not split evenly over 4"):
        train(
            build_unet(MODEL, 1),
            VPDiffusion().loss,
            torch.rand(8, 1, 8, 8),
            dict(TRAIN, batch_size=10),
            "unused",
            seed=0,
            device=torch.device("cpu"),
            manifest_extra={},
            ranks=Ranks(0, 4),
        )
    assert Ranks(1, 4).part(32) == slice(8, 16) and Ranks().part(32) == slice(0, 32)


def _config(tmp_path, name):
    cfg = tiny_config(
        tmp_path / name, train={"iterations": 60, "checkpoint_every": 10, "gpus": 2}, baselines={"lawa_last": [2]}
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _trail(tmp_path, name):
    return tmp_path / name / "tiny" / "dm" / "trail"


@pytest.fixture(scope="module")
def through_torchrun(tmp_path_factory):
    """`lcsc.launch 2 train-dm` with train.gpus 2, as the rule runs it, and `lcsc train-dm` alone."""
    tmp = tmp_path_factory.mktemp("ddp")
    runs = {}
    for name, launcher in (("two", LAUNCH), ("one", [sys.executable, "-m", "lcsc"])):
        done = subprocess.run(
            [*launcher, "train-dm", "--config", str(_config(tmp, name)), "--threads", "2"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        runs[name] = done.stdout + done.stderr
    return tmp, runs


def test_the_cli_under_torchrun_trains_the_trail_of_one_process(through_torchrun):
    tmp, logs = through_torchrun
    one, two = (Trail.open(_trail(tmp, n) / "manifest.json") for n in ("one", "two"))
    assert one.steps == two.steps == list(range(10, 61, 10))
    # float32 (measured on 2 CPU cores: 3e-5 after 10 steps, 1e-3 after 60; float64 above is 1e-13):
    # the rounding of the gradient's sums in another order, carried along by Adam's steps of about
    # lr = 1e-3 each; a wrong batch or noise draw would differ by about that from the first step on
    assert _max_gap(one, two, 0) < 2e-4
    assert _max_gap(one, two, 5) < 5e-3
    for ca, cb in zip(one.manifest["checkpoints"], two.manifest["checkpoints"]):
        assert cb["loss"] == pytest.approx(ca["loss"], rel=1e-5)  # measured: 1e-8
    # one stage line for the two processes, which says so; one progress bar
    assert logs["two"].count("[train_dm] ") == 1 and "2 processes (gloo)" in logs["two"]
    assert logs["two"].count("60/60") == logs["one"].count("60/60") >= 1


def test_a_sigkilled_run_on_two_processes_resumes_to_the_same_trail(through_torchrun, tmp_path):
    tmp, _ = through_torchrun
    config = _config(tmp_path, "killed")
    cmd = [*LAUNCH, "train-dm", "--config", str(config), "--threads", "2"]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )  # the launcher and its two workers: one process group
    trail = _trail(tmp_path, "killed")
    hold_when(
        proc,
        lambda: len(list(trail.glob("step_*.safetensors"))) >= 2 and not (trail / "manifest.json").exists(),
        300,
        "the second checkpoint",
        group=True,
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step" in resumed.stdout
    # the same bytes as the uninterrupted two-process run
    assert trail_hashes(trail / "manifest.json") == trail_hashes(_trail(tmp, "two") / "manifest.json")
    assert not list(trail.glob("*.tmp"))


def test_ctrl_c_and_a_failing_process_end_the_launch_with_one_line(tmp_path):
    config = _config(tmp_path, "stopped")
    cmd = [*LAUNCH, "train-dm", "--config", str(config), "--threads", "2"]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=like_a_terminal,
    )
    trail = _trail(tmp_path, "stopped")
    hold_when(
        proc,
        lambda: any(trail.glob("step_*.safetensors")) and not (trail / "manifest.json").exists(),
        300,
        "the first checkpoint",
        group=True,
    )
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the terminal's whole process group
    os.killpg(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    # the launcher's own line, after the processes' (each says it was interrupted)
    assert err.rstrip().splitlines()[-1].startswith("lcsc train-dm: interrupted"), err[-3000:]
    assert err.rstrip().endswith("on 2 processes; rerun the same command to resume"), err[-3000:]
    # a bad config is refused once, before any process starts: one line, not one per process
    bad = subprocess.run(
        [*cmd, "--set", "data.dataset=folder", "--set", f"data.folder={tmp_path / 'none'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    check_one_line(bad.returncode, bad.stderr, "train-dm", [f"data.folder: {tmp_path / 'none'}"])
    # a process that fails as it runs (an image folder with no images) ends the launch with its exit
    # code and one line; the processes' own message shows once
    (tmp_path / "empty").mkdir()
    bad = subprocess.run(
        [
            *cmd,
            "--set",
            "data.dataset=folder",
            "--set",
            f"data.folder={tmp_path / 'empty'}",
            "--set",
            "features.kind=autoencoder",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2, bad.stderr[-3000:]
    lines = [line for line in bad.stderr.splitlines() if line.startswith("lcsc train-dm: ")]
    assert "Traceback" not in bad.stderr and len(lines) == 2, bad.stderr[-3000:]
    assert str(tmp_path / "empty") in lines[0], bad.stderr[-3000:]
    assert lines[1] == "lcsc train-dm: training process 0 of 2 failed (exit code 2); its message is above"


def test_the_launcher_checks_the_processes_against_the_node_before_starting_any(tmp_path):
    config = _config(tmp_path, "many")
    cores = len(os.sched_getaffinity(0))
    done = subprocess.run(
        [*LAUNCH[:-1], str(cores + 1), "train-dm", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    check_one_line(
        done.returncode,
        done.stderr,
        "train-dm",
        [f"{cores + 1} training processes, but this node has {cores} CPU cores"],
    )
    assert not _trail(tmp_path, "many").exists()
    for bad in (["0", "train-dm"], ["1000000000", "train-dm"], ["2"], ["x", "train-dm"]):
        done = subprocess.run([*LAUNCH[:-1], *bad], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and done.stderr.startswith("usage: python -m lcsc.launch"), done.stderr


def test_a_process_that_cannot_be_started_stops_those_started_before_it(tmp_path, monkeypatch, capsys):
    """The second process cannot be created (as when the node is out of processes or memory): the
    launch ends with one line, and the first process, already running, is gone."""
    import subprocess as sp

    from lcsc import launch

    started = []
    real = sp.Popen

    def popen(*args, **kwargs):
        if started:
            raise OSError(11, "Resource temporarily unavailable")
        started.append(real(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(launch.subprocess, "Popen", popen)
    config = _config(tmp_path, "nofork")
    code = launch.main(["2", "train-dm", "--config", str(config)])
    err = capsys.readouterr().err
    check_one_line(
        code, err, "train-dm", ["could not start training process 1 of 2 (Resource temporarily unavailable)"]
    )
    assert started and started[0].poll() is not None  # reaped, not left running


def test_processes_die_with_a_launcher_killed_outright(tmp_path):
    """SIGKILL to the launcher alone (the OOM killer, say): the kernel ends its processes too."""
    import psutil

    config = _config(tmp_path, "orphans")
    launcher = subprocess.Popen(
        [*LAUNCH, "train-dm", "--config", str(config), "--set", "train.iterations=100000"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        children = []
        while time.time() < deadline and len(children) < 2:
            children = psutil.Process(launcher.pid).children()
            time.sleep(0.05)
        assert len(children) == 2
        launcher.kill()
        launcher.wait()
        gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"{len(alive)} training processes outlived their launcher"
    finally:
        for p in psutil.Process().children(recursive=True):
            p.kill()
