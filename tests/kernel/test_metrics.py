"""The metric registry: every metric it lists is what the scorer measures, evaluate summarises and
the report shows, and a metric added to it (here a made-up one) reaches the evaluation's summary,
the report's quality table and sentence, and the summary CSV with no change anywhere else."""

import csv

import pytest
import torch

from conftest import tiny_config
from lcsc.kernel import metrics, variants
from lcsc.kernel.io import write_json
from lcsc.kernel.report import quality_sentence, quality_table
from lcsc.stages import evaluate, tabulate

NFES = (1, 2)


def _sharpness(real, fake) -> dict[str, float]:
    """A made-up metric: the mean feature norm of the samples over that of the reference."""
    return {"sharpness": float(fake.norm(dim=1).mean() / real.norm(dim=1).mean())}


SHARPNESS = metrics.Metric(
    "sharpness",
    "sharpness",
    "S",
    lower_is_better=False,
    text=lambda x: f"{x:.3f}",
    compute=f"{__name__}:_sharpness",
    note="sharpness is made up for this test",
    column="sharpness_nfe{n}",
)


@pytest.fixture
def with_sharpness(monkeypatch):
    monkeypatch.setattr(metrics, "METRICS", (*metrics.METRICS, SHARPNESS))


def test_each_quality_metric_is_measured_by_the_function_the_registry_names():
    torch.manual_seed(0)
    real, fake = torch.randn(40, 8, dtype=torch.float64), torch.randn(30, 8, dtype=torch.float64)
    measured = {}
    for compute in metrics.computations():
        measured |= compute(real, fake)
    assert [m.name for m in metrics.quality_metrics()] == ["kid", "precision", "recall"]
    assert all(m.name in measured for m in metrics.quality_metrics())
    assert metrics.names() == ("fid", "kid", "precision", "recall")


def test_the_default_registry_gives_the_reports_sentence_and_table_header():
    assert quality_sentence(metrics.quality_metrics()) == (
        "KID, precision and recall (k = 3, Kynkäänniemi et al. 2019) in the same feature space (lower KID is "
        "better, higher precision and recall are better; KID's scale is the feature space's, so compare it "
        "between variants only):"
    )
    q = {"kid": {1: 0.001234, 2: 123.4}, "precision": {1: 0.5, 2: 0.25}, "recall": {1: 1.0, 2: 0.125}}
    assert quality_table({"last": q}, [1, 2]).splitlines()[::2] == [
        "| variant | NFE 1: KID / P / R | NFE 2: KID / P / R |",
        "| last | 0.00123 / 0.50 / 1.00 | 123 / 0.25 / 0.12 |",
    ]


def test_a_metric_added_to_the_registry_is_measured_and_summarised(with_sharpness):
    real, fake = torch.ones(4, 3), 2 * torch.ones(5, 3)
    measured = {}
    for compute in metrics.computations():
        measured |= compute(real.double(), fake.double())
    assert measured["sharpness"] == pytest.approx(2.0)
    runs = [{m: {"1": 1.0 + i, "2": 2.0 + i} for m in metrics.names()} for i in range(2)]
    summary = evaluate.summarise(runs, [1, 2])
    assert summary["sharpness"] == {"1": 1.5, "2": 2.5} and "sharpness_std" in summary


def _inputs(tmp_path, cfg: dict) -> tabulate.Paths:
    """One diffusion model's evaluations with every registered metric (each a different value)."""
    src = tmp_path / "in"
    src.mkdir()
    evaluations, grids = [], []
    for i, variant in enumerate(variants.names(cfg, "dm")):
        res = {"model": "dm", "variant": variant}
        for j, m in enumerate(metrics.METRICS):
            res[m.name] = {str(n): 10.0 + i + j / 10 + n / 100 for n in NFES}
        write_json(src / f"e{i}.json", res)
        (src / f"g{i}.png").write_bytes(b"not a png")
        evaluations.append(src / f"e{i}.json")
        grids.append(src / f"g{i}.png")
    write_json(
        src / "s.json",
        {
            "optimizer": "CMA",
            "budget": 8,
            "trail_steps": [10, 20],
            "parametrization": "sum_to_one",
            "coefficients": [0.5, 0.5],
            "starts": {"last": 20.5},
            "start": {"name": "last"},
            "evaluation": 5,
            "fitness": 16.0,
            "rescore_fitness": None,
        },
    )
    (src / "h.csv").write_text(
        "evaluation,phase,name,fitness,best_so_far,seconds,c000\n0,start,last,20.5,20.5,0.1,1\n"
    )
    return tabulate.Paths(
        models=("dm",),
        manifests=(src / "m.json",),
        searches=(src / "s.json",),
        histories=(src / "h.csv",),
        evaluations=tuple(evaluations),
        grids=tuple(grids),
        report=tmp_path / "report",
    )


def test_a_metric_added_to_the_registry_reaches_the_report(tmp_path, with_sharpness):
    cfg = tiny_config(tmp_path / "results", evaluate={"nfe": list(NFES)})
    md = tabulate.run(cfg, _inputs(tmp_path, cfg)).read_text()
    assert "| variant | NFE 1: KID / P / R / S | NFE 2: KID / P / R / S |" in md
    assert "| last | 10.1 / 10.21 / 10.31 / 10.410 |" in md  # each value as its metric formats it
    assert "KID, precision, recall and sharpness (k = 3" in md
    assert "higher precision, recall and sharpness are better" in md and "sharpness is made up for this test" in md
    with open(tmp_path / "report" / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:6] == ["model", "variant", "nfe1", "nfe2", "sharpness_nfe1", "sharpness_nfe2"]
    assert rows[0]["variant"] == "last" and rows[0]["sharpness_nfe2"] == "10.4200"
