"""What weights a variant name denotes: the names each model compares, where each one's weights come
from, the kept EMAs' files, and the coefficients of a profile from the baselines file or its closed form."""

from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from lcsc.kernel import profiles, variants
from lcsc.kernel.errors import ConfigError, TrailError
from lcsc.kernel.io import write_json
from lcsc.kernel.paths import Layout, dataset_name
from lcsc.kernel.scoring import Scorer
from lcsc.kernel.tensors import load_tensors
from lcsc.kernel.trail import Trail, flatten_state

STEPS = [10, 20, 30, 40]
TINY_PROFILES = ["uniform", "lawa_2", "ema_0.9_profile", "ema_0.99_profile", "power_0.05", "power_0.1"]


def _trail(root: Path, emas=(0.9, 0.99)) -> Trail:
    """A trail as its manifest describes it (no files needed by the functions tested here)."""
    manifest = {
        "checkpoints": [{"step": s, "file": f"step_{s:07d}.safetensors", "sha256": f"{s:064x}"} for s in STEPS],
        "ema": [{"decay": d, "file": f"ema_{d}.safetensors", "sha256": "0" * 64} for d in emas],
    }
    return Trail(root, manifest, list(STEPS))


def test_names_per_model(tmp_path):
    cfg = tiny_config(tmp_path, consistency={"modes": ["ct"], "train": {"iterations": 30, "ema_decays": [0.95]}})
    assert (
        variants.names(cfg)
        == variants.names(cfg, "dm")
        == ["last", "ema_0.9", "ema_0.99", *TINY_PROFILES, "greedy_soup", "lcsc"]
    )
    # a consistency model keeps the EMAs of its own training (consistency.train), scored by the same profiles
    assert variants.names(cfg, "cm_ct") == ["last", "ema_0.95", *TINY_PROFILES, "greedy_soup", "lcsc"]
    # a truncated trail lists no EMAs: it is compared through its last checkpoint and LCSC only
    for truncated in ("dm_first50", "cm_ct_first25", "cm_cd_first12.5"):
        assert variants.names(cfg, truncated) == ["last", "lcsc"], truncated
    bare = tiny_config(
        tmp_path, baselines={"lawa_last": [], "ema_decays": [], "power_sigma_rels": [], "greedy_soup": False}
    )
    assert variants.names(bare, "dm") == ["last", "ema_0.9", "ema_0.99", "uniform", "lcsc"]
    assert variants.scored_profiles(bare["baselines"]) == ["last", "uniform"]
    assert variants.scored_profiles(cfg["baselines"]) == ["last", *TINY_PROFILES, "greedy_soup"]


def test_source_and_kept_ema_names():
    assert variants.source("lcsc") == variants.COEFFICIENTS
    for kept in ("ema_0.99", "ema_0.9", "ema_0.9999", "ema_1e-05"):
        assert variants.source(kept) == variants.TRAIL, kept
    for profile in ("last", "uniform", "lawa_2", "ema_0.99_profile", "power_0.1", "greedy_soup", "ema_", "ema_x"):
        assert variants.source(profile) == variants.BASELINES, profile
    assert variants.kept_ema_decay("ema_0.999") == 0.999 and variants.kept_ema_decay("ema_1e-05") == 1e-05
    for other in ("ema_0.99_profile", "last", "ema_", "lawa_2", "xema_0.9"):
        assert variants.kept_ema_decay(other) is None, other
    assert variants.kept_ema(0.99) == "ema_0.99" and variants.kept_ema_decay(variants.kept_ema(0.999)) == 0.999
    assert variants.kept_ema_profile("ema_0.99") == "ema_0.99_profile" == profiles.ema_profile_name(0.99)


def test_checkpoint_file_of_last_and_of_a_kept_ema(tmp_path):
    trail = _trail(tmp_path)
    assert variants.checkpoint_file(trail, "last") == tmp_path / "step_0000040.safetensors"
    assert variants.checkpoint_file(trail, "ema_0.99") == tmp_path / "ema_0.99.safetensors"
    assert variants.checkpoint_file(trail, "ema_0.9") == tmp_path / "ema_0.9.safetensors"
    with pytest.raises(TrailError) as err:
        variants.checkpoint_file(trail, "ema_0.5")
    assert (
        str(err.value) == f"{tmp_path / 'manifest.json'}: no weights 'ema_0.5'; it has last and the EMAs "
        "ema_0.9, ema_0.99"
    )
    with pytest.raises(TrailError) as err:
        variants.checkpoint_file(_trail(tmp_path, emas=()), "ema_0.9")
    assert str(err.value).endswith("no weights 'ema_0.9'; it has last and the EMAs (none)")
    assert "\n" not in str(err.value)


def test_coefficients_of_lcsc_come_from_the_search_file_of_this_trail(tmp_path):
    trail = _trail(tmp_path)
    found = tmp_path / "coefficients.json"
    write_json(found, {"coefficients": [0.1, -0.2, 0.3, 0.8], "trail_sha256": trail.fingerprint})
    assert variants.coefficients_of(trail, "lcsc", found) == [0.1, -0.2, 0.3, 0.8]
    write_json(found, {"coefficients": [0.1, -0.2, 0.3, 0.8], "trail_sha256": trail.fingerprint[::-1]})
    with pytest.raises(TrailError, match="coefficients.json: computed from another checkpoint trail"):
        variants.coefficients_of(trail, "lcsc", found)
    with pytest.raises(ConfigError, match="variant 'lcsc' needs the search's coefficients file"):
        variants.coefficients_of(trail, "lcsc", bcfg={"lawa_last": []})
    # a kept EMA is a file of its own: no coefficients
    assert variants.coefficients_of(trail, "ema_0.99", found) is None


def test_profiles_from_the_baselines_file_or_the_closed_form(tmp_path):
    trail = _trail(tmp_path)
    bcfg = tiny_config(tmp_path)["baselines"]
    closed = {name: variants.coefficients_of(trail, name, bcfg=bcfg) for name in ["last", *TINY_PROFILES]}
    assert closed["last"] == [0.0, 0.0, 0.0, 1.0] and closed["lawa_2"] == [0.0, 0.0, 0.5, 0.5]
    assert closed["power_0.1"] == profiles.power_profile(STEPS, 0.1).tolist()
    assert closed["ema_0.9_profile"] == profiles.ema_profile(STEPS, 0.9).tolist()
    # the baselines stage's file, as it writes it: the same numbers bit for bit, and the soup besides
    scored = {
        name: {"coefficients": c.tolist(), "fitness": 1.0} for name, c in profiles.trail_profiles(STEPS, bcfg).items()
    }
    scored["greedy_soup"] = {"coefficients": [0.0, 0.5, 0.0, 0.5], "fitness": 0.5}
    file = tmp_path / "baselines.json"
    write_json(file, {"profiles": scored, "trail_sha256": trail.fingerprint})
    for name, c in closed.items():
        assert variants.coefficients_of(trail, name, baselines=file, bcfg=bcfg) == c, name
    assert variants.coefficients_of(trail, "greedy_soup", baselines=file) == [0.0, 0.5, 0.0, 0.5]
    # the file wins over the config: it holds what was scored
    write_json(
        file, {"profiles": {"uniform": {"coefficients": [0.4, 0.3, 0.2, 0.1]}}, "trail_sha256": trail.fingerprint}
    )
    assert variants.coefficients_of(trail, "uniform", baselines=file, bcfg=bcfg) == [0.4, 0.3, 0.2, 0.1]
    # and it must be of this trail
    write_json(file, {"profiles": scored, "trail_sha256": ["0" * 64] * 4})
    with pytest.raises(TrailError, match="baselines.json: computed from another checkpoint trail"):
        variants.coefficients_of(trail, "uniform", baselines=file)
    with pytest.raises(ConfigError, match="variant 'uniform' needs the baselines file or the baselines config"):
        variants.coefficients_of(trail, "uniform")


def test_an_unknown_variant_lists_the_known_ones(tmp_path):
    trail = _trail(tmp_path)
    bcfg = tiny_config(tmp_path)["baselines"]
    with pytest.raises(ConfigError) as err:
        variants.coefficients_of(trail, "best", bcfg=bcfg)
    assert str(err.value) == (
        "unknown variant 'best' (without the baselines stage's file the variants are: lcsc, "
        "ema_<decay> kept in training, last, " + ", ".join(TINY_PROFILES) + ")"
    )
    # the soup exists only in the baselines stage's file
    with pytest.raises(ConfigError, match="unknown variant 'greedy_soup' .without the baselines stage's file"):
        variants.coefficients_of(trail, "greedy_soup", bcfg=bcfg)
    file = tmp_path / "baselines.json"
    write_json(
        file,
        {
            "profiles": {"last": {"coefficients": [0, 0, 0, 1]}, "greedy_soup": {"coefficients": [1, 0, 0, 0]}},
            "trail_sha256": trail.fingerprint,
        },
    )
    with pytest.raises(ConfigError) as err:
        variants.coefficients_of(trail, "uniform", baselines=file, bcfg=bcfg)
    assert str(err.value) == (
        f"unknown variant 'uniform' (in {file} the variants are: lcsc, ema_<decay> kept in "
        "training, last, greedy_soup)"
    )


def test_weights_of_last_equal_its_file_and_a_kept_ema_is_its_file(trained):
    cfg, _ = trained
    layout = Layout.of(cfg)
    scorer = Scorer.open(
        cfg,
        layout.manifest("dm"),
        layout.feature_net("classifier"),
        layout.stats(dataset_name(cfg["data"]), "train", "classifier"),
        torch.device("cpu"),
        64,
    )
    flat, c = variants.weights(scorer, "last", bcfg=cfg["baselines"])
    assert c == [0.0, 0.0, 0.0, 1.0]
    assert torch.equal(flat, scorer.weights_from_file(variants.checkpoint_file(scorer.trail, "last")))
    flat, c = variants.weights(scorer, "ema_0.99", bcfg=cfg["baselines"])
    assert c is None
    ema = load_tensors(scorer.trail.ema_paths()[0.99])
    assert torch.equal(flat, flatten_state(ema, scorer.loader.keys))
    assert not torch.equal(flat, variants.weights(scorer, "ema_0.9")[0])
