"""Model names (dm, cm_cd, cm_ct, <model>_first<percent>) and the config each model's stages read."""

import pytest

from conftest import REPO
from lcsc.kernel.config import load_config
from lcsc.kernel.errors import ConfigError
from lcsc.kernel.models import (
    base_model,
    check_model,
    check_trail,
    for_model,
    headline_nfe,
    model_kind,
    models,
    nfe_list,
    nfe_weights,
    repeat_seed,
    search_nfe,
    search_repeat,
    trained_model,
    truncated_name,
    truncation,
)
from lcsc.kernel.paths import Layout
from lcsc.stages import stage_config


def test_models_and_their_config():
    cfg = load_config(REPO / "config" / "config.yaml")
    assert models(cfg) == ["dm", "cm_cd", "cm_ct"]
    cm = for_model(cfg, "cm_ct")
    assert cm["search"]["nfe"] == 1 and cm["evaluate"]["nfe"] == [1, 2]
    assert for_model(cm, "cm_ct") == cm  # applying it twice changes nothing
    assert "consistency" not in for_model(cfg, "dm") and for_model(cfg, "dm")["search"]["nfe"] == cfg["search"]["nfe"]
    with_cost = load_config(REPO / "config" / "config.yaml", {"cost.fraction": 0.4})
    assert models(with_cost) == ["dm", "cm_cd", "cm_ct", "cm_cd_first40", "cm_ct_first40"]
    assert for_model(with_cost, "cm_ct_first40")["search"]["nfe"] == 1

    # slices: the DM's stages never see `consistency`; CT's training ignores CD's settings
    other = load_config(REPO / "config" / "config.yaml", {"consistency.cd.steps": 40, "consistency.sigma_max": 60.0})
    for stage in ("baselines", "search", "evaluate"):
        assert stage_config(cfg, stage, "dm") == stage_config(other, stage, "dm")
    assert stage_config(cfg, "train_cm", "cm_ct") != stage_config(other, "train_cm", "cm_ct")  # sigma_max
    only_cd = load_config(REPO / "config" / "config.yaml", {"consistency.cd.steps": 40})
    assert stage_config(cfg, "train_cm", "cm_ct") == stage_config(only_cd, "train_cm", "cm_ct")
    assert stage_config(cfg, "train_cm", "cm_cd") != stage_config(only_cd, "train_cm", "cm_cd")
    # the sampling sigmas do not retrain, nor (at the default 1-NFE target) rerun baselines or search
    sampling = load_config(REPO / "config" / "config.yaml", {"consistency.sampling_sigmas": [1.5]})
    for stage, same in (("train_cm", True), ("baselines", True), ("search", True), ("evaluate", False)):
        assert (stage_config(cfg, stage, "cm_cd") == stage_config(sampling, stage, "cm_cd")) == same, stage
    two = load_config(REPO / "config" / "config.yaml", {"consistency.search_nfe": 2})
    assert stage_config(two, "search", "cm_cd")["consistency"]["sampling_sigmas"] == [0.821]
    # nor does a sampler setting of the diffusion model touch the consistency models' sampling
    ddim = load_config(REPO / "config" / "config.yaml", {"diffusion.sampler": "dpmpp2m"})
    for stage in ("baselines", "search", "evaluate"):
        assert stage_config(cfg, stage, "cm_cd") == stage_config(ddim, stage, "cm_cd")
        assert stage_config(cfg, stage, "cm_ct_first40") == stage_config(ddim, stage, "cm_ct_first40")
        assert stage_config(cfg, stage, "dm") != stage_config(ddim, stage, "dm")
    assert stage_config(cfg, "train_dm") == stage_config(ddim, "train_dm")  # nor retrain anything
    assert stage_config(cfg, "train_cm", "cm_cd") == stage_config(ddim, "train_cm", "cm_cd")
    clip = load_config(REPO / "config" / "config.yaml", {"diffusion.clip_denoised": False})
    assert stage_config(cfg, "train_cm", "cm_cd") != stage_config(clip, "train_cm", "cm_cd")  # the teacher clips
    assert stage_config(cfg, "train_cm", "cm_ct") == stage_config(clip, "train_cm", "cm_ct")


def test_a_bigger_diffusion_search_leaves_the_consistency_searches_alone():
    """consistency.search_budget / search_samples pin the consistency models' searches, so a config
    (config/evidence.yaml) can give the diffusion model a bigger one: only its jobs rerun."""
    cfg = load_config(REPO / "config" / "config.yaml")
    big = load_config(
        REPO / "config" / "config.yaml",
        {
            "search.budget": 400,
            "search.samples": 2000,
            "consistency.search_budget": cfg["search"]["budget"],
            "consistency.search_samples": cfg["search"]["samples"],
        },
    )
    for model in ("cm_cd", "cm_ct"):
        assert for_model(big, model)["search"]["budget"] == 160 and for_model(big, model)["search"]["samples"] == 800
        for stage in ("train_cm", "baselines", "search", "evaluate"):
            assert stage_config(cfg, stage, model) == stage_config(big, stage, model), (model, stage)
    assert stage_config(cfg, "train_dm") == stage_config(big, "train_dm")
    assert for_model(big, "dm")["search"]["budget"] == 400
    assert stage_config(cfg, "search", "dm") != stage_config(big, "search", "dm")
    assert stage_config(cfg, "baselines", "dm") != stage_config(big, "baselines", "dm")  # scored on 2000 samples
    assert stage_config(cfg, "evaluate", "dm") == stage_config(
        big, "evaluate", "dm"
    )  # the baselines' evaluations stay
    # null (the default) takes search.*
    assert (
        for_model(load_config(REPO / "config" / "config.yaml", {"search.budget": 50}), "cm_ct")["search"]["budget"]
        == 50
    )


@pytest.mark.parametrize(
    "name", ["cm_cd_firstx", "dm_first", "cm_ct_first100", "xx_first20", "dm_first1e1", "dm_first010"]
)
def test_bad_truncated_model_names(name):
    from lcsc.kernel.models import truncation

    with pytest.raises(ConfigError, match="does not name a truncated trail"):
        truncation(name)


def test_truncated_names_their_base_and_their_kind():
    assert truncated_name("cm_ct", 0.25) == "cm_ct_first25" and truncated_name("dm", 0.4) == "dm_first40"
    assert truncation("cm_ct_first25") == 0.25 and truncation("cm_cd_first12.5") == 0.125
    assert truncation("dm") is None and truncation("cm_cd") is None
    assert truncation(truncated_name("cm_cd", 0.7)) == pytest.approx(0.7)
    assert [base_model(m) for m in ("dm", "cm_cd_first70", "dm_first10")] == ["dm", "cm_cd", "dm"]
    assert [model_kind(m) for m in ("dm", "dm_first10", "cm_cd", "cm_ct_first25")] == ["dm", "dm", "cm", "cm"]
    for bad in ("gan", "cm_xx", "cm", "DM"):
        with pytest.raises(
            ConfigError,
            match=f"unknown model {bad!r}; the models are dm, cm_cd, cm_ct, <model>_first<percent> and imported",
        ):
            check_model(bad)
    check_model("cm_ct_first25")  # a good name passes
    check_model("imported")
    sd = {"trail": {"source": "state_dict", "sampler": "cm"}}
    assert [model_kind("imported"), model_kind("imported", sd)] == ["dm", "cm"]
    with pytest.raises(ConfigError, match="does not name a truncated trail"):
        check_model("cm_ct_first0")


def test_search_nfe_and_the_trail_a_model_reads():
    cfg = load_config(REPO / "config" / "config.yaml", {"cost.fraction": 0.4})
    assert [search_nfe(cfg, m) for m in models(cfg)] == [str(cfg["search"]["nfe"]), "1", "1", "1", "1"]
    several = load_config(
        REPO / "config" / "config.yaml",
        {"search.nfe": [5, 3, 8], "consistency.search_nfe": [1, 2], "consistency.search_nfe_weights": [3, 1]},
    )
    assert [search_nfe(several, m) for m in models(several)] == ["5-3-8", "1-2", "1-2"]
    assert headline_nfe(several["search"]["nfe"]) == 5 and nfe_list(7) == [7]
    assert nfe_weights(for_model(several, "cm_cd")["search"]) == {1: 0.75, 2: 0.25}
    assert nfe_weights(several["search"]) == pytest.approx({5: 1 / 3, 3: 1 / 3, 8: 1 / 3})
    assert trained_model({"kind": "dm"}) == trained_model({}) == "dm"
    assert trained_model({"kind": "cm", "mode": "ct"}) == "cm_ct"
    check_trail("cm_ct_first40", {"kind": "cm", "mode": "ct"}, "m.json")  # a truncated name of the trail's model
    check_trail("dm", {}, "m.json")
    with pytest.raises(ConfigError) as err:
        check_trail("cm_cd", {"kind": "cm", "mode": "ct"}, "t/manifest.json")
    assert str(err.value) == (
        "--model cm_cd: t/manifest.json holds a cm_ct trail; pass --model cm_ct (or a truncated name of it)"
    )
    with pytest.raises(ConfigError, match="--model dm_first40: m.json holds a cm_cd trail"):
        check_trail("dm_first40", {"kind": "cm", "mode": "cd"}, "m.json")


def test_cost_fractions_and_repeats():
    # cost.fractions and the older cost.fraction merge, each model's fractions smallest first
    cfg = load_config(REPO / "config" / "config.yaml", {"cost.fractions": [0.5, 0.2], "cost.fraction": 0.4})
    assert models(cfg) == [
        "dm",
        "cm_cd",
        "cm_ct",
        "cm_cd_first20",
        "cm_cd_first40",
        "cm_cd_first50",
        "cm_ct_first20",
        "cm_ct_first40",
        "cm_ct_first50",
    ]
    # repeat 0 keeps the configured seeds (so one search gives today's numbers); the others derive
    # their own, distinct and reproducible
    assert repeat_seed(1000, 0) == 1000
    seeds = [repeat_seed(1000, r) for r in range(1, 20)]
    assert len(set(seeds)) == 19 and 1000 not in seeds and all(0 <= s < 2**32 for s in seeds)
    assert repeat_seed(1000, 3) == repeat_seed(1000, 3) != repeat_seed(1001, 3)
    second = search_repeat(cfg, 1)
    assert (second["search"]["seed"], second["search"]["rescore_seed"]) == (repeat_seed(1000, 1), repeat_seed(1001, 1))
    assert {k: v for k, v in second["search"].items() if "seed" not in k} == {
        k: v for k, v in cfg["search"].items() if "seed" not in k
    }
    assert search_repeat(cfg, 0) is cfg
    # a truncated trail's search starts from the LAWA windows that fit (cm_cd_first20: 5 checkpoints)
    assert cfg["baselines"]["lawa_last"] == [8] and for_model(cfg, "cm_cd_first20")["baselines"]["lawa_last"] == []
    assert for_model(cfg, "cm_cd_first50")["baselines"]["lawa_last"] == [8]
    assert stage_config(cfg, "baselines", "cm_cd_first20")["baselines"]["lawa_last"] == []
    with pytest.raises(ConfigError, match="--repeat: -1"):
        search_repeat(cfg, -1)
    layout = Layout.of(cfg)
    assert layout.search_dir("dm", "5").name == "nfe5" and layout.search_dir("dm", "3-5", 2).name == "nfe3-5-r2"
    # more searches leave the existing ones (their slice) alone
    more = load_config(REPO / "config" / "config.yaml", {"search.repeats": 3})
    assert stage_config(more, "search", "dm") == stage_config(
        load_config(REPO / "config" / "config.yaml"), "search", "dm"
    )
