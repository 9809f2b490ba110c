"""The command line: arguments parsed into each stage's Paths record (defaults from the results
layout, explicit flags first), one-line errors, interrupts and bugs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, tiny_config
from helpers import check_one_line, trail_hashes
from lcsc.cli import main
from lcsc.cli.commands import _wildcards
from lcsc.kernel.config import runtime_config
from lcsc.kernel.errors import UsageError
from lcsc.kernel.paths import Layout
from lcsc.stages import (
    RUNTIME_ENV,
    baselines,
    evaluate,
    reference_stats,
    search,
    stage_config,
    tabulate,
    train_cm,
    train_dm,
    train_features,
    truncate_trail,
)


@pytest.fixture
def tiny(tmp_path):
    """A tiny config with both consistency models, as a file; its results layout."""
    cfg = tiny_config(tmp_path / "results", consistency={"modes": ["cd", "ct"]})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    return cfg, str(tmp_path / "c.yaml"), Layout.of(cfg)


def _capture(monkeypatch, stage, returns=None) -> list:
    """Replace a stage's run: each call's (cfg, paths, the other arguments) is kept instead."""
    calls = []

    def run(cfg, paths, *args):
        calls.append((cfg, paths, args))
        return returns

    monkeypatch.setattr(stage, "run", run)
    return calls


def _parsed(monkeypatch, stage, argv, returns=None):
    """The Paths record `lcsc <argv>` hands the stage, and the stage's other arguments."""
    calls = _capture(monkeypatch, stage, returns)
    assert main(argv) == 0
    [(cfg, paths, args)] = calls
    assert type(paths) is stage.Paths
    return paths, args, cfg


def test_unknown_stage_is_one_line(capsys):
    line = check_one_line(main(["bogus"]), capsys.readouterr().err, None, ["bogus"])
    assert line.endswith("see lcsc --help")


def test_an_interrupt_exits_130_with_one_line(monkeypatch, capsys):
    import lcsc.cli.commands

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(lcsc.cli.commands, "_config", interrupted)  # the first thing a command does
    assert main(["tabulate"]) == 130
    assert capsys.readouterr().err == "lcsc tabulate: interrupted; rerun the same command to resume\n"


def test_a_bug_keeps_its_traceback(monkeypatch):
    import lcsc.cli.commands

    def buggy(args):
        raise ValueError("a bug")

    monkeypatch.setattr(lcsc.cli.commands, "_config", buggy)
    with pytest.raises(ValueError, match="a bug"):
        main(["tabulate"])


@pytest.mark.slow
def test_python_m_lcsc_prints_one_line(ctx):
    """The real command: argparse's usage block and Python's traceback both stay away."""
    for argv, needle in (
        (["search", "--threads", "x"], "--threads"),
        (ctx.search(stats=ctx.truncated_copy(ctx.stats, "cut.npz")), "cut.npz"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "lcsc", *argv], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        check_one_line(proc.returncode, proc.stderr, argv[0], [needle])


def test_the_cli_refuses_a_trail_of_another_model(trained, tmp_path, capsys):
    cfg, cfg_file = trained
    dm_manifest = f"{cfg['results_dir']}/{cfg['experiment']}/dm/trail/manifest.json"
    assert (
        main(
            [
                "baselines",
                "--model",
                "cm_cd",
                "--manifest",
                dm_manifest,
                "--config",
                str(cfg_file),
                "--out",
                str(tmp_path / "b.json"),
            ]
        )
        == 2
    )
    assert "holds a dm trail; pass --model dm" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()
    assert (
        main(
            [
                "evaluate",
                "--model",
                "dm",
                "--variant",
                "ema_0.5",
                "--config",
                str(cfg_file),
                "--out",
                str(tmp_path / "e.json"),
            ]
        )
        == 2
    )
    assert "no weights 'ema_0.5'; it has last and the EMAs ema_0.9, ema_0.99" in capsys.readouterr().err
    assert main(["search", "--model", "cm_cd_firstx", "--config", str(cfg_file)]) == 2
    assert "does not name a truncated trail" in capsys.readouterr().err


@pytest.mark.slow
def test_two_experiments_in_one_results_folder_do_not_clobber(tmp_path):
    for name, lr in (("a", 1e-3), ("b", 5e-4)):
        cfg = tiny_config(
            tmp_path / "results", experiment=name, train={"iterations": 20, "checkpoint_every": 10, "lr": lr}
        )
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["train-dm", "--config", str(tmp_path / f"{name}.yaml")]) == 0
    a = trail_hashes(tmp_path / "results" / "a" / "dm" / "trail" / "manifest.json")
    b = trail_hashes(tmp_path / "results" / "b" / "dm" / "trail" / "manifest.json")
    assert len(a) == len(b) == 2 and a != b


def test_search_paths_come_from_the_results_layout_and_flags_win(tiny, tmp_path, monkeypatch):
    cfg, config, layout = tiny
    stats = layout.stats("digits12", "train", "classifier")
    paths, args, seen = _parsed(monkeypatch, search, ["search", "--config", config])
    assert paths == search.Paths(
        manifest=layout.manifest("dm"),
        features=layout.feature_net("classifier"),
        stats=stats,
        coefficients=layout.coefficients("dm", 2),
        history=layout.history("dm", 2),
        best=layout.best_weights("dm", 2),
        journal=layout.journal("dm", 2),
        baselines=None,
    )
    assert args[0] == "dm" and seen["search"]["budget"] == 8
    assert str(paths.coefficients).endswith("results/tiny/dm/search/nfe2/coefficients.json")
    # the baselines stage's file, where the layout puts it, once it exists
    layout.baselines("dm").parent.mkdir(parents=True)
    layout.baselines("dm").write_text("{}")
    assert _parsed(monkeypatch, search, ["search", "--config", config])[0].baselines == layout.baselines("dm")
    # a consistency model searches at its own NFE, in its own folder
    paths, args, seen = _parsed(
        monkeypatch, search, ["search", "--config", config, "--model", "cm_ct", "--set", "search.budget=3"]
    )
    assert (paths.manifest, paths.coefficients, paths.journal) == (
        layout.manifest("cm_ct"),
        layout.coefficients("cm_ct", 1),
        layout.journal("cm_ct", 1),
    )
    assert args[0] == "cm_ct" and seen["search"]["nfe"] == 1 and seen["search"]["budget"] == 3
    assert paths.baselines is None  # cm_ct has none yet
    d = tmp_path / "out"
    paths, _, _ = _parsed(
        monkeypatch,
        search,
        [
            "search",
            "--config",
            config,
            "--out-dir",
            str(d),
            "--manifest",
            "m.json",
            "--features",
            "f.safetensors",
            "--stats",
            "s.npz",
            "--baselines",
            "b.json",
        ],
    )
    assert paths == search.Paths(
        manifest=Path("m.json"),
        features=Path("f.safetensors"),
        stats=Path("s.npz"),
        coefficients=d / "coefficients.json",
        history=d / "history.csv",
        best=d / "best.safetensors",
        journal=d / "state" / "journal.jsonl",
        baselines=Path("b.json"),
    )
    paths, _, _ = _parsed(
        monkeypatch, search, ["search", "--config", config, "--out-dir", str(d), "--history", str(tmp_path / "h.csv")]
    )
    assert paths.history == tmp_path / "h.csv" and paths.coefficients == d / "coefficients.json"
    assert paths.journal == d / "state" / "journal.jsonl"


def test_evaluate_and_baselines_paths(tiny, monkeypatch):
    cfg, config, layout = tiny
    common = dict(
        manifest=layout.manifest("dm"),
        features=layout.feature_net("classifier"),
        stats=layout.stats("digits12", "train", "classifier"),
    )
    paths, args, _ = _parsed(monkeypatch, evaluate, ["evaluate", "--config", config, "--variant", "ema_0.99"])
    assert paths == evaluate.Paths(
        **common,
        result=layout.eval_json("dm", "ema_0.99"),
        grid=layout.eval_grid("dm", "ema_0.99"),
        coefficients=(layout.coefficients("dm", 2),),
        baselines=None,
    )
    assert args[:2] == ("dm", "ema_0.99")
    paths, args, seen = _parsed(
        monkeypatch,
        evaluate,
        [
            "evaluate",
            "--config",
            config,
            "--model",
            "cm_cd",
            "--variant",
            "lcsc",
            "--out",
            "e.json",
            "--coefficients",
            "c.json",
            "d.json",
        ],
    )
    assert (paths.manifest, paths.result, paths.grid, paths.coefficients) == (
        layout.manifest("cm_cd"),
        Path("e.json"),
        layout.eval_grid("cm_cd", "lcsc"),
        (Path("c.json"), Path("d.json")),
    )
    assert args[:2] == ("cm_cd", "lcsc") and seen["evaluate"]["nfe"] == [1, 2] and seen["search"]["nfe"] == 1
    paths, args, _ = _parsed(monkeypatch, baselines, ["baselines", "--config", config])
    assert paths == baselines.Paths(**common, baselines=layout.baselines("dm")) and args[0] == "dm"
    paths, _, _ = _parsed(
        monkeypatch,
        baselines,
        ["baselines", "--config", config, "--model", "cm_ct_first50", "--out", "b.json", "--stats", "s.npz"],
    )
    assert paths == baselines.Paths(
        manifest=layout.manifest("cm_ct_first50"),
        features=common["features"],
        stats=Path("s.npz"),
        baselines=Path("b.json"),
    )


def test_training_and_feature_paths(tiny, monkeypatch):
    cfg, config, layout = tiny
    paths, _, seen = _parsed(monkeypatch, train_dm, ["train-dm", "--config", config])
    assert paths == train_dm.Paths(trail=layout.trail_dir("dm")) and seen["train"]["iterations"] == 40
    assert _parsed(monkeypatch, train_dm, ["train-dm", "--config", config, "--out-dir", "t"])[0].trail == Path("t")
    # distillation reads the diffusion trail; training from data reads none
    paths, args, seen = _parsed(monkeypatch, train_cm, ["train-cm", "--config", config, "--mode", "cd"])
    assert paths == train_cm.Paths(trail=layout.trail_dir("cm_cd"), teacher=layout.manifest("dm")) and args[0] == "cd"
    assert seen["train"]["iterations"] == 30  # consistency.train's
    paths, args, _ = _parsed(monkeypatch, train_cm, ["train-cm", "--config", config, "--mode", "ct", "--teacher", "x"])
    assert paths == train_cm.Paths(trail=layout.trail_dir("cm_ct"), teacher=None) and args[0] == "ct"
    paths, _, _ = _parsed(
        monkeypatch, train_cm, ["train-cm", "--config", config, "--mode", "cd", "--teacher", "m.json"]
    )
    assert paths.teacher == Path("m.json")
    paths, args, _ = _parsed(
        monkeypatch, truncate_trail, ["truncate-trail", "--config", config, "--model", "cm_ct_first25"]
    )
    assert paths == truncate_trail.Paths(manifest=layout.manifest("cm_ct"), out=layout.manifest("cm_ct_first25"))
    assert args == ("cm_ct_first25",)  # no device, no MLflow run: it reads and writes one manifest
    paths, _, _ = _parsed(monkeypatch, train_features, ["train-features", "--config", config])
    assert paths == train_features.Paths(net=layout.feature_net("classifier"))
    paths, args, _ = _parsed(monkeypatch, reference_stats, ["reference-stats", "--config", config, "--split", "test"])
    assert paths == reference_stats.Paths(
        features=layout.feature_net("classifier"),
        stats=layout.stats("digits12", "test", "classifier"),
        grid=layout.real_grid("digits12", "test"),
    )
    assert args[0] == "test"
    paths, _, _ = _parsed(
        monkeypatch,
        reference_stats,
        ["reference-stats", "--config", config, "--features", "f", "--out", "s.npz", "--grid", "r.png"],
    )
    assert paths == reference_stats.Paths(features=Path("f"), stats=Path("s.npz"), grid=Path("r.png"))


def test_tabulate_paths_list_each_models_files_in_order(tiny, tmp_path, monkeypatch, capsys):
    cfg, config, layout = tiny
    summary = tmp_path / "summary.md"
    summary.write_text("the summary\n")
    paths, args, _ = _parsed(monkeypatch, tabulate, ["tabulate", "--config", config], returns=summary)
    assert capsys.readouterr().out == "the summary\n\n"
    names = ("dm", "cm_cd", "cm_ct")
    assert paths.models == names and paths.report == layout.report_dir() and args[0] is None
    assert paths.manifests == tuple(layout.manifest(m) for m in names)
    assert paths.searches == (
        layout.coefficients("dm", 2),
        layout.coefficients("cm_cd", 1),
        layout.coefficients("cm_ct", 1),
    )
    assert paths.histories == (layout.history("dm", 2), layout.history("cm_cd", 1), layout.history("cm_ct", 1))
    dm = [
        "last",
        "ema_0.9",
        "ema_0.99",
        "uniform",
        "lawa_2",
        "ema_0.9_profile",
        "ema_0.99_profile",
        "power_0.05",
        "power_0.1",
        "greedy_soup",
        "lcsc",
    ]
    assert paths.evaluations == tuple(layout.eval_json(m, v) for m in names for v in dm)
    assert paths.grids == tuple(layout.eval_grid(m, v) for m in names for v in dm)
    paths, args, _ = _parsed(
        monkeypatch,
        tabulate,
        ["tabulate", "--config", config, "--models", "cm_ct", "dm", "--variants", "lcsc", "last", "--out-dir", "r"],
        returns=summary,
    )
    assert paths.models == ("cm_ct", "dm") and args[0] == ["lcsc", "last"] and paths.report == Path("r")
    assert paths.evaluations == tuple(layout.eval_json(m, v) for m in ("cm_ct", "dm") for v in ("last", "lcsc"))
    assert paths.manifests == (layout.manifest("cm_ct"), layout.manifest("dm"))


def test_tabulate_file_lists_that_do_not_fit_the_models_are_one_line(tiny, monkeypatch, capsys):
    cfg, config, _ = tiny
    calls = _capture(monkeypatch, tabulate)
    for extra, line in (
        (
            ["--models", "dm", "--manifests", "a.json", "b.json"],
            "lcsc tabulate: --manifests: 2 files for 1 models; give one per model, in the order of --models",
        ),
        (
            ["--models", "dm", "cm_ct", "--histories", "h.csv"],
            "lcsc tabulate: --histories: 1 files for 2 models; give one per model, in the order of --models",
        ),
        (
            ["--models", "dm", "--evaluations", "e1.json", "e2.json", "--grids", "g.png"],
            "lcsc tabulate: --grids: 1 files for 2 evaluations; give one per evaluation, in the same order",
        ),
        (
            ["--models", "gan"],
            "lcsc tabulate: unknown model 'gan'; the models are dm, cm_cd, cm_ct, "
            "<model>_first<percent> and imported (an imported trail)",
        ),
    ):
        assert main(["tabulate", "--config", config, *extra]) == 2
        err = [x for x in capsys.readouterr().err.splitlines() if not x.startswith("lcsc: warning: ")]
        assert err == [line]
    assert calls == []


def test_a_rules_slice_and_runtime_keys_place_the_outputs(tiny, tmp_path, monkeypatch, capsys):
    cfg, _, _ = tiny
    runtime = dict(runtime_config(cfg), results_dir=str(tmp_path / "elsewhere"))
    argv = [
        "search",
        "--config-json",
        json.dumps(stage_config(cfg, "search", "cm_cd")),
        "--runtime-json",
        json.dumps(runtime),
        "--model",
        "cm_cd",
        "--wildcards",
        "model=cm_cd,nfe=1",
    ]
    paths, args, seen = _parsed(monkeypatch, search, argv)
    moved = Layout(tmp_path / "elsewhere", "tiny")
    assert paths.coefficients == moved.coefficients("cm_cd", 1) and paths.manifest == moved.manifest("cm_cd")
    assert stage_config(seen, "search", "cm_cd") == stage_config(cfg, "search", "cm_cd")
    assert main(["search", "--runtime-json", json.dumps(runtime)]) == 2
    assert capsys.readouterr().err == (
        "lcsc search: --runtime-json: only together with --config-json (the workflow passes both)\n"
    )


def test_the_runtime_keys_come_from_the_workflows_environment_variable(tiny, tmp_path, monkeypatch, capsys):
    """What the workflow sets (LCSC_RUNTIME_JSON) places the outputs as --runtime-json does; a flag
    given wins; a bad key in it is one line naming the variable."""
    cfg, _, _ = tiny
    runtime = dict(runtime_config(cfg), results_dir=str(tmp_path / "from-env"))
    monkeypatch.setenv(RUNTIME_ENV, json.dumps(runtime))
    argv = ["search", "--config-json", json.dumps(stage_config(cfg, "search", "dm")), "--model", "dm"]
    paths, _, _ = _parsed(monkeypatch, search, argv)
    assert paths.manifest == Layout(tmp_path / "from-env", "tiny").manifest("dm")
    flag = dict(runtime, results_dir=str(tmp_path / "from-flag"))
    paths, _, _ = _parsed(monkeypatch, search, [*argv, "--runtime-json", json.dumps(flag)])
    assert paths.manifest == Layout(tmp_path / "from-flag", "tiny").manifest("dm")
    monkeypatch.setenv(RUNTIME_ENV, json.dumps({"search": {"budget": 3}}))
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(f"lcsc search: {RUNTIME_ENV}: search.budget: not a run-time key")


def test_wildcards_name_the_job():
    assert _wildcards("model=cm_cd,nfe=1") == {"model": "cm_cd", "nfe": "1"}
    assert _wildcards(None) == _wildcards("") == {}
    assert _wildcards("a=1,,b=") == {"a": "1", "b": ""}
    for bad in ("novalue", "=x", "a=1,b"):
        with pytest.raises(UsageError, match="--wildcards: .* is not KEY=VALUE"):
            _wildcards(bad)
