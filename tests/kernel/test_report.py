"""The report's tables and sentences, on small hand-made results: the marks in the table, and the
numbers and verdicts of each claim both where it holds and where it does not."""

import pytest

from lcsc.kernel.report import (
    best_baselines,
    best_ema,
    claims,
    consistency_claim,
    cost_claim,
    cost_curve_claim,
    cost_rows,
    cost_table,
    gap_test,
    kept_emas,
    markdown_table,
    quality_table,
    significance_claim,
)

# FID by variant and NFE: lcsc best at NFE 1, the kept EMA best at NFE 2
RESULTS = {
    "last": {1: 30.0, 2: 20.0},
    "ema_0.99": {1: 25.0, 2: 18.0},
    "uniform": {1: 28.0, 2: 19.5},
    "lcsc": {1: 22.0, 2: 18.5},
}


def _with(lcsc: dict, base: dict = RESULTS, **more) -> dict:
    return {**{k: v for k, v in base.items() if k != "lcsc"}, **more, "lcsc": lcsc}


def test_markdown_table_bolds_each_columns_best_and_marks_the_best_baseline():
    assert markdown_table(RESULTS, [1, 2]).splitlines() == [
        "| variant | NFE 1 | NFE 2 |",
        "| --- | ---: | ---: |",
        "| last | 30.00 | 20.00 |",
        "| ema_0.99 | 25.00 † | **18.00** † |",
        "| uniform | 28.00 | 19.50 |",
        "| lcsc | **22.00** | 18.50 |",
    ]
    # ties are all bold; lcsc alone has no baseline to mark
    tied = markdown_table({"last": {1: 5.0}, "lcsc": {1: 5.0}}, [1])
    assert tied.splitlines()[2:] == ["| last | **5.00** † |", "| lcsc | **5.00** |"]
    assert "†" not in markdown_table({"lcsc": {1: 3.0, 2: 2.0}}, [1, 2])


def test_best_baselines_and_kept_emas():
    assert best_baselines(RESULTS, [1, 2]) == {1: "ema_0.99", 2: "ema_0.99"}
    assert best_baselines(_with({1: 1.0, 2: 1.0}, ema_0_9={1: 24.0, 2: 21.0}), [1]) == {1: "ema_0_9"}
    assert best_baselines({"lcsc": {1: 1.0}}, [1]) == {}
    # the first of equal baselines, in the results' order
    assert best_baselines({"uniform": {1: 2.0}, "last": {1: 2.0}, "lcsc": {1: 1.0}}, [1]) == {1: "uniform"}
    # only EMAs kept during training count as EMAs, not their profiles recomputed from the trail
    results = _with(RESULTS["lcsc"], **{"ema_0.9": {1: 26.0, 2: 17.0}, "ema_0.9_profile": {1: 1.0, 2: 1.0}})
    assert kept_emas(results) == ["ema_0.99", "ema_0.9"]
    assert best_ema(results, 1) == "ema_0.99" and best_ema(results, 2) == "ema_0.9"
    assert best_ema({"last": {1: 1.0}, "lcsc": {1: 1.0}}, 1) is None


def test_claims_state_the_numbers_and_whether_lcsc_wins():
    results = _with({1: 22.0, 2: 18.5}, **{"ema_0.99_profile": {1: 26.0, 2: 19.0}})
    assert claims(results, 2, [1, 2]) == [
        "At the search NFE 2, LCSC's FID 18.50 is NOT below both the last checkpoint's 20.00 and the best "
        "EMA's (ema_0.99) 18.00, on evaluation seeds the search never saw.",
        "At NFE 2 LCSC does NOT beat the best baseline, ema_0.99 (18.00).",
        "The EMA 0.99 kept during training scores 18.00 at NFE 2; the same EMA computed afterwards from the "
        "sparse trail (ema_0.99_profile) scores 19.00.",
    ]
    wins = _with({1: 17.0, 2: 15.0}, results)
    assert claims(wins, 2, [1, 2]) == [
        "At the search NFE 2, LCSC's FID 15.00 is below both the last checkpoint's 20.00 and the best "
        "EMA's (ema_0.99) 18.00, on evaluation seeds the search never saw.",
        "At NFE 2 LCSC beats the best baseline, ema_0.99 (18.00).",
        "The EMA 0.99 kept during training scores 18.00 at NFE 2; the same EMA computed afterwards from the "
        "sparse trail (ema_0.99_profile) scores 19.00.",
        "LCSC at NFE 1 (FID 17.00) matches or beats the best EMA at NFE 2 (FID 18.00).",
    ]
    # beating the last checkpoint alone is not "below both"; equal to the best baseline is not beating it
    assert claims(_with({1: 30.0, 2: 19.0}), 2, [1, 2])[0].startswith(
        "At the search NFE 2, LCSC's FID 19.00 is NOT below both"
    )
    assert (
        claims(_with({1: 30.0, 2: 18.0}), 2, [1, 2])[1] == "At NFE 2 LCSC does NOT beat the best baseline, "
        "ema_0.99 (18.00)."
    )
    # without kept EMAs: the best-baseline sentence only
    no_ema = {"last": {1: 30.0, 2: 20.0}, "uniform": {1: 28.0, 2: 19.5}, "lcsc": {1: 22.0, 2: 19.0}}
    assert claims(no_ema, 2, [1, 2]) == ["At NFE 2 LCSC beats the best baseline, uniform (19.50)."]


def test_consistency_claim_compares_lcsc_with_the_base_model_at_the_next_nfe():
    def claim(lcsc_at_1, results=RESULTS):
        return consistency_claim(_with({1: lcsc_at_1, 2: 9.0}, results), 1, [1, 2])

    head = (
        "Paper's claim, LCSC at 1 NFE vs the base model at 2 NFE: LCSC scores {} at 1 NFE; the last "
        "checkpoint at 2 NFE scores 20.00 and the best EMA at 2 NFE (ema_0.99) 18.00. "
    )
    tail = " (evaluation seeds the search never saw)."
    assert (
        claim(17.0)
        == head.format("17.00") + "LCSC at 1 NFE beats the base model at 2 NFE: the paper's claim holds here" + tail
    )
    assert (
        claim(19.0) == head.format("19.00") + "LCSC at 1 NFE beats the last checkpoint but not the best "
        "EMA at 2 NFE: the paper's claim holds only against the last checkpoint here" + tail
    )
    for worse in (20.0, 25.0):  # equal to the last checkpoint does not beat it
        assert (
            claim(worse) == head.format(f"{worse:.2f}") + "LCSC at 1 NFE does NOT beat the base model at "
            "2 NFE: the paper's claim does not hold here" + tail
        )
    # no kept EMA: the last checkpoint is the base model
    no_ema = {"last": {1: 30.0, 2: 20.0}, "uniform": {1: 28.0, 2: 19.5}}
    assert (
        claim(19.0, no_ema) == "Paper's claim, LCSC at 1 NFE vs the base model at 2 NFE: LCSC scores 19.00 "
        "at 1 NFE; the last checkpoint at 2 NFE scores 20.00. LCSC at 1 NFE beats the base model at 2 NFE: "
        "the paper's claim holds here" + tail
    )
    # the next NFE of the sweep, not the next integer; none above the search NFE: no claim
    sweep = {v: {1: f, 4: f - 1, 8: f - 2} for v, f in (("last", 30.0), ("lcsc", 28.5))}
    assert "the last checkpoint at 4 NFE scores 29.00" in consistency_claim(sweep, 1, [1, 4, 8])
    assert "the paper's claim holds here" in consistency_claim(sweep, 1, [1, 4, 8])  # 28.50 < 29.00
    assert consistency_claim(RESULTS, 2, [1, 2]) is None


@pytest.mark.parametrize(
    "lcsc, verdict",
    [
        (
            17.0,
            "It matches or beats the full run's best (ema_0.99) with 20 of 40 training iterations: an implied "
            "training speed-up of 40/20 = 2.0x.",
        ),
        (
            18.0,
            "It matches or beats the full run's best (ema_0.99) with 20 of 40 training iterations: an implied "
            "training speed-up of 40/20 = 2.0x.",
        ),
        (
            18.01,
            "It does not reach the full run's best (ema_0.99, 18.00), so this run implies no training speed-up "
            "at this fraction.",
        ),
    ],
)
def test_cost_claim_states_the_speed_up_only_where_lcsc_reaches_the_full_run(lcsc, verdict):
    kept = {"fraction": 0.5, "steps": 20, "total": 40, "checkpoints": 2}
    # at NFE 2 the full run's best is its EMA (18.00), its last 20.00
    text = cost_claim("cm_ct", {"last": {2: 24.0}, "lcsc": {2: lcsc}}, RESULTS, 2, kept)
    assert text == (
        f"LCSC over the first 50% of cm_ct's training (2 checkpoints, steps up to 20 of 40) scores FID "
        f"{lcsc:.2f} at 2 NFE; that trail's own last checkpoint scores 24.00, and the full run's last "
        f"20.00 and its best EMA (ema_0.99) 18.00. {verdict}"
    )


def test_cost_claim_without_a_kept_ema_compares_with_the_last_checkpoint():
    full = {"last": {1: 20.0}, "uniform": {1: 19.0}, "lcsc": {1: 15.0}}
    kept = {"fraction": 0.7, "steps": 21, "total": 30, "checkpoints": 3}
    text = cost_claim("dm", {"last": {1: 26.0}, "lcsc": {1: 19.5}}, full, 1, kept)
    assert text == (
        "LCSC over the first 70% of dm's training (3 checkpoints, steps up to 21 of 30) scores FID 19.50 "
        "at 1 NFE; that trail's own last checkpoint scores 26.00, and the full run's last 20.00. It "
        "matches or beats the full run's best (last) with 21 of 30 training iterations: an implied "
        "training speed-up of 30/21 = 1.4x."
    )


def test_the_report_says_where_lcsc_loses_to_the_best_baseline_and_by_how_much():
    from lcsc.kernel.report import versus_best_baseline

    results = {
        "last": {3: 40.0, 5: 20.0, 12: 9.0},
        "ema_0.999": {3: 44.3, 5: 18.67, 12: 7.85},
        "greedy_soup": {3: 26.0, 5: 15.0, 12: 9.5},
        "lcsc": {3: 27.11, 5: 13.12, 12: 8.95},
    }
    text = versus_best_baseline(results, [3, 5, 12])
    assert text == (
        "Against the best baseline at each NFE, LCSC LOSES at NFE 3 (27.11 vs greedy_soup 26.00, +1.11), "
        "NFE 12 (8.95 vs ema_0.999 7.85, +1.10); it wins at NFE 5 (13.12 vs greedy_soup 15.00, -1.88)."
    )
    results["lcsc"] = {3: 20.0, 5: 10.0, 12: 7.0}
    assert versus_best_baseline(results, [3, 5, 12]).startswith(
        "Against the best baseline at each NFE, LCSC wins at every evaluated NFE: NFE 3 (20.00 vs greedy_soup"
    )


def test_nfe_saving_is_measured_or_interpolated_in_log_nfe_and_marked():
    from lcsc.kernel.report import nfe_saving_claim, nfe_saving_table, nfe_savings

    results = {"ema": {2: 40.0, 4: 20.0, 8: 10.0}, "lcsc": {2: 30.0, 4: 10.0, 8: 9.0}}
    savings = nfe_savings(results, [2, 4, 8])
    # at NFE 2 LCSC is already below 40; 20 lies between LCSC's 30 at 2 and 10 at 4: half-way in
    # log NFE, NFE 2 * 2^0.5; 10 is LCSC's FID at 4, measured
    assert [(s["nfe"], s["how"]) for s in savings] == [(2, "at most"), (4, "interpolated"), (8, "measured")]
    assert savings[1]["lcsc_nfe"] == pytest.approx(2 * 2**0.5) and savings[2]["lcsc_nfe"] == 4.0
    table = nfe_saving_table(savings)
    assert "| 4 (ema) | 20.00 | 2.8 (interpolated) | 1.41x |" in table
    assert "| 8 (ema) | 10.00 | 4 | 2.00x |" in table and "| 2 (ema) | 40.00 | at most 2 | 1.00x or more |" in table
    assert nfe_saving_claim(results, [2, 4, 8]).startswith(
        "NFE saving: LCSC at 4 NFE (10.00) matches or beats the best baseline at 8 NFE (ema, 10.00), 2.00x fewer"
    )
    never = {"ema": {2: 5.0, 4: 3.0}, "lcsc": {2: 6.0, 4: 4.0}}
    assert [s["how"] for s in nfe_savings(never, [2, 4])] == ["interpolated", "not reached"]
    assert "| 4 (ema) | 3.00 | not reached | none |" in nfe_saving_table(nfe_savings(never, [2, 4]))


def test_coefficient_stats_and_more_steps_getting_worse():
    from lcsc.kernel.report import coefficient_stats, monotone_claim

    table = coefficient_stats({"lcsc": [1.5, -0.5, 0.0], "uniform": [0.5, 0.5]})
    assert (
        "| lcsc | 1.000 | 1.581 | 1.500 | 1 of 3 |" in table
        and "| uniform | 1.000 | 0.707 | 0.500 | 0 of 2 |" in table
    )
    assert monotone_claim({1: 33.07, 2: 33.79}, [1, 2]).startswith("LCSC is WORSE at 2 NFE (33.79) than at 1 NFE")
    assert monotone_claim({1: 30.0, 2: 28.0}, [1, 2]) == "LCSC gets no worse with more steps: 30.00 at 1, 28.00 at 2."


def test_error_bars_and_which_gaps_exceed_two_standard_errors():
    results = {"last": {1: 30.0, 2: 20.0}, "ema_0.99": {1: 25.0, 2: 18.0}, "lcsc": {1: 22.0, 2: 18.5}}
    # (std, runs): lcsc over 2 searches x 3 seeds, the baselines over 3 seeds
    spread = {
        "last": {1: (1.0, 3), 2: (1.0, 3)},
        "ema_0.99": {1: (0.6, 3), 2: (0.6, 3)},
        "lcsc": {1: (0.9, 6), 2: (0.9, 6)},
    }
    row = markdown_table(results, [1, 2], spread).splitlines()[3]
    assert row == "| ema_0.99 | 25.00 ± 0.60 † | **18.00** ± 0.60 † |"
    gap, two_se = gap_test(results, spread, "lcsc", "ema_0.99", 1)
    assert gap == pytest.approx(-3.0) and two_se == pytest.approx(2 * (0.81 / 6 + 0.36 / 3) ** 0.5)
    text = significance_claim(results, spread, [1, 2])
    # NFE 1: 3.00 apart, 2 SE = 1.01: beyond noise; NFE 2: 0.50 apart: within it
    assert "exceeds two standard errors at NFE 1 (LCSC better by 3.00, 2 SE 1.01, vs ema_0.99)" in text
    assert "within noise at NFE 2 (LCSC worse by 0.50, 2 SE 1.01, vs ema_0.99)" in text
    assert "6 lcsc runs and 3 of each baseline" in text
    assert significance_claim(results, {}, [1, 2]) is None  # one run each: no error bars, no sentence


def test_quality_table_shows_kid_precision_and_recall_per_nfe():
    q = {"lcsc": {"kid": {1: 0.0123, 2: 0.004}, "precision": {1: 0.8, 2: 0.9}, "recall": {1: 0.55, 2: 0.6}}}
    assert quality_table(q, [1, 2]).splitlines()[2] == "| lcsc | 0.0123 / 0.80 / 0.55 | 0.004 / 0.90 / 0.60 |"
    big = {"last": {"kid": {1: 199098.7}, "precision": {1: 0.6}, "recall": {1: 0.29}}}
    assert quality_table(big, [1]).splitlines()[2] == "| last | 199099 / 0.60 / 0.29 |"


def test_cost_curve_gives_the_speed_up_of_the_smallest_fraction_that_reaches_the_full_run():
    full = {"last": {1: 40.0}, "ema_0.99": {1: 30.0}, "lcsc": {1: 20.0}}

    def part(fraction, lcsc, last=60.0):
        return {
            "results": {"last": {1: last}, "lcsc": {1: lcsc}},
            "kept": {"fraction": fraction, "steps": int(1000 * fraction), "total": 1000, "checkpoints": 3},
        }

    rows = cost_rows({0.1: part(0.1, 35.0), 0.2: part(0.2, 29.0), 0.5: part(0.5, 24.0)}, full, 1)
    # the full run's best is its EMA (30); 0.1 misses it, 0.2 and 0.5 reach it
    assert [r["speedup"] for r in rows] == [None, 5.0, 2.0]
    table = cost_table(rows, 1).splitlines()
    assert (
        table[0].startswith("| fraction | checkpoints | steps | lcsc at NFE 1 |") and "full run's ema_0.99" in table[0]
    )
    assert table[2:] == [
        "| 0.1 | 3 | 100 of 1000 | 35.00 | 60.00 | 40.00 | 30.00 | none |",
        "| 0.2 | 3 | 200 of 1000 | 29.00 | 60.00 | 40.00 | 30.00 | 5.0x |",
        "| 0.5 | 3 | 500 of 1000 | 24.00 | 60.00 | 40.00 | 30.00 | 2.0x |",
    ]
    claim = cost_curve_claim("cm_ct", rows, 1)
    assert "first 20% of training (200 of 1000 iterations) scores 29.00" in claim and "5.0x training speed-up" in claim
    none = cost_rows({0.1: part(0.1, 35.0), 0.2: part(0.2, 31.0)}, full, 1)
    assert "no training speed-up shown" in cost_curve_claim("cm_ct", none, 1)
    assert "closest is 31.00 at fraction 0.2" in cost_curve_claim("cm_ct", none, 1)


def test_the_sampler_line_says_where_lcsc_clips_as_the_run_does():
    from lcsc.kernel.report import sampler_line

    assert sampler_line({"sampler": "ddim", "clip_denoised": True}) == "sampler: ddim"
    line = sampler_line({"sampler": "diffusers-DPMSolverMultistepScheduler", "x0_clip": 1.0})
    assert line == (
        "sampler: diffusers-DPMSolverMultistepScheduler, its predicted clean image clipped to [-1, 1] at "
        "every step as the run's own pipeline clips it (the scheduler config's clip_sample)"
    )
    assert sampler_line({"sampler": "diffusers-DDIMScheduler", "x0_clip": None}) == "sampler: diffusers-DDIMScheduler"


def test_the_feature_space_line_says_what_a_fid_compares_with():
    from lcsc.kernel.report import feature_space_line

    assert "trained on this run's own data (autoencoder: features.kind autoencoder)" in feature_space_line(
        "autoencoder", "autoencoder"
    )
    line = feature_space_line("inception", "inception-clean")
    assert line.startswith("The FIDs are in the inception-clean feature space") and "same reference set" in line


def test_a_gap_inside_the_noise_is_no_measurable_difference():
    """A win is claimed only beyond the data-vs-data floor and two standard errors of the seeds."""
    from lcsc.kernel.report import Noise, noise_line, verdicts, versus_best_baseline

    results = {"last": {3: 10.0, 5: 8.0}, "ema_0.99": {3: 9.0, 5: 7.0}, "lcsc": {3: 5.0, 5: 6.8}}
    spread = {v: {3: (0.5, 2), 5: (0.5, 2)} for v in results}
    noise = Noise(floor=1.0, spread=spread)
    assert noise.threshold("lcsc", "last", 3) == 1.0  # 2 SE = 2 sqrt(0.125 + 0.125) = 1.0 as well
    assert Noise(floor=0.2, spread=spread).threshold("lcsc", "last", 3) == pytest.approx(1.0)
    assert Noise(floor=3.0).threshold("lcsc", "last", 3) == 3.0
    text = versus_best_baseline(results, [3, 5], noise)
    assert "wins at NFE 3" in text and "no measurable difference (a smaller gap than the noise) at NFE 5" in text
    assert versus_best_baseline(results, [3, 5]).startswith(
        "Against the best baseline at each NFE, LCSC wins at every evaluated NFE"
    )  # no noise given: as before
    said = verdicts(results, noise, "lcsc", ["last", "ema_0.99"], [3, 5])
    assert "lcsc beats last at NFE 3 (gap 5.00, noise 1.00)" in said
    assert "lcsc shows no measurable difference from ema_0.99 at NFE 5 (gap 0.20, noise 1.00)" in said
    assert "beats" not in verdicts(results, Noise(floor=6.0), "lcsc", ["last"], [3, 5])
    line = noise_line({"fid": 1.0, "n": 898, "of": 1797, "samples": 2000}, spread, [3, 5])
    assert "two disjoint sets of 898 real images score FID 1.00" in line and "standard deviation of 0.50" in line
    assert "no seed spread was measured" in noise_line({"fid": 1.0, "n": 9, "of": 18, "samples": 9}, {}, [3])
    assert claims(results, 5, [3, 5], noise)[1] == (
        "At NFE 5 LCSC shows no measurable difference from the best baseline, ema_0.99 (7.00)."
    )


def test_worse_with_more_steps_only_beyond_the_floor():
    from lcsc.kernel.report import monotone_claim

    assert monotone_claim({5: 1.01, 8: 1.12}, [5, 8]).startswith("LCSC is WORSE at 8 NFE")
    assert monotone_claim({5: 1.01, 8: 1.12}, [5, 8], floor=0.93).startswith(
        "LCSC gets no worse with more steps (beyond the noise floor)"
    )
    assert monotone_claim({5: 1.01, 8: 2.12}, [5, 8], floor=0.93).startswith("LCSC is WORSE at 8 NFE")
