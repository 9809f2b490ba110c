"""Stage tabulate: the report from exactly the files its Paths record lists, and without torch."""

import csv
import json
import random
from pathlib import Path

import pytest
import yaml

from conftest import REPO, tiny_config
from lcsc.cli import main
from lcsc.kernel.errors import ConfigError, InputError
from lcsc.kernel.io import write_json
from lcsc.kernel.paths import REPORT_FILES, Layout
from lcsc.stages import tabulate

# hand-made FIDs: the diffusion model and the first half of its trail (the training-cost experiment)
FIDS = {
    "dm": {
        "last": {1: 30.0, 2: 20.0},
        "ema_0.9": {1: 27.0, 2: 19.0},
        "ema_0.99": {1: 25.0, 2: 18.0},
        "uniform": {1: 28.0, 2: 19.5},
        "ema_0.99_profile": {1: 26.0, 2: 19.25},
        "lcsc": {1: 17.0, 2: 15.0},
    },
    "dm_first50": {"last": {1: 24.0, 2: 21.0}, "lcsc": {1: 19.0, 2: 17.5}},
}
SUMMARY_CSV = """model,variant,nfe1,nfe2
dm,last,30.0000,20.0000
dm,ema_0.9,27.0000,19.0000
dm,ema_0.99,25.0000,18.0000
dm,uniform,28.0000,19.5000
dm,ema_0.99_profile,26.0000,19.2500
dm,lcsc,17.0000,15.0000
dm_first50,last,24.0000,21.0000
dm_first50,lcsc,19.0000,17.5000
"""


def _config(tmp_path: Path) -> dict:
    return tiny_config(
        tmp_path / "results",
        cost={"fraction": 0.5, "models": ["dm"]},
        baselines={"lawa_last": [], "ema_decays": [0.99], "power_sigma_rels": [], "greedy_soup": False},
    )


def _inputs(tmp_path: Path, cfg: dict) -> dict:
    """Every file the report reads, in a folder of its own under names that say nothing (an
    evaluation names its model and variant inside); decoys where the results layout would put them."""
    src = tmp_path / "in"
    src.mkdir()
    evaluations, grids = [], []
    for model, results in FIDS.items():
        for variant, fid in results.items():
            i = len(evaluations)
            write_json(
                src / f"e{i}.json", {"model": model, "variant": variant, "fid": {str(n): f for n, f in fid.items()}}
            )
            (src / f"g{i}.png").write_bytes(f"grid of {model} {variant}".encode())
            evaluations.append(src / f"e{i}.json")
            grids.append(src / f"g{i}.png")
            decoy = Layout.of(cfg).eval_json(model, variant)
            write_json(decoy, {"model": model, "variant": variant, "fid": {"1": 99.0, "2": 99.0}})
    write_json(src / "m0.json", {"iterations": 40, "checkpoints": [{}] * 4})
    write_json(src / "m1.json", {"iterations": 20, "truncated_from": {"iterations": 40}, "checkpoints": [{}] * 2})
    for i, (steps, rescored) in enumerate((([10, 20, 30, 40], 16.5), ([10, 20], None))):
        write_json(
            src / f"s{i}.json",
            {
                "optimizer": "CMA",
                "budget": 8,
                "trail_steps": steps,
                "parametrization": "sum_to_one",
                "coefficients": [1 / len(steps)] * len(steps),
                "starts": {"last": 20.5, "uniform": 19.75},
                "start": {"name": "uniform", "fitness": 19.75},
                "evaluation": 5,
                "fitness": 16.0,
                "rescore_fitness": rescored,
            },
        )
        (src / f"h{i}.csv").write_text(
            "evaluation,phase,name,fitness,best_so_far,seconds,c000\n"
            "0,start,last,20.5,20.5,0.1,1.0\n1,start,uniform,19.75,19.75,0.1,0.5\n"
            "2,search,,16.0,16.0,0.1,0.3\n3,rescore,of evaluation 2,16.5,16.0,0.1,0.3\n"
        )
    return {
        "models": ("dm", "dm_first50"),
        "manifests": (src / "m0.json", src / "m1.json"),
        "searches": (src / "s0.json", src / "s1.json"),
        "histories": (src / "h0.csv", src / "h1.csv"),
        "evaluations": tuple(evaluations),
        "grids": tuple(grids),
    }


def test_the_report_is_made_of_the_files_listed_in_any_order(tmp_path):
    cfg = _config(tmp_path)
    given = _inputs(tmp_path, cfg)
    summary = tabulate.run(cfg, tabulate.Paths(**given, report=tmp_path / "a"))
    assert summary == tmp_path / "a" / "summary.md"
    assert (tmp_path / "a" / "summary.csv").read_text() == SUMMARY_CSV  # the listed files, not the decoys
    for name in REPORT_FILES.values():
        assert (tmp_path / "a" / name).stat().st_size > 0, name
    for model, results in FIDS.items():  # each grid is the one listed with its evaluation
        for variant in results:
            assert (
                tmp_path / "a" / f"samples_{model}_{variant}.png"
            ).read_bytes() == f"grid of {model} {variant}".encode()
    # the same files in another order: the same report
    pairs = list(zip(given["evaluations"], given["grids"]))
    random.Random(0).shuffle(pairs)
    shuffled = dict(given, evaluations=tuple(e for e, _ in pairs), grids=tuple(g for _, g in pairs))
    assert shuffled["evaluations"] != given["evaluations"]
    tabulate.run(cfg, tabulate.Paths(**shuffled, report=tmp_path / "b"))
    for name in ("summary.csv", "summary.md"):
        assert (tmp_path / "b" / name).read_text() == (tmp_path / "a" / name).read_text(), name
    for model, results in FIDS.items():
        for variant in results:
            name = f"samples_{model}_{variant}.png"
            assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "a" / name).read_bytes(), name


def test_the_summary_states_the_tables_and_claims_in_numbers(tmp_path):
    cfg = _config(tmp_path)
    md = tabulate.run(cfg, tabulate.Paths(**_inputs(tmp_path, cfg), report=tmp_path / "r")).read_text()
    sections = {part.split("\n", 1)[0]: part for part in md.split("\n## ")[1:]}
    assert list(sections)[:2] == ["dm (diffusion model)", "dm_first50 (training-cost experiment)"]
    dm = sections["dm (diffusion model)"]
    assert "| ema_0.99 | 25.00 † | 18.00 † |" in dm and "| lcsc | **17.00** | **15.00** |" in dm
    assert "| ema_0.99_profile | 26.00 | 19.25 |" in dm and "| ema_0.9 | 27.00 | 19.00 |" in dm
    assert (
        "- At the search NFE 2, LCSC's FID 15.00 is below both the last checkpoint's 20.00 and the best "
        "EMA's (ema_0.99) 18.00" in dm
    )
    assert "- At NFE 2 LCSC beats the best baseline, ema_0.99 (18.00)." in dm
    assert "- LCSC at NFE 1 (FID 17.00) matches or beats the best EMA at NFE 2 (FID 18.00)." in dm
    assert "Paper's claim" not in dm  # that sentence is the consistency models'
    assert (
        "- Search: CMA, 8 evaluations over 4 checkpoints (sum_to_one) at NFE 2. Starting points scored: "
        "last 20.50, uniform 19.75; the optimizer started at uniform. Kept: evaluation 5, screening fitness "
        "16.00, re-scored 16.50 on other noise." in dm
    )
    cost = sections["dm_first50 (training-cost experiment)"]
    assert (
        "- LCSC over the first 50% of dm's training (2 checkpoints, steps up to 20 of 40) scores FID 17.50 at 2 "
        "NFE; that trail's own last checkpoint scores 21.00, and the full run's last 20.00 and its best EMA "
        "(ema_0.99) 18.00. It matches or beats the full run's best (ema_0.99) with 20 of 40 training "
        "iterations: an implied training speed-up of 40/20 = 2.0x." in cost
    )
    assert "over 2 checkpoints (sum_to_one) at NFE 2" in cost and "screening fitness 16.00." in cost
    assert "- dm_lcsc: ![samples_dm_lcsc](samples_dm_lcsc.png)" in md
    assert "at each model's search NFEs and samples (dm NFE 2, 64 samples; dm_first50 NFE 2, 64 samples)." in md


def test_the_header_gives_each_model_its_own_search_nfes_and_samples(tmp_path):
    """A consistency model searched at two NFEs on fewer samples than the DM says so, not the DM's."""
    cfg = tiny_config(tmp_path / "results", consistency={"modes": ["cd"], "search_nfe": [1, 2], "search_samples": 32})
    assert (
        tabulate._search_targets(cfg, {"dm": None, "cm_cd": None})
        == "dm NFE 2, 64 samples; cm_cd NFE 1 and 2, 32 samples"
    )


def test_variants_limit_the_report_and_the_logged_metrics(tmp_path):
    cfg = _config(tmp_path)
    given = _inputs(tmp_path, cfg)
    logged, artifacts, parent = {}, [], {}

    class Run:
        def log_metrics(self, metrics, step):
            for k, v in metrics.items():
                logged[k, step] = v

        def log_parent_metrics(self, metrics):
            parent.update(metrics)

        def log_artifact(self, path, folder=None):
            artifacts.append((Path(path).name, folder))

    tabulate.run(cfg, tabulate.Paths(**given, report=tmp_path / "r"), ["last", "lcsc"], Run())
    with open(tmp_path / "r" / "summary.csv") as fh:
        rows = [(r["model"], r["variant"]) for r in csv.DictReader(fh)]
    assert rows == [("dm", "last"), ("dm", "lcsc"), ("dm_first50", "last"), ("dm_first50", "lcsc")]
    assert logged == {(f"fid.{m}.{v}", n): FIDS[m][v][n] for m, v in rows for n in (1, 2)}
    assert sorted(artifacts) == sorted(
        [(name, "report") for name in [*REPORT_FILES.values(), "cost_curve.png"]]
        + [(f"samples_{m}_{v}.png", "report") for m, v in rows]
    )
    # the invocation's headline numbers: lcsc and the best baseline (here last alone) at each NFE,
    # lcsc at 1 NFE (17) under last at 2 (20): a 2x NFE saving; lcsc on half the trail under the
    # full run's last: a 2x training speed-up. The truncated model has none of its own.
    assert parent == {
        "dm.lcsc_fid_nfe1": 17.0,
        "dm.lcsc_fid_nfe2": 15.0,
        "dm.best_baseline_fid_nfe1": 30.0,
        "dm.best_baseline_fid_nfe2": 20.0,
        "dm.nfe_saving": 2.0,
        "dm.training_speedup": 2.0,
    }
    with pytest.raises(
        ConfigError,
        match=r"tabulate --variants best: none of them is a variant of dm, dm_first50 "
        r"\(those have last, ema_0.9, ema_0.99, uniform, ema_0.99_profile, lcsc\)",
    ):
        tabulate.run(cfg, tabulate.Paths(**given, report=tmp_path / "x"), ["best"])


def test_a_missing_evaluation_is_one_line_naming_model_and_variant(tmp_path, capsys):
    cfg = _config(tmp_path)
    given = _inputs(tmp_path, cfg)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    keep = [i for i, e in enumerate(given["evaluations"]) if json.loads(e.read_text())["variant"] != "ema_0.99"]
    argv = [
        "tabulate",
        "--config",
        str(tmp_path / "c.yaml"),
        "--models",
        *given["models"],
        "--manifests",
        *map(str, given["manifests"]),
        "--searches",
        *map(str, given["searches"]),
        "--histories",
        *map(str, given["histories"]),
        "--out-dir",
        str(tmp_path / "r"),
    ]
    assert (
        main(
            [
                *argv,
                "--evaluations",
                *(str(given["evaluations"][i]) for i in keep),
                "--grids",
                *(str(given["grids"][i]) for i in keep),
            ]
        )
        == 2
    )
    # (the layout's own ema_0.99.json is there: it is not what the rule passed)
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("lcsc: warning: ")]
    assert err == [
        "lcsc tabulate: --evaluations: none of the files is the evaluation of dm ema_0.99; pass every "
        "evaluation the report shows"
    ]
    assert not (tmp_path / "r" / "summary.md").exists()
    with pytest.raises(InputError, match="none of the files is the evaluation of dm_first50 lcsc"):
        tabulate.run(
            cfg,
            tabulate.Paths(
                **dict(given, evaluations=given["evaluations"][:-1], grids=given["grids"][:-1]), report=tmp_path / "r"
            ),
        )
    # the grids go with the evaluations, one each
    with pytest.raises(ConfigError, match="--grids: 7 files for 8 evaluations; give one per evaluation"):
        tabulate.Paths(**dict(given, grids=given["grids"][1:]), report=tmp_path / "r")
    # all of them: the report, printed
    assert main([*argv, "--evaluations", *map(str, given["evaluations"]), "--grids", *map(str, given["grids"])]) == 0
    assert capsys.readouterr().out.startswith(f"# LCSC report: {cfg['experiment']}\n")


def test_the_report_stage_runs_without_torch():
    """tabulate runs in envs/report.yaml, which has no torch: the CLI and the report must not import it."""
    import subprocess
    import sys

    code = (
        "import builtins, sys\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name == 'torch' or name.startswith('torch.'): raise ModuleNotFoundError('no torch here')\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "import lcsc.cli, lcsc.stages.tabulate, lcsc.kernel.errors\n"
        "assert lcsc.cli.main(['tabulate', '--config', 'missing.yaml']) == 2\n"
        "assert 'torch' not in sys.modules\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
