import re

import pytest
import yaml

from lcsc.config import ConfigError, SCHEMA_PATH, flatten, load_config, stage_config, validate

from conftest import REPO


def test_defaults_fill_every_section():
    cfg = validate({})
    assert cfg["train"]["iterations"] > 0
    assert cfg["search"]["nfe"] in cfg["evaluate"]["nfe"]
    assert cfg["mlflow"]["tracking_uri"] is None


def test_embedded_default_config_is_valid():
    cfg = load_config(REPO / "config" / "config.yaml")
    assert cfg["data"]["dataset"] == "digits"
    assert cfg["device"] == "auto"


@pytest.mark.parametrize("config, key, needle", [
    ({"trian": {}}, "trian", "unknown key"),
    ({"train": {"iters": 3}}, "train.iters", "unknown key"),
    ({"train": {"iterations": "abc"}}, "train.iterations", "'abc' is not of type 'integer'"),
    ({"train": {"iterations": 0}}, "train.iterations", "less than the minimum"),
    ({"search": {"optimizer": 3}}, "search.optimizer", "not of type 'string'"),
    ({"diffusion": {"sampler": "euler"}}, "diffusion.sampler", "'euler' is not one of"),
    ({"evaluate": {"nfe": [2, 2]}}, "evaluate.nfe", "non-unique"),
    ({"search": {"bounds": [1.0]}}, "search.bounds", "too short"),
    ({"experiment": "a/b"}, "experiment", "does not match"),
])
def test_schema_rejects_with_key_name(config, key, needle):
    with pytest.raises(ConfigError) as err:
        validate(config)
    msg = str(err.value)
    assert re.search(rf"(^|\s){re.escape(key)}:", msg), msg
    assert needle in msg, msg


@pytest.mark.parametrize("config, key", [
    ({"search": {"nfe": 7}}, "search.nfe"),
    ({"train": {"iterations": 10, "checkpoint_every": 20}}, "train.checkpoint_every"),
    ({"search": {"seed": 5}, "evaluate": {"seed": 5}}, "evaluate.seed"),
    ({"search": {"rescore_seed": 2000}}, "search.rescore_seed"),
    ({"baselines": {"lawa_last": [99]}}, "baselines.lawa_last"),
    ({"diffusion": {"timesteps": 100}, "evaluate": {"nfe": [5, 200]}}, "evaluate.nfe"),
    ({"search": {"bounds": [2.0, -1.0]}}, "search.bounds"),
    ({"data": {"dataset": "folder"}}, "data.folder"),
    ({"data": {"image_size": 10}, "model": {"channel_mult": [1, 2, 2]}}, "data.image_size"),
])
def test_cross_key_rules(config, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        validate(config)


def test_overrides_and_slices():
    cfg = load_config(None, {"train.iterations": 640, "search.budget": 3})
    assert cfg["train"]["iterations"] == 640 and cfg["search"]["budget"] == 3
    sliced = stage_config(cfg, "train_dm")
    assert "search" not in sliced and sliced["train"]["iterations"] == 640
    assert flatten({"a": {"b": 1, "c": {"d": 2}}}) == {"a.b": 1, "a.c.d": 2}


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
