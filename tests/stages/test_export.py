"""Stage export on a state-dict trail brought from elsewhere: searched, evaluated and written back
in the input's own layout (key path, prefix, dtype), with a model card, logged to MLflow and
registered as a model version."""

import json
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch

from helpers import sd_config, trained_paths
from lcsc.cli import main
from lcsc.kernel.data import load_split
from lcsc.kernel.images import save_grid
from lcsc.kernel.paths import Layout


@pytest.fixture(scope="module")
def exported(sd_run, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("export")
    cfg, config = sd_config(sd_run, tmp_path)
    _, features, stats = trained_paths(sd_run[0])
    given = ["--config", config, "--model", "imported", "--features", str(features), "--stats", str(stats)]
    assert main(["import-trail", "--config", config]) == 0
    assert main(["search", *given]) == 0
    for variant in ("lcsc", "last", "ema_0.99"):
        assert main(["evaluate", *given, "--variant", variant]) == 0
    uri = f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"  # the default store: <results_dir>/mlflow.db
    layout = Layout.of(cfg)
    evaluations = [str(layout.eval_json("imported", v)) for v in ("lcsc", "last", "ema_0.99")]
    real = tmp_path / "real digits.png"  # the reference images' grid, as reference_stats writes it
    save_grid(load_split(cfg["data"], "train").images[:64], real)
    assert (
        main(
            [
                "export",
                "--config",
                config,
                "--model",
                "imported",
                "--evaluations",
                *evaluations,
                "--real",
                str(real),
                "--set",
                "mlflow.enabled=true",
                "--set",
                "export.register=digits-unet",
            ]
        )
        == 0
    )
    return cfg, layout, uri, config, evaluations


def test_export_keeps_the_inputs_layout_and_equals_the_combination(exported, sd_run):
    cfg, layout, *_ = exported
    out = layout.export_dir("imported", "lcsc")
    run = sd_run[1]
    saved = torch.load(out / "model.pt", weights_only=True)
    assert list(saved) == ["state_dict"]
    last = torch.load(run / "model000040.pt", weights_only=True)["state_dict"]
    assert list(saved["state_dict"]) == list(last)  # the prefix and key order of the input
    assert all(saved["state_dict"][k].dtype == v.dtype for k, v in last.items())
    coefficients = json.loads(layout.coefficients("imported", cfg["search"]["nfe"]).read_text())["coefficients"]
    meta = json.loads((out / "coefficients.json").read_text())
    assert meta["coefficients"] == coefficients and meta["steps"] == [10, 20, 30, 40]
    files = [run / f"model{s:06d}.pt" for s in meta["steps"]]
    expected = {}
    for c, f in zip(coefficients, files):  # the bfloat16 checkpoint is combined in float32
        for k, v in torch.load(f, weights_only=True)["state_dict"].items():
            expected[k] = expected.get(k, 0) + c * v.float()
    for k, v in saved["state_dict"].items():
        torch.testing.assert_close(v, expected[k], atol=1e-5, rtol=1e-5)


def test_model_card_shows_the_evaluation_against_last_and_ema(exported):
    cfg, layout, *_ = exported
    card = (layout.export_dir("imported", "lcsc") / "README.md").read_text()
    for variant in ("lcsc", "last", "ema_0.99"):
        fid = json.loads(layout.eval_json("imported", variant).read_text())["fid"]
        row = f"| {variant} | " + " | ".join(f"{fid[str(n)]:.2f}" for n in sorted(cfg["evaluate"]["nfe"])) + " |"
        assert row in card
    assert "trail fingerprint" in card and "torch.load('model.pt', weights_only=True)" in card
    # which space the FIDs are in, and that they compare within this run only
    assert (
        "The FIDs are in a feature space trained on this run's own data (classifier: features.kind classifier)" in card
        and "never with any published FID" in card
    )
    assert "- sampler: ddim" in card
    # the noise a win must beat, a verdict per NFE against last and the EMA, and the samples side by side
    floor = json.loads(layout.eval_json("imported", "lcsc").read_text())["floor"]
    assert f"score FID {floor['fid']:.2f} against each other" in card and "one evaluation seed" in card
    assert all(f"at NFE {n} (gap" in card for n in cfg["evaluate"]["nfe"])
    assert "lcsc beats last" in card or "no measurable difference from last" in card or "worse than last" in card
    out = layout.export_dir("imported", "lcsc")
    assert "![samples](samples.png)" in card and "Real images, then the same noise" in card
    from PIL import Image

    with Image.open(out / "samples.png") as picture:  # four panels of 320 px: real, lcsc, last, ema_0.99
        assert picture.width == 4 * 320, picture.size


def test_export_is_logged_and_registered_in_mlflow(exported):
    from mlflow.tracking import MlflowClient

    _, layout, uri, *_ = exported
    client = MlflowClient(uri)
    version = client.get_model_version("digits-unet", "1")
    run = client.get_run(version.run_id)
    assert run.info.run_name.startswith("export")
    names = {a.path for a in client.list_artifacts(run.info.run_id, "export/lcsc")}
    assert {"export/lcsc/model.pt", "export/lcsc/README.md", "export/lcsc/coefficients.json"} <= names
    assert version.source.endswith("/export/lcsc")
    stored = Path(urlparse(run.info.artifact_uri).path) / "export" / "lcsc" / "README.md"
    assert stored.read_text() == (layout.export_dir("imported", "lcsc") / "README.md").read_text()


def test_a_registration_that_fails_is_recorded_and_made_by_mlflow_sync(exported, tmp_path, capsys, monkeypatch):
    """export.register while the tracking server is down: the export finishes, its run record keeps
    the registration, and `lcsc mlflow-sync` makes it (once, however often it runs)."""
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # a store given by URI keeps its artifacts in ./mlruns
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # refused at once, not after retries

    from lcsc.kernel.tracking import records_dir

    cfg, layout, _, config, evaluations = exported
    down = "http://127.0.0.1:9"  # nothing listens there
    assert (
        main(
            [
                "export",
                "--config",
                config,
                "--model",
                "imported",
                "--evaluations",
                *evaluations,
                "--out-dir",
                str(tmp_path / "x"),
                "--set",
                "mlflow.enabled=true",
                "--set",
                f"mlflow.tracking_uri={down}",
                "--set",
                "export.register=digits-unet-later",
            ]
        )
        == 0
    )
    assert "digits-unet-later is registered by `lcsc mlflow-sync` later" in capsys.readouterr().err
    [path] = [p for p in records_dir(cfg).glob("*/export*.json") if down in p.read_text()]
    assert json.loads(path.read_text())["registrations"] == [
        {"name": "digits-unet-later", "folder": "export/lcsc", "version": None}
    ]
    store = f"sqlite:///{tmp_path / 'later.db'}"
    sync = [
        "mlflow-sync",
        "--config",
        config,
        "--set",
        "mlflow.enabled=true",
        "--set",
        f"mlflow.tracking_uri={store}",
        "--any-store",
    ]
    assert main(sync) == 0
    assert "1 models registered" in capsys.readouterr().out
    client = MlflowClient(store)
    version = client.get_model_version("digits-unet-later", "1")
    assert version.source.endswith("/export/lcsc") and client.get_run(version.run_id).info.run_name.startswith(
        "export"
    )
    names = {a.path for a in client.list_artifacts(version.run_id, "export/lcsc")}
    assert "export/lcsc/model.pt" in names  # the source the version points to holds the weights
    assert json.loads(path.read_text())["registrations"][0]["version"] == "1"
    assert main(sync) == 0  # again: nothing more to register
    assert "0 models registered" in capsys.readouterr().out
    assert len(client.search_model_versions("name = 'digits-unet-later'")) == 1
