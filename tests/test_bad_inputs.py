"""Every expected failure of `python -m lcsc <stage>` is one line on stderr, `lcsc <stage>: <file or
key>: <what is wrong>; <what to do>`, with exit code 2 and no traceback: bad configs, bad files
(truncated, foreign, outside the trail) and bad command-line arguments alike."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lcsc.cli import main
from lcsc.errors import TrailError
from lcsc.fid import save_stats
from lcsc.io import save_tensors, sha256, write_json
from lcsc.paths import Layout, dataset_name
from lcsc.trail import Trail, truncate

from conftest import REPO

INF, NAN = float("inf"), float("nan")


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
        return self.write(name, data[:int(len(data) * keep)])

    def search(self, *extra, manifest=None, features=None, stats=None, config=None) -> list[str]:
        return ["search", "--config", config or self.config(), "--manifest", str(manifest or self.manifest),
                "--features", str(features or self.features), "--stats", str(stats or self.stats),
                "--out-dir", str(self.tmp / "search"), *extra]

    def evaluate(self, variant="last", *extra, manifest=None, features=None, stats=None) -> list[str]:
        return ["evaluate", "--config", self.config(), "--variant", variant, "--manifest",
                str(manifest or self.manifest), "--features", str(features or self.features),
                "--stats", str(stats or self.stats), "--out", str(self.tmp / "e.json"),
                "--grid", str(self.tmp / "e.png"), *extra]


# --- file corruptions ---------------------------------------------------------------------------

def _reseal(data: dict, folder: Path, i: int = 0) -> None:
    """Update checkpoint i's sha256 to its (corrupted) file, so that the trail opens."""
    data["checkpoints"][i]["sha256"] = sha256(folder / data["checkpoints"][i]["file"])


def _cut_checkpoint(data: dict, folder: Path) -> None:
    path = folder / data["checkpoints"][0]["file"]
    path.write_bytes(path.read_bytes()[:100])
    _reseal(data, folder)


def _foreign_checkpoint(data: dict, folder: Path) -> None:
    save_tensors(folder / data["checkpoints"][0]["file"], {"w": torch.zeros(3)})
    _reseal(data, folder)


def _changed_checkpoint(data: dict, folder: Path) -> None:
    path = folder / data["checkpoints"][1]["file"]
    path.write_bytes(path.read_bytes()[:-10])


def _symlink_out(data: dict, folder: Path) -> None:
    outside = folder.parent / "outside.safetensors"
    shutil.copyfile(folder / data["checkpoints"][0]["file"], outside)
    (folder / "linked.safetensors").symlink_to(outside)
    data["checkpoints"][0]["file"] = "linked.safetensors"


def _set_entry(key, value, i=0, section="checkpoints"):
    def edit(data, folder):
        if value is None:
            del data[section][i][key]
        else:
            data[section][i][key] = value
    return edit


def _journal(ctx: Ctx, lines: list[str]) -> str:
    return ctx.write("search/state/journal.jsonl", "".join(line + "\n" for line in lines))


def _resume_cut(ctx: Ctx) -> list[str]:
    """train-dm over a copy of the trail whose resume state is cut short."""
    config = ctx.config()
    trail = Layout(ctx.cfg["results_dir"], ctx.cfg["experiment"]).trail_dir("dm")
    shutil.copytree(ctx.manifest.parent, trail)
    (trail / "manifest.json").unlink()
    resume = trail / "resume.safetensors"
    resume.write_bytes(resume.read_bytes()[:50])
    return ["train-dm", "--config", config]


HEADER = json.dumps({"type": "header", "format": "lcsc-search-journal/1"})

# (id, build(ctx) -> (argv, needles that the one line must hold)); the stage is argv[0]
CASES = [
    # configs: every bad key is named (one key: one line)
    ("cfg-unknown-key", lambda c: (["train-dm", "--config", c.config(train__foo=1)], ["train.foo"])),
    ("cfg-wrong-type", lambda c: (["train-dm", "--config", c.config(train__iterations="many")],
                                  ["train.iterations"])),
    ("cfg-negative", lambda c: (["train-dm", "--config", c.config(train__batch_size=-4)], ["train.batch_size"])),
    ("cfg-nan-lr", lambda c: (["train-dm", "--config", c.config(train__lr=NAN)], ["train.lr"])),
    ("cfg-huge-seed", lambda c: (["train-dm", "--config", c.config(seed=2**70)], ["seed"])),
    ("cfg-unknown-optimizer", lambda c: (c.search(config=c.config(search__optimizer="Foo")), ["search.optimizer"])),
    ("cfg-bad-device", lambda c: (c.search(config=c.config(search__devices=["gpu0"])), ["search.devices"])),
    ("cfg-inf-sigma", lambda c: (c.search(config=c.config(search__sigma=INF)), ["search.sigma"])),
    ("cfg-inf-bounds", lambda c: (c.search(config=c.config(search__bounds=[-1.0, INF])), ["search.bounds"])),
    ("cfg-yaml-syntax", lambda c: (["train-dm", "--config", c.write("broken.yaml", "train: {lr: [1, 2\n")],
                                   ["broken.yaml"])),
    ("cfg-yaml-list", lambda c: (["train-dm", "--config", c.write("list.yaml", "- 1\n- 2\n")], ["list.yaml"])),
    ("cfg-missing-file", lambda c: (["train-dm", "--config", str(c.tmp / "nonexistent.yaml")],
                                    ["nonexistent.yaml"])),
    ("cfg-is-a-folder", lambda c: (["train-dm", "--config", str(c.tmp)], [str(c.tmp)])),
    ("cfg-results-dir-is-a-file", lambda c: (["train-dm", "--config", c.config(
        results_dir=c.write("results.txt", "not a folder"))], ["results.txt"])),
    # command-line arguments
    ("cli-config-json-bad", lambda c: (["train-dm", "--config-json", "{bad"], ["--config-json"])),
    ("cli-config-json-list", lambda c: (["train-dm", "--config-json", "[1, 2]"], ["--config-json"])),
    ("cli-wildcards-novalue", lambda c: (["train-dm", "--config", c.config(), "--wildcards", "novalue"],
                                         ["--wildcards", "novalue"])),
    ("cli-threads-not-int", lambda c: (["search", "--threads", "x"], ["--threads", "invalid int value: 'x'"])),
    ("cli-threads-negative", lambda c: (["search", "--threads", "-2"], ["--threads"])),
    ("cli-set-no-equals", lambda c: (["train-dm", "--set", "train.lr"], ["--set"])),
    ("cli-set-bad-yaml", lambda c: (["train-dm", "--set", "train.lr=[1"], ["--set"])),
    ("cli-unknown-variant", lambda c: (c.evaluate("bogus"), ["bogus"])),
    ("cli-unknown-model", lambda c: (c.search("--model", "nonsense"), ["nonsense"])),
    ("cli-not-truncated-model", lambda c: (["truncate-trail", "--config", c.config(), "--model", "dm"], ["'dm'"])),
    ("cli-missing-variant", lambda c: (["evaluate"], ["--variant"])),
    ("cli-unknown-flag", lambda c: (["search", "--frobnicate", "3"], ["--frobnicate"])),
    ("cli-bad-choice", lambda c: (["train-cm", "--mode", "xx"], ["--mode", "xx"])),
    # trail manifests and checkpoints
    ("manifest-not-json", lambda c: (c.search(manifest=c.write("m/manifest.json", '{"format": "lcsc-tr')),
                                     ["manifest.json", "not valid JSON"])),
    ("manifest-a-list", lambda c: (c.search(manifest=c.write("m/manifest.json", "[]")), ["manifest.json"])),
    ("manifest-missing", lambda c: (c.search(manifest=c.tmp / "nowhere" / "manifest.json"), ["nowhere"])),
    ("manifest-no-checkpoints", lambda c: (c.search(manifest=c.edit_manifest(lambda d, f: d.pop("checkpoints"))),
                                           ["manifest.json", "checkpoints"])),
    ("manifest-entry-no-sha", lambda c: (c.search(manifest=c.edit_manifest(_set_entry("sha256", None, 1))),
                                         ["manifest.json", "checkpoints[1]", "sha256"])),
    ("manifest-entry-escapes", lambda c: (c.search(manifest=c.edit_manifest(
        _set_entry("file", "../../../../../../../../etc/passwd"))), ["manifest.json", "checkpoints[0]"])),
    ("manifest-entry-absolute", lambda c: (c.search(manifest=c.edit_manifest(
        _set_entry("file", str(c.manifest.parent / "step_0000010.safetensors")))), ["manifest.json", "checkpoints[0]"])),
    ("manifest-ema-escapes", lambda c: (c.search(manifest=c.edit_manifest(
        _set_entry("file", "../trail/../../x.safetensors", section="ema"))), ["manifest.json", "ema[0]"])),
    ("manifest-entry-symlink-out", lambda c: (c.search(manifest=c.edit_manifest(_symlink_out)),
                                              ["manifest.json", "checkpoints[0]"])),
    ("checkpoint-truncated", lambda c: (c.evaluate(manifest=c.edit_manifest(_cut_checkpoint)),
                                        ["step_0000010.safetensors", "not a readable safetensors file"])),
    ("checkpoint-changed", lambda c: (c.search(manifest=c.edit_manifest(_changed_checkpoint)),
                                      ["step_0000020.safetensors", "sha256"])),
    ("checkpoint-foreign", lambda c: (c.evaluate(manifest=c.edit_manifest(_foreign_checkpoint)),
                                      ["step_0000010.safetensors"])),
    ("resume-state-truncated", lambda c: (_resume_cut(c), ["resume.safetensors"])),
    ("teacher-not-json", lambda c: (["train-cm", "--mode", "cd", "--config", c.config(), "--teacher",
                                     c.write("teacher/manifest.json", "{")], ["teacher/manifest.json"])),
    # reference stats
    ("stats-truncated", lambda c: (c.search(stats=c.truncated_copy(c.stats, "cut.npz")), ["cut.npz"])),
    ("stats-garbage", lambda c: (c.search(stats=c.write("garbage.npz", "not numpy at all")), ["garbage.npz"])),
    ("stats-missing-keys", lambda c: (c.search(stats=_npz(c, "keys.npz", mu=np.zeros(16))), ["keys.npz", "sigma"])),
    ("stats-other-features", lambda c: (c.search(stats=_other_stats(c)), ["other.npz", "feature network"])),
    ("stats-a-folder", lambda c: (c.evaluate(stats=_folder(c, "stats.npz")), ["stats.npz"])),
    ("stats-missing", lambda c: (c.evaluate(stats=c.tmp / "nowhere.npz"), ["nowhere.npz", "reference_stats"])),
    # feature networks
    ("features-garbage", lambda c: (c.search(features=c.write("f.safetensors", os.urandom(300))),
                                    ["f.safetensors"])),
    ("features-truncated", lambda c: (c.search(features=c.truncated_copy(c.features, "cut.safetensors")),
                                      ["cut.safetensors"])),
    ("features-json-garbage", lambda c: (c.search(features=c.write("inception.json", "{")), ["inception.json"])),
    ("features-json-no-keys", lambda c: (c.search(features=c.write("inception.json", "{}")),
                                         ["inception.json", "weights"])),
    ("features-missing", lambda c: (c.search(features=c.tmp / "nowhere.safetensors"), ["nowhere.safetensors"])),
    # the search's and the baselines' files
    ("baselines-truncated", lambda c: (c.search("--baselines", c.write("baselines.json", '{"nfe": 2, "prof')),
                                       ["baselines.json"])),
    ("coefficients-truncated", lambda c: (c.evaluate("lcsc", "--coefficients", c.write("coef.json", '{"coeff')),
                                          ["coef.json"])),
    ("baselines-a-list", lambda c: (c.search("--baselines", c.write("baselines.json", "[1, 2]")),
                                    ["baselines.json", "not the object"])),
    ("coefficients-foreign", lambda c: (c.evaluate("lcsc", "--coefficients", c.write("coef.json", '{"a": 1}')),
                                        ["coef.json", "has no 'coefficients'"])),
    ("journal-corrupt-middle", lambda c: (c.search(), [_journal(c, [HEADER, '{"type": "eval", "ke', "{}"]),
                                                       "line 2 of 3"])),
    ("journal-foreign", lambda c: (c.search(), [_journal(c, ['{"type": "something else"}']), "not an lcsc"])),
    ("journal-binary", lambda c: (c.search(), [c.write("search/state/journal.jsonl", b"\xff\xfe\x00\n" * 3)])),
    ("search-out-dir-is-a-file", lambda c: (c.search(), [c.write("search", "a file")])),
]


def _npz(ctx: Ctx, name: str, **arrays) -> str:
    path = ctx.tmp / name
    np.savez(path, **arrays)
    return str(path)


def _other_stats(ctx: Ctx) -> str:
    path = ctx.tmp / "other.npz"
    save_stats(path, np.zeros(16), np.eye(16), feature_hash="0123456789abcdef")
    return str(path)


def _folder(ctx: Ctx, name: str) -> str:
    (ctx.tmp / name).mkdir()
    return str(ctx.tmp / name)


def test_the_table_is_big_enough():
    assert len(CASES) >= 30 and len({name for name, _ in CASES}) == len(CASES)


@pytest.fixture
def ctx(trained, tmp_path):
    cfg, _ = trained
    moved = copy.deepcopy(cfg)
    moved["results_dir"] = str(tmp_path / "results")
    return Ctx(tmp_path, moved, Layout.of(cfg))


def _check_one_line(rc: int, err: str, stage: str | None, needles) -> str:
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


@pytest.mark.parametrize("build", [b for _, b in CASES], ids=[n for n, _ in CASES])
def test_bad_input_is_one_line(ctx, build, capsys):
    argv, needles = build(ctx)
    capsys.readouterr()
    rc = main(argv)
    captured = capsys.readouterr()
    _check_one_line(rc, captured.err, argv[0], needles)


def test_unknown_stage_is_one_line(capsys):
    line = _check_one_line(main(["bogus"]), capsys.readouterr().err, None, ["bogus"])
    assert line.endswith("see lcsc --help")


def test_several_bad_keys_are_listed_one_per_line(ctx, capsys):
    assert main(["train-dm", "--config", ctx.config(train__foo=1, train__bar=2)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "train.foo" in err and "train.bar" in err
    assert err.startswith("lcsc train-dm: ")


def test_an_interrupt_exits_130_with_one_line(monkeypatch, capsys):
    import lcsc.cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(lcsc.cli, "cmd_tabulate", interrupted)
    assert main(["tabulate"]) == 130
    assert capsys.readouterr().err == "lcsc tabulate: interrupted; rerun the same command to resume\n"


def test_a_bug_keeps_its_traceback(monkeypatch):
    import lcsc.cli

    def buggy(args):
        raise ValueError("a bug")

    monkeypatch.setattr(lcsc.cli, "cmd_tabulate", buggy)
    with pytest.raises(ValueError, match="a bug"):
        main(["tabulate"])


def test_python_m_lcsc_prints_one_line(ctx):
    """The real command: argparse's usage block and Python's traceback both stay away."""
    for argv, needle in ((["search", "--threads", "x"], "--threads"),
                         (ctx.search(stats=ctx.truncated_copy(ctx.stats, "cut.npz")), "cut.npz")):
        proc = subprocess.run([sys.executable, "-m", "lcsc", *argv], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        _check_one_line(proc.returncode, proc.stderr, argv[0], [needle])


# --- manifests list only files inside their trail -----------------------------------------------

def test_manifest_entries_stay_inside_the_trail(ctx):
    manifest = ctx.trail()
    data = json.loads(manifest.read_text())
    assert len(Trail.open(manifest)) == len(data["checkpoints"])
    for bad in ("/etc/passwd", "../../../../../../etc/passwd", "../trail/../../x", "sub/../../x"):
        write_json(manifest, dict(data, checkpoints=[dict(data["checkpoints"][0], file=bad),
                                                     *data["checkpoints"][1:]]))
        for verify in (True, False):
            with pytest.raises(TrailError, match=r"checkpoints\[0\] file .* outside the trail"):
                Trail.open(manifest, verify=verify)
    # a declared root must be relative and hold a trail
    for root, match in (("/", "relative"), ("..", "not a trail's folder")):
        write_json(manifest, dict(data, root=root))
        with pytest.raises(TrailError, match=match):
            Trail.open(manifest)


def test_truncated_trails_reach_their_base_trail_only(ctx):
    base = ctx.trail()  # <tmp>/trail/manifest.json
    short = ctx.tmp / "dm_first50" / "trail" / "manifest.json"
    written = truncate(base, 0.5, short)
    assert written["root"] == "../../trail"
    assert written["checkpoints"][0]["file"].startswith("../../trail/")
    trail = Trail.open(short)
    assert trail.files_root.resolve() == base.parent.resolve()
    assert trail.fingerprint == Trail.open(base).fingerprint[:len(trail)]
    # a truncated manifest written before manifests declared their root still opens
    legacy = {k: v for k, v in written.items() if k != "root"}
    write_json(short, legacy)
    assert Trail.open(short).fingerprint == trail.fingerprint
    # but its entries may not leave the base trail's folder
    escaped = dict(legacy, checkpoints=[written["checkpoints"][0],
                                        dict(written["checkpoints"][1], file="../../trail/../x.safetensors")])
    write_json(short, escaped)
    with pytest.raises(TrailError, match="outside the trail"):
        Trail.open(short)
    write_json(short, dict(escaped, root="../../trail"))
    with pytest.raises(TrailError, match="outside the trail"):
        Trail.open(short)
    # a truncated trail of a truncated trail reaches the same files
    shorter = truncate(_rewrite(short, written), 1.0, ctx.tmp / "again" / "trail" / "manifest.json")
    assert shorter["root"] == "../../trail"
    assert Trail.open(ctx.tmp / "again" / "trail" / "manifest.json").steps == trail.steps


def _rewrite(path: Path, manifest: dict) -> Path:
    write_json(path, manifest)
    return path
