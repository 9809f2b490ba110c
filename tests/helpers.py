"""Small helpers several test files share (no test file imports another): running a stage or
Snakemake, the tiny trainings, the bad-input workshop, image folders and the session trail's paths."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from torch import nn

from lcsc.kernel.families.diffusion import VPDiffusion
from lcsc.kernel.io import write_json
from lcsc.kernel.nets import build_unet
from lcsc.kernel.paths import Layout, dataset_name, search_files
from lcsc.kernel.training import train
from lcsc.stages import search

REPO = Path(__file__).resolve().parent.parent


def search_in(
    cfg: dict, manifest, features, stats, out_dir, device, stage_run=None, baselines=None, model: str = "dm"
) -> dict:
    """The search stage with its outputs in `out_dir` (as `lcsc search --out-dir` lays them out)."""
    files = search_files(out_dir)
    paths = search.Paths(
        manifest=Path(manifest),
        features=Path(features),
        stats=Path(stats),
        baselines=Path(baselines) if baselines else None,
        **files,
    )
    return search.run(cfg, paths, model, device, stage_run)


def trained_paths(cfg):
    """The session trail's manifest, feature network and reference stats (the `trained` fixture's)."""
    layout = Layout.of(cfg)
    return (
        layout.manifest("dm"),
        layout.feature_net("classifier"),
        layout.stats(dataset_name(cfg["data"]), "train", "classifier"),
    )


# what the baselines stage scores on the tiny config, and every variant evaluate compares
BASELINES = [
    "last",
    "uniform",
    "lawa_2",
    "ema_0.9_profile",
    "ema_0.99_profile",
    "power_0.05",
    "power_0.1",
    "greedy_soup",
]
VARIANTS = ["last", "ema_0.9", "ema_0.99", *BASELINES[1:], "lcsc"]


class Counting(nn.Module):
    """A network that counts its calls."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x, t):
        self.calls += 1
        return self.net(x, t)


def train_tiny(cfg, out_dir, iterations):
    """A DM trail of `iterations` steps on 50 random 8x8 images (its manifest)."""
    train_cfg = dict(cfg["train"], iterations=iterations)
    torch.manual_seed(cfg["seed"])
    model = build_unet(cfg["model"], 1)
    data = torch.rand(50, 1, 8, 8) * 2 - 1
    return train(
        model,
        VPDiffusion().loss,
        data,
        train_cfg,
        out_dir,
        seed=cfg["seed"],
        device=torch.device("cpu"),
        manifest_extra={"kind": "dm", "model_config": cfg["model"]},
    )


def cm_config(tmp_path, **consistency):
    """The tiny config with both consistency models."""
    from conftest import tiny_config

    return tiny_config(tmp_path / "results", consistency={"modes": ["cd", "ct"], **consistency})


def trail_hashes(manifest):
    """(step, sha256) of every checkpoint a manifest lists."""
    return [(c["step"], c["sha256"]) for c in json.loads(manifest.read_text())["checkpoints"]]


SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(args, cwd, timeout=600):
    """This checkout's Snakefile, run with `args` in `cwd`, with no MLflow or lcsc settings from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LCSC_"))}
    return subprocess.run(
        [*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class Ctx:
    """A bad input's workshop: a private copy of the config (its results in tmp) and of any file a
    row corrupts; the session's trained trail, features and stats are only ever read."""

    tmp: Path
    cfg: dict  # the trained config, results_dir moved into tmp
    shared: Layout

    @property
    def manifest(self) -> Path:
        return self.shared.manifest("dm")

    @property
    def features(self) -> Path:
        return self.shared.feature_net("classifier")

    @property
    def stats(self) -> Path:
        return self.shared.stats(dataset_name(self.cfg["data"]), "train", "classifier")

    def config(self, name: str = "ok.yaml", **dotted) -> str:
        """The config as a YAML file, with `dotted` keys (`train__lr` for train.lr) set."""
        cfg = copy.deepcopy(self.cfg)
        for key, value in dotted.items():
            *parents, last = key.split("__")
            node = cfg
            for p in parents:
                node = node[p]
            node[last] = value
        path = self.tmp / name
        path.write_text(yaml.safe_dump(cfg))
        return str(path)

    def write(self, name: str, data: str | bytes) -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return str(path)

    def trail(self) -> Path:
        """A private copy of the trained trail; its manifest's path."""
        dst = self.tmp / "trail"
        shutil.copytree(self.manifest.parent, dst)
        return dst / "manifest.json"

    def edit_manifest(self, edit) -> str:
        manifest = self.trail()
        data = json.loads(manifest.read_text())
        edit(data, manifest.parent)
        write_json(manifest, data)
        return str(manifest)

    def truncated_copy(self, src: Path, name: str, keep: float = 0.5) -> str:
        data = Path(src).read_bytes()
        return self.write(name, data[: int(len(data) * keep)])

    def search(self, *extra, manifest=None, features=None, stats=None, config=None) -> list[str]:
        return [
            "search",
            "--config",
            config or self.config(),
            "--manifest",
            str(manifest or self.manifest),
            "--features",
            str(features or self.features),
            "--stats",
            str(stats or self.stats),
            "--out-dir",
            str(self.tmp / "search"),
            *extra,
        ]

    def evaluate(self, variant="last", *extra, manifest=None, features=None, stats=None) -> list[str]:
        return [
            "evaluate",
            "--config",
            self.config(),
            "--variant",
            variant,
            "--manifest",
            str(manifest or self.manifest),
            "--features",
            str(features or self.features),
            "--stats",
            str(stats or self.stats),
            "--out",
            str(self.tmp / "e.json"),
            "--grid",
            str(self.tmp / "e.png"),
            *extra,
        ]


def check_one_line(rc: int, err: str, stage: str | None, needles) -> str:
    """The error is one line; config warnings (`lcsc: warning: ...`), printed before, are apart."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("lcsc: warning: ")]
    assert "Traceback" not in err, err
    assert rc == 2, err
    assert len(lines) == 1, err
    prefix = f"lcsc {stage}: " if stage else "lcsc: "
    assert lines[0].startswith(prefix), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def table_case(build, workshop, capsys) -> str:
    """One row of a bad-input table: `build(workshop)` gives (argv, needles); `lcsc` on argv must
    fail with one line holding every needle. The line."""
    from lcsc.cli import main

    argv, needles = build(workshop)
    capsys.readouterr()
    rc = main(argv)
    return check_one_line(rc, capsys.readouterr().err, argv[0], needles)


def write_folder(folder, n, size, seed, grey=False):
    """n random images (blobs on a gradient, with pixel noise), as clean-fid would read them from disk."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        img = np.zeros((size, size, 3))
        for c in range(3):
            cx, cy, w = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.3)
            img[..., c] = rng.uniform(0, 1) * xx + np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / w)
        img += rng.uniform(0, 0.4) * rng.random((size, size, 3))  # pixel-level texture
        arr = (np.clip(img / img.max(), 0, 1) * 255).astype(np.uint8)
        Image.fromarray(arr[..., 0] if grey else arr, "L" if grey else "RGB").save(folder / f"{i:03d}.png")
    return folder


def read_folder(folder):
    """The images as the pipeline holds samples: float in [-1, 1], grey as one channel."""
    out = []
    for path in sorted(folder.glob("*.png")):
        arr = np.asarray(Image.open(path), dtype=np.float32)
        out.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out)) / 127.5 - 1


def sd_config(sd_run, tmp_path, folder=None, **trail):
    """The session's config with the state-dict trail as its source (results in tmp_path)."""
    cfg, run, code, factory = sd_run
    cfg = copy.deepcopy(cfg)
    manifest = json.loads(trained_paths(cfg)[0].read_text())
    cfg["results_dir"] = str(tmp_path / "results")
    cfg["trail"] = {
        "source": "state_dict",
        "path": str(folder or run),
        "key": "state_dict",
        "prefix": "module.",
        "ema": "ema_*.pt",
        "ema_decay": 0.99,
        "factory": factory,
        "code": str(code),
        "factory_kwargs": manifest["model_config"],
        **trail,
    }
    path = tmp_path / "imported.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return cfg, str(path)


def like_a_terminal() -> None:
    """preexec_fn of a process a test interrupts: SIGINT and SIGTERM as a terminal's foreground job
    has them (a test run started in the background of a script, or under nohup, passes SIGINT on
    ignored, and lcsc, like every POSIX program, then leaves it ignored); and SIGTERM when the test
    process dies, so that a test run stopped midway leaves no process behind."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


_prctl = __import__("ctypes").CDLL(None).prctl  # looked up here, in the test process, not after a fork


def hold_when(proc: subprocess.Popen, condition, timeout: float, what: str, group: bool = False) -> None:
    """Let `proc` (with `group`, its whole process group) run in short slices, held by SIGSTOP
    between them, until `condition()` holds while it is held. It is left held at a point where
    the condition is true, whatever the machine's speed or load: a signal sent now arrives before
    it takes another step (SIGCONT lets it go on)."""
    import psutil

    def send(sig):
        (os.killpg if group else os.kill)(proc.pid, sig)

    def members():
        root = psutil.Process(proc.pid)
        return [root, *(root.children(recursive=True) if group else [])]

    deadline = time.time() + timeout
    while True:
        send(signal.SIGSTOP)
        for member in members():
            # stopped; or in the kernel (disk-sleep: a vfork parent whose child is stopped, or I/O
            # that ends in the stop), where it takes no step of its own either
            try:
                while member.status() in (psutil.STATUS_RUNNING, psutil.STATUS_SLEEPING, psutil.STATUS_WAKING):
                    time.sleep(0.001)
            except psutil.NoSuchProcess:
                pass
        if proc.poll() is not None:
            raise AssertionError(f"the process ended (code {proc.returncode}) before {what}")
        if condition():
            return
        send(signal.SIGCONT)
        if time.time() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.05)  # a slice far shorter than what is left of the work the tests hold


def run_card_snippet(out: Path) -> dict:
    """The export's model card's loading snippet, run as written in the export folder; its names."""
    card = (out / "README.md").read_text()
    snippet = card.split("## Load it")[1].split("```python\n")[1].split("```")[0]
    here = os.getcwd()
    try:
        os.chdir(out)
        scope: dict = {"__snippet__": snippet}
        exec(compile(snippet, "card", "exec"), scope)
    finally:
        os.chdir(here)
    return scope
