"""What each stage reads of the config: its job's slice (its rerun trigger in the workflow) and
the MLflow tags of its job."""

import json

import pytest

from conftest import REPO
from lcsc.kernel.config import flatten, load_config, runtime_config, validate, with_runtime
from lcsc.kernel.errors import ConfigError
from lcsc.kernel.models import for_model, models
from lcsc.stages import STAGE_SECTIONS, job_tags, stage_config


def test_overrides_and_slices():
    cfg = load_config(None, {"train.iterations": 640, "search.budget": 3})
    assert cfg["train"]["iterations"] == 640 and cfg["search"]["budget"] == 3
    sliced = stage_config(cfg, "train_dm")
    assert "search" not in sliced and sliced["train"]["iterations"] == 640
    # how and where a stage runs (devices, trail chunks, MLflow, folders) is in no stage's slice, so
    # changing it reruns nothing; the stage gets it through runtime_config
    for stage in STAGE_SECTIONS:
        sliced = stage_config(cfg, stage, "cm_cd" if stage == "train_cm" else None)
        assert not {"experiment", "results_dir", "device", "mlflow"} & set(sliced), stage
        assert not {"devices", "trail_chunk_mb"} & set(sliced.get("search", {})), stage
        assert not {"root", "download"} & set(sliced.get("data", {})), stage
        assert "cache_dir" not in sliced.get("features", {}), stage
    runtime = runtime_config(cfg)
    assert runtime["search"] == {"devices": "auto", "trail_chunk_mb": None} and runtime["mlflow"] == cfg["mlflow"]
    # a stage's slice plus the runtime keys (what a rule passes) is the config again, as far as the
    # stage reads it, and where and how it runs is the same as from the file
    full = load_config(REPO / "config" / "config.yaml", {"results_dir": "elsewhere", "search.devices": ["cpu"]})
    runtime = runtime_config(full)
    for stage in STAGE_SECTIONS:
        for model in ["cm_cd", "cm_ct"] if stage == "train_cm" else [None, "cm_ct", "cm_cd_first40"]:
            rebuilt = validate(with_runtime(stage_config(full, stage, model), runtime), cross_checks=False)
            assert stage_config(rebuilt, stage, model) == stage_config(full, stage, model), (stage, model)
            assert runtime_config(rebuilt) == runtime, (stage, model)
    with pytest.raises(ConfigError, match=r"--runtime-json: search.budget: not a run-time key"):
        with_runtime({}, {"search": {"budget": 3}})
    # nor does a new budget: the baselines keep only the fitness settings, evaluate the NFE
    assert set(stage_config(cfg, "baselines")["search"]) == {
        "nfe",
        "nfe_weights",
        "fitness_mean",
        "penalty",
        "penalty_weight",
        "max_norm",
        "samples",
        "seed",
        "batch_size",
    }
    assert stage_config(cfg, "evaluate")["search"] == {"nfe": cfg["search"]["nfe"]}
    assert stage_config(cfg, "tabulate")["search"]["budget"] == 3
    assert flatten({"a": {"b": 1, "c": {"d": 2}}}) == {"a.b": 1, "a.c.d": 2}


def test_feature_slices_hold_only_the_keys_of_their_kind():
    """Changing a classifier-only key must not rerun an Inception run's FID stages, and back."""
    inception = validate({"features": {"kind": "inception", "weights": "/w.pt"}})
    classifier = validate({})
    for stage in ("inception_features", "reference_stats", "tabulate"):
        assert "epochs" not in stage_config(inception, stage)["features"]
        assert stage_config(inception, stage)["features"]["weights"] == "/w.pt"
    for stage in ("train_features", "reference_stats"):
        assert {"mode", "weights", "reference_folder"}.isdisjoint(stage_config(classifier, stage)["features"])
        assert stage_config(classifier, stage)["features"]["epochs"] == 30
    # the data is the sanity gate's: a new data set reruns the gate of a fixed space
    assert stage_config(inception, "inception_features")["data"]["dataset"] == "digits"
    assert stage_config(validate({"features": {"kind": "dinov2"}}), "dinov2_features")["data"]["image_size"] == 12
    dinov2 = validate({"features": {"kind": "dinov2", "weights": "/d.pth"}})
    for stage in ("dinov2_features", "reference_stats"):
        assert stage_config(dinov2, stage)["features"]["weights"] == "/d.pth"
        assert {"mode", "epochs", "dim"}.isdisjoint(stage_config(dinov2, stage)["features"])
    autoencoder = validate({"features": {"kind": "autoencoder"}})
    assert stage_config(autoencoder, "train_features")["features"]["epochs"] == 30
    assert {"mode", "weights"}.isdisjoint(stage_config(autoencoder, "train_features")["features"])


def test_a_job_slice_read_back_as_the_workflow_passes_it_is_the_same_config():
    """Rules pass a stage's slice as JSON; the CLI validates it (filling defaults) and applies
    for_model again: the job must see the same slice the workflow hashed."""
    from lcsc.cli.commands import _config

    cfg = load_config(
        REPO / "config" / "config.yaml",
        {"cost.fraction": 0.4, "consistency.search_nfe": 2, "consistency.evaluate_nfe": [1, 2]},
    )
    for model in models(cfg):
        for stage in (
            "baselines",
            "search",
            "evaluate",
            *(["train_cm"] if "first" not in model and model != "dm" else []),
        ):
            sliced = stage_config(cfg, stage, model)
            args = type("Args", (), {"set": None, "config_json": json.dumps(sliced), "config": None})()
            again = for_model(_config(args), model)
            assert stage_config(again, stage, model) == sliced, (model, stage)
            if stage in ("search", "baselines"):
                assert again["search"]["nfe"] == (2 if model != "dm" else cfg["search"]["nfe"])


def test_job_tags_name_the_nfes_a_job_samples_at():
    cfg = validate({"evaluate": {"nfe": [8, 3, 5]}, "search": {"nfe": 5}})
    assert job_tags(cfg, "evaluate") == {"lcsc.nfe": "3,5,8"}
    assert job_tags(cfg, "search") == job_tags(cfg, "baselines") == {"lcsc.nfe": "5"}
    for stage in (
        "train_dm",
        "train_cm",
        "truncate_trail",
        "train_features",
        "inception_features",
        "reference_stats",
        "tabulate",
    ):
        assert job_tags(cfg, stage) == {}, stage
    cm = for_model(cfg, "cm_ct")  # as the CLI passes it for a consistency model
    assert job_tags(cm, "search") == {"lcsc.nfe": "1"} and job_tags(cm, "evaluate") == {"lcsc.nfe": "1,2"}


def test_a_model_stage_without_a_model_is_the_diffusion_models():
    cfg = load_config(REPO / "config" / "config.yaml")
    for stage in ("baselines", "search", "evaluate"):
        assert stage_config(cfg, stage) == stage_config(cfg, stage, "dm"), stage
        assert "consistency" not in stage_config(cfg, stage)
    with pytest.raises(ValueError, match="stage_config: train_cm needs the model"):
        stage_config(cfg, "train_cm")
    # the truncation stage reads nothing of the config: the fraction is in the model's name
    assert stage_config(cfg, "truncate_trail") == {}


def test_the_export_names_the_feature_space_of_the_config():
    """The model card says which space its FIDs are in, so the export's slice holds `features`."""
    cfg = validate({"features": {"kind": "autoencoder"}})
    assert stage_config(cfg, "export", "dm")["features"]["kind"] == "autoencoder"
