"""Every expected failure of `python -m lcsc <stage>` is one line on stderr, `lcsc <stage>: <file or
key>: <what is wrong>; <what to do>`, with exit code 2 and no traceback: bad configs, bad files
(truncated, foreign, outside the trail) and bad command-line arguments alike. (The workshop, Ctx,
and its `ctx` fixture: tests/helpers.py and tests/conftest.py.)"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import Ctx, table_case
from lcsc.cli import main
from lcsc.kernel.fid import save_stats
from lcsc.kernel.io import sha256, write_json
from lcsc.kernel.paths import Layout
from lcsc.kernel.tensors import save_tensors

INF, NAN = float("inf"), float("nan")


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
    ("cfg-wrong-type", lambda c: (["train-dm", "--config", c.config(train__iterations="many")], ["train.iterations"])),
    ("cfg-negative", lambda c: (["train-dm", "--config", c.config(train__batch_size=-4)], ["train.batch_size"])),
    ("cfg-nan-lr", lambda c: (["train-dm", "--config", c.config(train__lr=NAN)], ["train.lr"])),
    ("cfg-huge-seed", lambda c: (["train-dm", "--config", c.config(seed=2**70)], ["seed"])),
    ("cfg-unknown-optimizer", lambda c: (c.search(config=c.config(search__optimizer="Foo")), ["search.optimizer"])),
    ("cfg-bad-device", lambda c: (c.search(config=c.config(search__devices=["gpu0"])), ["search.devices"])),
    ("cfg-inf-sigma", lambda c: (c.search(config=c.config(search__sigma=INF)), ["search.sigma"])),
    ("cfg-inf-bounds", lambda c: (c.search(config=c.config(search__bounds=[-1.0, INF])), ["search.bounds"])),
    (
        "cfg-yaml-syntax",
        lambda c: (["train-dm", "--config", c.write("broken.yaml", "train: {lr: [1, 2\n")], ["broken.yaml"]),
    ),
    ("cfg-yaml-list", lambda c: (["train-dm", "--config", c.write("list.yaml", "- 1\n- 2\n")], ["list.yaml"])),
    ("cfg-missing-file", lambda c: (["train-dm", "--config", str(c.tmp / "nonexistent.yaml")], ["nonexistent.yaml"])),
    ("cfg-is-a-folder", lambda c: (["train-dm", "--config", str(c.tmp)], [str(c.tmp)])),
    (
        "cfg-results-dir-is-a-file",
        lambda c: (
            ["train-dm", "--config", c.config(results_dir=c.write("results.txt", "not a folder"))],
            ["results.txt"],
        ),
    ),
    # command-line arguments
    ("cli-config-json-bad", lambda c: (["train-dm", "--config-json", "{bad"], ["--config-json"])),
    ("cli-config-json-list", lambda c: (["train-dm", "--config-json", "[1, 2]"], ["--config-json"])),
    (
        "cli-wildcards-novalue",
        lambda c: (["train-dm", "--config", c.config(), "--wildcards", "novalue"], ["--wildcards", "novalue"]),
    ),
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
    (
        "manifest-not-json",
        lambda c: (
            c.search(manifest=c.write("m/manifest.json", '{"format": "lcsc-tr')),
            ["manifest.json", "not valid JSON"],
        ),
    ),
    ("manifest-a-list", lambda c: (c.search(manifest=c.write("m/manifest.json", "[]")), ["manifest.json"])),
    ("manifest-missing", lambda c: (c.search(manifest=c.tmp / "nowhere" / "manifest.json"), ["nowhere"])),
    (
        "manifest-no-checkpoints",
        lambda c: (
            c.search(manifest=c.edit_manifest(lambda d, f: d.pop("checkpoints"))),
            ["manifest.json", "checkpoints"],
        ),
    ),
    (
        "manifest-entry-no-sha",
        lambda c: (
            c.search(manifest=c.edit_manifest(_set_entry("sha256", None, 1))),
            ["manifest.json", "checkpoints[1]", "sha256"],
        ),
    ),
    (
        "manifest-entry-escapes",
        lambda c: (
            c.search(manifest=c.edit_manifest(_set_entry("file", "../../../../../../../../etc/passwd"))),
            ["manifest.json", "checkpoints[0]"],
        ),
    ),
    (
        "manifest-entry-absolute",
        lambda c: (
            c.search(
                manifest=c.edit_manifest(_set_entry("file", str(c.manifest.parent / "step_0000010.safetensors")))
            ),
            ["manifest.json", "checkpoints[0]"],
        ),
    ),
    (
        "manifest-ema-escapes",
        lambda c: (
            c.search(manifest=c.edit_manifest(_set_entry("file", "../trail/../../x.safetensors", section="ema"))),
            ["manifest.json", "ema[0]"],
        ),
    ),
    (
        "manifest-entry-symlink-out",
        lambda c: (c.search(manifest=c.edit_manifest(_symlink_out)), ["manifest.json", "checkpoints[0]"]),
    ),
    (
        "checkpoint-truncated",
        lambda c: (
            c.evaluate(manifest=c.edit_manifest(_cut_checkpoint)),
            ["step_0000010.safetensors", "not a readable safetensors file"],
        ),
    ),
    (
        "checkpoint-changed",
        lambda c: (c.search(manifest=c.edit_manifest(_changed_checkpoint)), ["step_0000020.safetensors", "sha256"]),
    ),
    (
        "checkpoint-foreign",
        lambda c: (c.evaluate(manifest=c.edit_manifest(_foreign_checkpoint)), ["step_0000010.safetensors"]),
    ),
    ("resume-state-truncated", lambda c: (_resume_cut(c), ["resume.safetensors"])),
    (
        "teacher-not-json",
        lambda c: (
            ["train-cm", "--mode", "cd", "--config", c.config(), "--teacher", c.write("teacher/manifest.json", "{")],
            ["teacher/manifest.json"],
        ),
    ),
    # reference stats
    ("stats-truncated", lambda c: (c.search(stats=c.truncated_copy(c.stats, "cut.npz")), ["cut.npz"])),
    ("stats-garbage", lambda c: (c.search(stats=c.write("garbage.npz", "not numpy at all")), ["garbage.npz"])),
    ("stats-missing-keys", lambda c: (c.search(stats=_npz(c, "keys.npz", mu=np.zeros(16))), ["keys.npz", "sigma"])),
    ("stats-other-features", lambda c: (c.search(stats=_other_stats(c)), ["other.npz", "feature network"])),
    ("stats-a-folder", lambda c: (c.evaluate(stats=_folder(c, "stats.npz")), ["stats.npz"])),
    ("stats-missing", lambda c: (c.evaluate(stats=c.tmp / "nowhere.npz"), ["nowhere.npz", "reference_stats"])),
    # feature networks
    ("features-garbage", lambda c: (c.search(features=c.write("f.safetensors", os.urandom(300))), ["f.safetensors"])),
    (
        "features-truncated",
        lambda c: (c.search(features=c.truncated_copy(c.features, "cut.safetensors")), ["cut.safetensors"]),
    ),
    ("features-json-garbage", lambda c: (c.search(features=c.write("inception.json", "{")), ["inception.json"])),
    (
        "features-json-no-keys",
        lambda c: (c.search(features=c.write("inception.json", "{}")), ["inception.json", "weights"]),
    ),
    ("features-missing", lambda c: (c.search(features=c.tmp / "nowhere.safetensors"), ["nowhere.safetensors"])),
    # the search's and the baselines' files
    (
        "baselines-truncated",
        lambda c: (c.search("--baselines", c.write("baselines.json", '{"nfe": 2, "prof')), ["baselines.json"]),
    ),
    (
        "coefficients-truncated",
        lambda c: (c.evaluate("lcsc", "--coefficients", c.write("coef.json", '{"coeff')), ["coef.json"]),
    ),
    (
        "baselines-a-list",
        lambda c: (c.search("--baselines", c.write("baselines.json", "[1, 2]")), ["baselines.json", "not the object"]),
    ),
    (
        "coefficients-foreign",
        lambda c: (
            c.evaluate("lcsc", "--coefficients", c.write("coef.json", '{"a": 1}')),
            ["coef.json", "has no 'coefficients'"],
        ),
    ),
    (
        "journal-corrupt-middle",
        lambda c: (c.search(), [_journal(c, [HEADER, '{"type": "eval", "ke', "{}"]), "line 2 of 3"]),
    ),
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


@pytest.mark.parametrize("build", [b for _, b in CASES], ids=[n for n, _ in CASES])
def test_bad_input_is_one_line(ctx, build, capsys):
    table_case(build, ctx, capsys)


def test_several_bad_keys_are_listed_one_per_line(ctx, capsys):
    assert main(["train-dm", "--config", ctx.config(train__foo=1, train__bar=2)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "train.foo" in err and "train.bar" in err
    assert err.startswith("lcsc train-dm: ")


def test_missing_inputs_name_the_file(trained, tmp_path, capsys):
    cfg, cfg_file = trained
    assert (
        main(["evaluate", "--config", str(cfg_file), "--variant", "last", "--stats", str(tmp_path / "nowhere.npz")])
        == 2
    )
    err = capsys.readouterr().err
    assert "nowhere.npz" in err and "reference_stats" in err
    manifest = Layout.of(cfg).manifest("dm")
    data = json.loads(manifest.read_text())
    data["checkpoints"][0]["file"] = "step_missing.safetensors"
    write_json(tmp_path / "manifest.json", data)
    assert main(["search", "--config", str(cfg_file), "--manifest", str(tmp_path / "manifest.json")]) == 2
    assert "step_missing.safetensors: listed in" in capsys.readouterr().err
