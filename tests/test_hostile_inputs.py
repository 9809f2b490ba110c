"""A results folder or a training run folder is data someone may have sent: nothing in it chooses
code to run, or files outside the folder the config names, and broken weights stop the import.
Every hostile input here is one line on stderr naming the key or file, exit code 2, no traceback,
and runs nothing (a marker file that any code run would create stays absent)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from foreign_trails import diffusers_run
from helpers import Ctx, check_one_line, sd_config, table_case
from lcsc.cli import main
from lcsc.kernel.io import sha256, write_json
from lcsc.kernel.paths import Layout
from lcsc.kernel.tensors import load_tensors, save_tensors

# a module that, if ever imported, leaves MARKER_NAME beside it
EVIL = """from pathlib import Path
Path(__file__).with_name("MARKER").touch()


def make(**kwargs):
    Path(__file__).with_name("MARKER").touch()
"""


@pytest.fixture(scope="module")
def sd_imported(sd_run, tmp_path_factory):
    """The session trail as a state-dict run, imported: (config dict, config file, manifest)."""
    root = tmp_path_factory.mktemp("sd-imported")
    cfg, config = sd_config(sd_run, root)
    assert main(["import-trail", "--config", config]) == 0
    return cfg, config, Layout.of(cfg).manifest("imported")


@pytest.fixture(scope="module")
def diff_imported(tmp_path_factory):
    """A small diffusers training run, imported: (config dict, config file, manifest, run folder)."""
    root = tmp_path_factory.mktemp("diff-imported")
    run = diffusers_run(root / "run", steps=20, every=10)
    cfg = {
        "experiment": "hostile",
        "results_dir": str(root / "results"),
        "data": {"image_size": 12},
        "trail": {"source": "diffusers", "path": str(run), "ema": "unet_ema", "ema_decay": 0.6897},
        "baselines": {"lawa_last": []},
        "mlflow": {"enabled": False},
    }  # EMAModel's decay after 20 steps
    config = root / "diff.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["import-trail", "--config", str(config)]) == 0
    return cfg, str(config), Layout(cfg["results_dir"], "hostile").manifest("imported"), run


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory):
    """A folder on a file system with no space left (a 256 KiB tmpfs, filled)."""
    folder = tmp_path_factory.mktemp("full")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); the disk-full cases need root")
    try:
        with open(folder / "filler", "wb", buffering=0) as fh:
            try:
                while True:
                    fh.write(b"\0" * 4096)
                    fh.flush()
            except OSError:
                pass
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@dataclass
class Hostile:
    """The workshop of one hostile input: its own folder, the session's lcsc trail (ctx), and the
    imported state-dict and diffusers trails (only ever read; edits go to copies in `tmp`)."""

    tmp: Path
    ctx: Ctx
    sd: tuple
    diff: tuple
    edits: int = 0

    @property
    def marker(self) -> Path:
        return self.tmp / "evil" / "MARKER"

    def evil_folder(self) -> Path:
        folder = self.tmp / "evil"
        folder.mkdir(exist_ok=True)
        (folder / "evil.py").write_text(EVIL)
        return folder

    def manifest_copy(self, manifest: Path, edit) -> str:
        """A copy of an imported manifest (its root is absolute: it opens from anywhere), edited."""
        data = json.loads(Path(manifest).read_text())
        edit(data)
        self.edits += 1
        out = self.tmp / f"edited-{self.edits}" / "manifest.json"
        write_json(out, data)
        return str(out)

    def stage(self, stage: str, config: str, manifest: str, model: str = "imported") -> list[str]:
        """`stage` over `manifest`; the features and stats are never reached (the trail is refused first)."""
        out = {
            "baselines": ["--out", str(self.tmp / "b.json")],
            "search": ["--out-dir", str(self.tmp / "s")],
            "evaluate": ["--variant", "last", "--out", str(self.tmp / "e.json"), "--grid", str(self.tmp / "e.png")],
            "export": [
                "--variant",
                "last",
                "--out-dir",
                str(self.tmp / "x"),
                "--evaluations",
                str(self.tmp / "e.json"),
            ],
        }[stage]
        inputs = (
            []
            if stage == "export"
            else ["--features", str(self.tmp / "f.safetensors"), "--stats", str(self.tmp / "s.npz")]
        )
        return [stage, "--config", config, "--model", model, "--manifest", manifest, *inputs, *out]

    def _config(self, base: dict, name: str, trail: dict) -> str:
        """`base` with its results in this case's folder and `trail` keys set, as a config file."""
        cfg = copy.deepcopy(base)
        cfg["results_dir"] = str(self.tmp / "results")
        cfg["trail"].update(trail)
        path = self.tmp / name
        path.write_text(yaml.safe_dump(cfg))
        return str(path)

    def sd_config(self, **trail) -> str:
        return self._config(self.sd[0], "sd.yaml", trail)

    def diff_config(self, **trail) -> str:
        return self._config(self.diff[0], "diff.yaml", trail)

    def run_copy(self, which: str) -> Path:
        """A private copy of a training run's folder (state_dict or diffusers)."""
        src = self.sd[0]["trail"]["path"] if which == "sd" else self.diff[3]
        dst = self.tmp / f"{which} run"
        shutil.copytree(src, dst, symlinks=True)
        return dst


@pytest.fixture
def hostile(ctx, sd_imported, diff_imported, tmp_path):
    return Hostile(tmp_path, ctx, sd_imported, diff_imported)


# ---- editing the session's lcsc trail -------------------------------------------------------


def _lcsc_as_state_dict(factory: str, kwargs: dict, code=None):
    def edit(data, folder):
        data.update(
            kind="state_dict",
            root=str(folder),
            sampler="dm",
            source={"factory": factory, "factory_kwargs": kwargs, "code": code, "key": None, "prefix": None},
        )

    return edit


def _poison(path: Path, value=float("nan"), key=None) -> str:
    """One value of one tensor of a safetensors or state-dict file set to `value`; the tensor's name."""
    if path.suffix == ".safetensors":
        state = load_tensors(path)
        name = key or next(k for k, v in state.items() if v.is_floating_point())
        state[name].view(-1)[0] = value
        save_tensors(path, state)
        return name
    obj = torch.load(path, weights_only=True)
    name = key or next(iter(obj["state_dict"]))
    obj["state_dict"][name].view(-1)[0] = value
    torch.save(obj, path)
    return name


def _nan_in_lcsc_checkpoint(h: Hostile):
    def edit(data, folder):
        name = _poison(folder / data["checkpoints"][1]["file"])
        data["checkpoints"][1]["sha256"] = sha256(folder / data["checkpoints"][1]["file"])
        h.tmp.joinpath("poisoned").write_text(name)

    return edit


def _coefficients(h: Hostile, values) -> str:
    trail = json.loads(h.ctx.manifest.read_text())
    path = h.tmp / "coef.json"
    write_json(path, {"coefficients": values, "trail_sha256": [c["sha256"] for c in trail["checkpoints"]]})
    return str(path)


def _steps(steps):
    def edit(data, folder):
        for c, s in zip(data["checkpoints"], steps):
            c["step"] = s

    return edit


# ---- imported trails ------------------------------------------------------------------------


def _sd_run_with(h: Hostile, build) -> str:
    """A copy of the state-dict run changed by `build(folder)`, and its config (which may set keys)."""
    folder = h.run_copy("sd")
    extra = build(folder)
    return h.sd_config(path=str(folder), **(extra if isinstance(extra, dict) else {}))


def _diff_run_with(h: Hostile, build) -> str:
    folder = h.run_copy("diff")
    extra = build(folder)
    return h.diff_config(path=str(folder), **(extra if isinstance(extra, dict) else {}))


def _factory_module(h: Hostile, body: str, name: str) -> dict:
    """A factory module of the user's that fails (each under its own name: Python keeps modules)."""
    folder = h.tmp / "code"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(body)
    return {"factory": f"{name}:make", "code": str(folder)}


def _link_out(h: Hostile):
    """A checkpoint in the run's folder that is a symlink to a file outside it."""

    def build(folder: Path) -> None:
        outside = h.tmp / "outside.pt"
        shutil.copy(folder / "model000040.pt", outside)
        (folder / "model000050.pt").symlink_to(outside)

    return build


def _ema_out(h: Hostile):
    """The last checkpoint's EMA folder a symlink to a copy outside the run's folder."""

    def build(folder: Path) -> None:
        ema = folder / "checkpoint-20" / "unet_ema"
        shutil.copytree(ema, h.tmp / "ema elsewhere")
        shutil.rmtree(ema)
        ema.symlink_to(h.tmp / "ema elsewhere")

    return build


def _symlink_loop(h: Hostile, name: str) -> str:
    loop = h.tmp / name
    loop.symlink_to(loop)
    return str(loop)


def _unet_config(folder: Path, value) -> None:
    for path in folder.glob("checkpoint-*/unet/config.json"):
        path.write_text(json.dumps(value))


def _evaluation(h: Hostile, obj) -> None:
    (h.tmp / "e.json").write_text(json.dumps(obj))


def _export_with(h: Hostile, evaluation) -> list[str]:
    _evaluation(h, evaluation)
    cfg, config, manifest = h.sd
    return h.stage("export", config, str(manifest))


GOOD_EVALUATION = {"model": "imported", "variant": "last", "fid": {"1": 10.0}, "samples": 96, "seed": 2000}


# (id, build(h) -> (argv, needles the one line holds)); the stage is argv[0]
CASES = [
    # code named by a results folder is never run: the family and its factory come from the config
    (
        "lcsc-manifest-factory-os-system",
        lambda h: (
            h.ctx.search(
                manifest=h.ctx.edit_manifest(_lcsc_as_state_dict("os:system", {"command": f"touch {h.marker}"}))
            ),
            ["manifest.json", "kind 'state_dict'", "trail.source is 'lcsc'"],
        ),
    ),
    (
        "lcsc-manifest-kind-diffusers",
        lambda h: (
            h.ctx.evaluate(manifest=h.ctx.edit_manifest(lambda d, f: d.update(kind="diffusers", root=str(f)))),
            ["manifest.json", "kind 'diffusers'"],
        ),
    ),
    (
        "sd-manifest-factory-os-system",
        lambda h: (
            h.stage(
                "evaluate",
                h.sd[1],
                h.manifest_copy(
                    h.sd[2],
                    lambda d: d["source"].update(factory="os:system", factory_kwargs={"command": f"touch {h.marker}"}),
                ),
            ),
            ["manifest.json", "source.factory 'os:system'", "trail.factory is 'my_nets:make'"],
        ),
    ),
    (
        "sd-manifest-code-folder",
        lambda h: (
            h.stage(
                "baselines",
                h.sd[1],
                h.manifest_copy(h.sd[2], lambda d: d["source"].update(factory="evil:make", code=str(h.evil_folder()))),
            ),
            ["manifest.json", "source.factory 'evil:make'"],
        ),
    ),
    (
        "sd-manifest-code-only",
        lambda h: (
            h.stage(
                "search", h.sd[1], h.manifest_copy(h.sd[2], lambda d: d["source"].update(code=str(h.evil_folder())))
            ),
            ["manifest.json", "source.code", "trail.code"],
        ),
    ),
    (
        "sd-manifest-factory-kwargs",
        lambda h: (
            h.stage(
                "export",
                h.sd[1],
                h.manifest_copy(h.sd[2], lambda d: d["source"]["factory_kwargs"].update(channels=4096)),
            ),
            ["manifest.json", "source.factory_kwargs"],
        ),
    ),
    (
        "sd-manifest-key",
        lambda h: (
            h.stage("search", h.sd[1], h.manifest_copy(h.sd[2], lambda d: d["source"].update(key="ema"))),
            ["manifest.json", "source.key 'ema'", "trail.key is 'state_dict'"],
        ),
    ),
    (
        "sd-manifest-sampler",
        lambda h: (
            h.stage("search", h.sd[1], h.manifest_copy(h.sd[2], lambda d: d.update(sampler="cm"))),
            ["manifest.json", "sampler 'cm'", "trail.sampler is 'dm'"],
        ),
    ),
    (
        "sd-manifest-kind-dm",
        lambda h: (
            h.stage("evaluate", h.sd[1], h.manifest_copy(h.sd[2], lambda d: d.update(kind="dm", root="."))),
            ["manifest.json", "kind 'dm'", "trail.source is 'state_dict'"],
        ),
    ),
    # every file a manifest names stays in the folder the config names
    (
        "sd-manifest-root-slash",
        lambda h: (
            h.stage("search", h.sd[1], h.manifest_copy(h.sd[2], lambda d: d.update(root="/"))),
            ["manifest.json", "root '/'", "trail.path"],
        ),
    ),
    (
        "sd-manifest-root-elsewhere",
        lambda h: (
            h.stage("search", h.sd[1], h.manifest_copy(h.sd[2], lambda d: d.update(root=str(h.run_copy("sd"))))),
            ["manifest.json", "root", "trail.path"],
        ),
    ),
    (
        "sd-manifest-entry-escapes",
        lambda h: (
            h.stage(
                "search",
                h.sd[1],
                h.manifest_copy(h.sd[2], lambda d: d["checkpoints"][0].update(file="../../../../etc/passwd")),
            ),
            ["manifest.json", "checkpoints[0]", "outside"],
        ),
    ),
    (
        "sd-manifest-ema-absolute",
        lambda h: (
            h.stage("evaluate", h.sd[1], h.manifest_copy(h.sd[2], lambda d: d["ema"][0].update(file="/etc/passwd"))),
            ["manifest.json", "ema[0]", "outside"],
        ),
    ),
    (
        "diff-manifest-root-slash",
        lambda h: (
            h.stage("search", h.diff[1], h.manifest_copy(h.diff[2], lambda d: d.update(root="/"))),
            ["manifest.json", "root '/'", "trail.path"],
        ),
    ),
    (
        "diff-manifest-entry-escapes",
        lambda h: (
            h.stage(
                "evaluate",
                h.diff[1],
                h.manifest_copy(
                    h.diff[2], lambda d: d["checkpoints"][1].update(file="../x/diffusion_pytorch_model.safetensors")
                ),
            ),
            ["manifest.json", "checkpoints[1]"],
        ),
    ),
    (
        "diff-manifest-unet-config-rejected",
        lambda h: (
            h.stage(
                "search",
                h.diff[1],
                h.manifest_copy(h.diff[2], lambda d: d["model_config"].update(down_block_types=["Foo"])),
            ),
            ["manifest.json: model_config", "diffusers refuses"],
        ),
    ),
    (
        "diff-manifest-scheduler-a-list",
        lambda h: (
            h.stage("search", h.diff[1], h.manifest_copy(h.diff[2], lambda d: d.update(scheduler_config=[]))),
            ["manifest.json: scheduler_config", "not an object"],
        ),
    ),
    (
        "lcsc-manifest-root-absolute",
        lambda h: (
            h.ctx.search(manifest=h.ctx.edit_manifest(lambda d, f: d.update(root="/etc"))),
            ["manifest.json", "root '/etc'"],
        ),
    ),
    (
        "lcsc-manifest-root-not-a-trail",
        lambda h: (
            h.ctx.search(manifest=h.ctx.edit_manifest(lambda d, f: d.update(root="../../.."))),
            ["manifest.json", "root '../../..'", "not a trail's folder"],
        ),
    ),
    # weights and numbers from the folder are checked before they are used
    (
        "lcsc-checkpoint-nan",
        lambda h: (
            h.ctx.evaluate(manifest=h.ctx.edit_manifest(_nan_in_lcsc_checkpoint(h))),
            ["step_0000020.safetensors", "NaN or infinite"],
        ),
    ),
    (
        "lcsc-steps-decrease",
        lambda h: (
            h.ctx.search(manifest=h.ctx.edit_manifest(_steps([20, 10, 30, 40]))),
            ["manifest.json", "step 10 follows step 20"],
        ),
    ),
    (
        "lcsc-step-23-digits",
        lambda h: (
            h.ctx.search(manifest=h.ctx.edit_manifest(_steps([10, 20, 30, 10**22]))),
            ["manifest.json", f"step {10**22}", "trail.pattern"],
        ),
    ),
    (
        "lcsc-step-negative",
        lambda h: (
            h.ctx.search(manifest=h.ctx.edit_manifest(_steps([-10, 20, 30, 40]))),
            ["manifest.json", "step -10"],
        ),
    ),
    (
        "coefficients-nan",
        lambda h: (
            h.ctx.evaluate("lcsc", "--coefficients", _coefficients(h, [0.5, float("nan"), 0.25, 0.25])),
            ["coef.json", "4 finite numbers"],
        ),
    ),
    (
        "coefficients-too-few",
        lambda h: (h.ctx.evaluate("lcsc", "--coefficients", _coefficients(h, [1.0])), ["coef.json", "(1 values)"]),
    ),
    (
        "coefficients-huge",
        lambda h: (
            h.ctx.evaluate("lcsc", "--coefficients", _coefficients(h, [1e309, 0, 0, 0])),
            ["coef.json", "finite"],
        ),
    ),
    # imports: weights, steps, globs, symlinks
    (
        "import-sd-nan",
        lambda h: (
            ["import-trail", "--config", _sd_run_with(h, lambda f: _poison(f / "model000030.pt") and None)],
            ["model000030.pt", "NaN or infinite"],
        ),
    ),
    (
        "import-sd-ema-inf",
        lambda h: (
            [
                "import-trail",
                "--config",
                _sd_run_with(h, lambda f: _poison(next(f.glob("ema_*.pt")), float("inf")) and None),
            ],
            ["ema_0.99_000040.pt", "NaN or infinite"],
        ),
    ),
    (
        "import-diffusers-inf",
        lambda h: (
            [
                "import-trail",
                "--config",
                _diff_run_with(
                    h,
                    lambda f: (
                        _poison(f / "checkpoint-10/unet/diffusion_pytorch_model.safetensors", float("-inf")) and None
                    ),
                ),
            ],
            ["checkpoint-10/unet/diffusion_pytorch_model.safetensors", "NaN or infinite"],
        ),
    ),
    (
        "import-step-23-digits",
        lambda h: (
            [
                "import-trail",
                "--config",
                _sd_run_with(h, lambda f: shutil.copy(f / "model000040.pt", f / f"model{10**22}.pt")),
            ],
            [f"step {10**22}", "trail.pattern"],
        ),
    ),
    (
        "import-pattern-not-digits",
        lambda h: (
            ["import-trail", "--config", _sd_run_with(h, lambda f: {"pattern": r"(\w+)\.pt$"})],
            [".pt", "trail.pattern", "not as digits"],
        ),
    ),
    (
        "import-pattern-optional-group",
        lambda h: (
            ["import-trail", "--config", _sd_run_with(h, lambda f: {"pattern": r"(\d{99})?\.pt"})],
            [".pt", "trail.pattern", "as None"],
        ),
    ),
    (
        "import-files-symlink-out",
        lambda h: (
            ["import-trail", "--config", _sd_run_with(h, _link_out(h))],
            ["model000050.pt", "lies outside trail.path"],
        ),
    ),
    (
        "import-diffusers-ema-symlink-out",
        lambda h: (
            ["import-trail", "--config", _diff_run_with(h, _ema_out(h))],
            ["unet_ema/diffusion_pytorch_model.safetensors", "outside trail.path"],
        ),
    ),
    (
        "import-path-symlink-loop",
        lambda h: (
            ["import-trail", "--config", h.sd_config(path=_symlink_loop(h, "loop"))],
            ["trail.path", "Symlink loop"],
        ),
    ),
    (
        "import-code-symlink-loop",
        lambda h: (["import-trail", "--config", h.sd_config(code=_symlink_loop(h, "cloop"))], ["trail.code"]),
    ),
    (
        "cfg-files-absolute",
        lambda h: (["import-trail", "--config", h.sd_config(files="/etc/*.pt")], ["trail.files", "'/etc/*.pt'"]),
    ),
    (
        "cfg-files-dotdot",
        lambda h: (["import-trail", "--config", h.sd_config(files="../*/*.pt")], ["trail.files", "'..'"]),
    ),
    ("cfg-ema-absolute", lambda h: (["import-trail", "--config", h.sd_config(ema="/tmp/ema_*.pt")], ["trail.ema"])),
    (
        "cfg-diffusers-ema-a-path",
        lambda h: (["import-trail", "--config", h.diff_config(ema="../unet_ema")], ["trail.ema", "one sub-folder"]),
    ),
    ("cfg-diffusers-unet-dotdot", lambda h: (["import-trail", "--config", h.diff_config(unet="..")], ["trail.unet"])),
    (
        "cfg-pattern-no-group",
        lambda h: (
            ["import-trail", "--config", h.sd_config(pattern=r"model\d+")],
            ["trail.pattern", "exactly one group"],
        ),
    ),
    (
        "cfg-pattern-not-a-regex",
        lambda h: (
            ["import-trail", "--config", h.sd_config(pattern="model(")],
            ["trail.pattern", "not a regular expression"],
        ),
    ),
    # the user's own factory failing: one line naming trail.factory
    (
        "factory-raises",
        lambda h: (
            [
                "import-trail",
                "--config",
                h.sd_config(
                    **_factory_module(h, "def make(**kw):\n    raise RuntimeError('no GPU for you')\n", "raising_nets")
                ),
            ],
            ["trail.factory", "no GPU for you"],
        ),
    ),
    (
        "factory-syntax-error",
        lambda h: (
            ["import-trail", "--config", h.sd_config(**_factory_module(h, "def make(:\n", "syntax_nets"))],
            ["trail.factory", "SyntaxError"],
        ),
    ),
    (
        "factory-raises-at-import",
        lambda h: (
            [
                "import-trail",
                "--config",
                h.sd_config(**_factory_module(h, "raise ValueError('half installed')\n", "half_nets")),
            ],
            ["trail.factory", "half installed"],
        ),
    ),
    (
        "factory-wrong-kwargs",
        lambda h: (
            ["import-trail", "--config", h.sd_config(factory_kwargs={"frobnicate": 1})],
            ["trail.factory", "trail.factory_kwargs", "KeyError"],
        ),
    ),
    (
        "factory-returns-none",
        lambda h: (
            [
                "import-trail",
                "--config",
                h.sd_config(**_factory_module(h, "def make(**kw):\n    return None\n", "none_nets")),
            ],
            ["trail.factory", "NoneType"],
        ),
    ),
    # configs diffusers refuses: one line naming the file (and never a trip to the Hub)
    (
        "diffusers-unet-config-rejected",
        lambda h: (
            [
                "import-trail",
                "--config",
                _diff_run_with(
                    h, lambda f: _unet_config(f, {"down_block_types": ["Foo"], "up_block_types": ["UpBlock2D"]})
                ),
            ],
            ["config.json", "diffusers refuses"],
        ),
    ),
    (
        "diffusers-unet-config-a-list",
        lambda h: (
            ["import-trail", "--config", _diff_run_with(h, lambda f: _unet_config(f, []))],
            ["config.json", "not an object"],
        ),
    ),
    (
        "diffusers-scheduler-rejected",
        lambda h: (
            [
                "import-trail",
                "--config",
                _diff_run_with(
                    h,
                    lambda f: (f / "scheduler" / "scheduler_config.json").write_text(
                        json.dumps({"beta_schedule": "bogus"})
                    ),
                ),
            ],
            ["scheduler_config.json", "bogus"],
        ),
    ),
    (
        "diffusers-scheduler-a-list",
        lambda h: (
            [
                "import-trail",
                "--config",
                _diff_run_with(h, lambda f: (f / "scheduler" / "scheduler_config.json").write_text("[]")),
            ],
            ["scheduler_config.json", "not an object"],
        ),
    ),
    (
        "diffusers-scheduler-learned-variance",
        lambda h: (
            [
                "import-trail",
                "--config",
                _diff_run_with(
                    h,
                    lambda f: (f / "scheduler" / "scheduler_config.json").write_text(
                        json.dumps({"variance_type": "learned_range"})
                    ),
                ),
            ],
            ["scheduler_config.json", "variance_type 'learned_range'", "not sampled here"],
        ),
    ),
    (
        "diffusers-ema-decay-not-a-number",
        lambda h: (
            [
                "import-trail",
                "--config",
                _diff_run_with(
                    h,
                    lambda f: (f / "checkpoint-20" / "unet_ema" / "config.json").write_text(
                        json.dumps({"decay": "slow"})
                    ),
                ),
            ],
            ["unet_ema/config.json", "decay 'slow'"],
        ),
    ),
    (
        "diffusers-ema-decay-the-recorded-maximum",
        lambda h: (
            ["import-trail", "--config", h.diff_config(ema_decay=0.9999)],
            [
                "trail.ema_decay: 0.9999",
                "averaged with decay 0.689655",
                "optimization_step 20",
                "set trail.ema_decay: 0.6897",
            ],
        ),
    ),
    # export's evaluation files, devices, the registry name
    ("export-evaluations-a-list", lambda h: (_export_with(h, [GOOD_EVALUATION]), ["e.json", "not the object"])),
    (
        "export-evaluations-fid-a-list",
        lambda h: (_export_with(h, dict(GOOD_EVALUATION, fid=[1.0, 2.0])), ["e.json", "not an evaluation"]),
    ),
    (
        "export-evaluations-fid-strings",
        lambda h: (_export_with(h, dict(GOOD_EVALUATION, fid={"1": "low"})), ["e.json", "not an evaluation"]),
    ),
    (
        "export-evaluations-no-seed",
        lambda h: (_export_with(h, {k: v for k, v in GOOD_EVALUATION.items() if k != "seed"}), ["e.json", "'seed'"]),
    ),
    (
        "search-devices-mps",
        lambda h: (h.ctx.search(config=h.ctx.config(search__devices=["mps"])), ["search.devices", "'mps'"]),
    ),
    (
        "cfg-register-slash",
        lambda h: (
            ["train-dm", "--config", h.ctx.config(export__register="team/model")],
            ["export.register", "'team/model'"],
        ),
    ),
    (
        "cfg-register-blank",
        lambda h: (["train-dm", "--config", h.ctx.config(export__register="  ")], ["export.register"]),
    ),
    (
        "cfg-register-quote",
        lambda h: (["train-dm", "--config", h.ctx.config(export__register="it's")], ["export.register"]),
    ),
]


def test_the_table_holds_forty_hostile_inputs_and_more():
    assert len(CASES) >= 40 and len({name for name, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("build", [b for _, b in CASES], ids=[n for n, _ in CASES])
def test_a_hostile_input_is_one_line_and_runs_nothing(hostile, build, capsys):
    table_case(build, hostile, capsys)
    assert not hostile.marker.exists()


# ---- the acceptance cases, each through every stage that reads a trail ----------------------

STAGES = ["baselines", "search", "evaluate", "export"]


@pytest.mark.parametrize("stage", STAGES)
def test_a_manifest_naming_os_system_runs_nothing_in_any_stage(hostile, stage, capsys):
    edit = _lcsc_as_state_dict("os:system", {"command": f"touch {hostile.marker}"})
    manifest = hostile.ctx.edit_manifest(edit)
    _evaluation(hostile, dict(GOOD_EVALUATION, model="dm"))
    argv = hostile.stage(stage, hostile.ctx.config(), manifest, model="dm")
    check_one_line(main(argv), capsys.readouterr().err, stage, ["kind 'state_dict'", "trail.source is 'lcsc'"])
    # the same manifest under a config that imports state dicts: its factory is still not the config's
    manifest = hostile.manifest_copy(
        hostile.sd[2],
        lambda d: d["source"].update(factory="os:system", factory_kwargs={"command": f"touch {hostile.marker}"}),
    )
    _evaluation(hostile, GOOD_EVALUATION)
    check_one_line(
        main(hostile.stage(stage, hostile.sd[1], manifest)),
        capsys.readouterr().err,
        stage,
        ["source.factory 'os:system'"],
    )
    assert not hostile.marker.exists()


@pytest.mark.parametrize("stage", STAGES)
def test_a_code_folder_in_a_manifest_is_never_imported(hostile, stage, capsys):
    manifest = hostile.manifest_copy(
        hostile.sd[2], lambda d: d["source"].update(factory="evil:make", code=str(hostile.evil_folder()))
    )
    _evaluation(hostile, GOOD_EVALUATION)
    check_one_line(
        main(hostile.stage(stage, hostile.sd[1], manifest)),
        capsys.readouterr().err,
        stage,
        ["source.factory 'evil:make'", "rerun import_trail"],
    )
    assert not hostile.marker.exists() and "evil" not in __import__("sys").modules


@pytest.mark.parametrize("kind", ["lcsc", "diffusers", "state_dict"])
def test_a_manifest_leading_outside_the_configured_folder_is_refused(hostile, kind, capsys):
    outside = hostile.tmp / "outside"
    outside.mkdir()
    if kind == "lcsc":  # (one private copy of the trail at a time)
        cases = [
            (
                lambda: hostile.ctx.search(
                    manifest=hostile.ctx.edit_manifest(lambda d, f: d.update(root=str(outside)))
                ),
                ["root"],
            ),
            (
                lambda: hostile.ctx.search(
                    manifest=hostile.ctx.edit_manifest(
                        lambda d, f: d["checkpoints"][0].update(file="../outside/x.safetensors")
                    )
                ),
                ["checkpoints[0]"],
            ),
        ]
    else:
        cfg, config, manifest = hostile.diff[:3] if kind == "diffusers" else hostile.sd
        cases = [
            (
                lambda: hostile.stage("search", config, hostile.manifest_copy(manifest, lambda d: d.update(root="/"))),
                ["root '/'"],
            ),
            (
                lambda: hostile.stage(
                    "search", config, hostile.manifest_copy(manifest, lambda d: d.update(root=str(outside)))
                ),
                ["root"],
            ),
            (
                lambda: hostile.stage(
                    "search",
                    config,
                    hostile.manifest_copy(
                        manifest,
                        lambda d: d["checkpoints"][0].update(
                            file=os.path.relpath(outside / "x", cfg["trail"]["path"])
                        ),
                    ),
                ),
                ["checkpoints[0]", "outside"],
            ),
        ]
    for build, needles in cases:
        if kind == "lcsc" and (hostile.tmp / "trail").exists():
            shutil.rmtree(hostile.tmp / "trail")
        argv = build()
        check_one_line(main(argv), capsys.readouterr().err, argv[0], ["manifest.json", *needles])


@pytest.mark.parametrize("kind", ["state_dict", "diffusers"])
def test_a_nan_in_one_tensor_of_one_checkpoint_stops_the_import(hostile, kind, capsys):
    run = hostile.run_copy("sd" if kind == "state_dict" else "diff")
    if kind == "state_dict":
        path, config = run / "model000020.pt", hostile.sd_config(path=str(run))
    else:
        path, config = (
            run / "checkpoint-20/unet/diffusion_pytorch_model.safetensors",
            hostile.diff_config(path=str(run)),
        )
    name = _poison(path).removeprefix("module.")  # (the network's name: the trail's prefix stripped)
    line = check_one_line(
        main(["import-trail", "--config", config]),
        capsys.readouterr().err,
        "import-trail",
        [str(path), repr(name), "NaN or infinite"],
    )
    assert "1 NaN or infinite value(s)" in line


def test_date_stamped_steps_import_and_every_profile_is_computed(hostile, capsys):
    """Checkpoints named by date (model20240601120000.pt): the steps are large, their order is the
    training's, and no profile allocates an array of that length."""
    run = hostile.run_copy("sd")
    for i, path in enumerate(sorted(run.glob("model*.pt"))):
        path.rename(run / f"model{20240601120000 + 3600 * i}.pt")
    config = hostile.sd_config(path=str(run))
    assert main(["import-trail", "--config", config]) == 0
    from lcsc.kernel.profiles import trail_profiles

    manifest = json.loads(
        Layout(hostile.tmp / "results", hostile.sd[0]["experiment"]).manifest("imported").read_text()
    )
    steps = [c["step"] for c in manifest["checkpoints"]]
    assert steps == [20240601120000 + 3600 * i for i in range(4)]
    profiles = trail_profiles(steps, {"lawa_last": [2], "ema_decays": [0.999], "power_sigma_rels": [0.05, 0.1]})
    for name, c in profiles.items():
        assert abs(c.sum() - 1) < 1e-9 and (c >= 0).all(), name


# ---- a full disk, on every kind of file a stage writes ---------------------------------------


def test_a_full_disk_is_one_line_naming_the_file(hostile, full_disk, capsys):
    ctx = hostile.ctx
    cases = [
        (ctx.search("--best", str(full_disk / "best.safetensors")), "best.safetensors"),  # safetensors
        (ctx.evaluate("last", "--out", str(full_disk / "e.json")), "e.json"),  # JSON (after the grid)
        (["evaluate", *ctx.evaluate("last")[1:-2], "--grid", str(full_disk / "e.png")], "e.png"),  # PNG
        (
            [
                "reference-stats",
                "--config",
                ctx.config(),
                "--features",
                str(ctx.features),
                "--out",
                str(full_disk / "s.npz"),
            ],
            "s.npz",
        ),  # numpy
        (["train-dm", "--config", ctx.config("full.yaml", results_dir=str(full_disk / "results"))], str(full_disk)),
    ]
    _evaluation(hostile, GOOD_EVALUATION)
    cases.append(
        (
            [
                "export",
                "--config",
                hostile.sd[1],
                "--model",
                "imported",
                "--variant",
                "last",
                "--manifest",
                str(hostile.sd[2]),
                "--evaluations",
                str(hostile.tmp / "e.json"),
                "--out-dir",
                str(full_disk / "x"),
            ],
            "model.pt",
        )
    )  # torch.save, the state-dict trail's own format
    for argv, name in cases:
        capsys.readouterr()
        rc = main(argv)
        err = "\n".join(line for line in capsys.readouterr().err.splitlines() if "%|" not in line)  # progress bars
        check_one_line(rc, err, argv[0], [name, "No space left on device"])


# ---- a run lcsc did not write, checked against the config at import --------------------------


def _import(h: Hostile, folder: Path, **sections) -> str:
    cfg = copy.deepcopy(h.diff[0])
    cfg["results_dir"] = str(h.tmp / "results")
    cfg["trail"]["path"] = str(folder)
    for key, values in sections.items():
        cfg.setdefault(key, {}).update(values)
    path = h.tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_an_imported_run_is_checked_against_the_config_at_import(hostile, capsys):
    """Image size, LAWA windows and damaged files are refused at import, before any stage samples,
    with the setting that fixes each; a checkpoint folder without weights is left out and said."""
    run = hostile.run_copy("diff")
    unet_config = next(run.glob("checkpoint-*/unet/config.json"))
    check_one_line(
        main(["import-trail", "--config", _import(hostile, run, data={"image_size": 16})]),
        capsys.readouterr().err,
        "import-trail",
        [
            "data.image_size: 16 in the config",
            str(unet_config.parent.parent.parent.name),
            "sample_size 12",
            "set data.image_size: 12",
        ],
    )
    check_one_line(
        main(["import-trail", "--config", _import(hostile, run, baselines={"lawa_last": [3]})]),
        capsys.readouterr().err,
        "import-trail",
        ["baselines.lawa_last: 3 exceeds the 2 checkpoints imported", "trail.every, trail.last"],
    )
    # a checkpoint folder the trainer left without its UNet is listed with the reason, and skipped
    (run / "checkpoint-5" / "optimizer").mkdir(parents=True)
    assert main(["import-trail", "--config", _import(hostile, run)]) == 0
    out = capsys.readouterr().out
    assert (
        "[import_trail] skipped checkpoint-5: no unet/diffusion_pytorch_model.safetensors in it (it holds "
        "optimizer)" in out
    )
    # a damaged file of the run: how to leave it out, not "rerun the stage that writes it"
    weights = run / "checkpoint-10" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    line = check_one_line(
        main(["import-trail", "--config", _import(hostile, run)]),
        capsys.readouterr().err,
        "import-trail",
        [str(weights), "trail.files, trail.last or trail.every"],
    )
    assert "rerun" not in line
