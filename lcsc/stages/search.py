"""Stage search: LCSC's coefficient search. A nevergrad optimizer over one coefficient per
checkpoint, with fitness = FID of `samples` images at the target NFE (or a weighted mean over
several NFEs, plus an optional coefficient penalty: lcsc.kernel.scoring.Objective), on noise that
is the same for every candidate (common random numbers).

Four phases, every evaluation a row of history.csv:
- start: the baseline profiles with their fitness (read from the baselines stage's file, or
  scored here when there is none); the optimizer starts at the best (or at `search.init`);
- screen: ask and tell the optimizer for `budget` evaluations, `num_workers` at a time;
- rescore: the top candidates again, on more samples with another seed; the best of those is
  kept, which removes most of the luck of the screening noise;
- write: history.csv, coefficients.json and the combined weights.
The result is never worse, on the search's own fitness, than any start.

Resumable without pickles. Every evaluation and every candidate the optimizer asks for goes to
an append-only journal (lcsc.kernel.journal). A rerun rebuilds the optimizer from its seed and
replays the journal: the optimizer asks the same candidates again (each is checked against the
journal), and every fitness already measured is read back instead of computed. So a search
killed at any moment and rerun ends with the same history and the same best coefficients as one
that was never interrupted, and loses at most the evaluations in flight when it was killed.

Evaluations are keyed by a hash of the coefficients and everything the fitness depends on
(trail, NFE, samples, seed, feature net, reference stats, sampler, batch size): no candidate is
evaluated twice, within a run or across reruns, and changing the optimizer's settings still
reuses every fitness measured under the same fitness settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..kernel import profiles
from ..kernel.devices import check_compiler, peak_memory, search_devices
from ..kernel.errors import ConfigError, InputError
from ..kernel.families import family_for
from ..kernel.features import check_gate
from ..kernel.io import json_digest, read_json, remove_stale_temps, write_json
from ..kernel.journal import Journal
from ..kernel.optimizer import optimizer_class
from ..kernel.scoring import Evaluator, Objective, Scorer, fitness_settings, open_trail

# the loop itself (its history, fitness cache and phases) is lcsc.kernel.search_loop's; its names stay
# importable from here
from ..kernel.search_loop import Evaluation, Fitness, History, fitness_text, rescore, screen, start
from ..kernel.tensors import save_tensors

NAME = "search"


@dataclass(frozen=True)
class Paths:
    manifest: Path
    features: Path
    stats: Path
    coefficients: Path  # the result (JSON)
    history: Path  # every evaluation (CSV)
    best: Path  # the combined weights (safetensors)
    journal: Path  # the resume state (JSON lines)
    baselines: Path | None = None  # the baselines stage's scored profiles


def _starts(cfg: dict, scorer: Scorer, settings: dict, baselines: Path | None) -> tuple[dict, dict]:
    """The baseline profiles to start from, and the fitness the baselines stage measured for them."""
    if baselines is None:
        return profiles.trail_profiles(scorer.trail.steps, cfg["baselines"]), {}
    scored = read_json(
        baselines, "rerun the baselines stage (or pass the right --baselines)", keys=("profiles", "trail_sha256")
    )
    scorer.trail.check_fingerprint(scored.get("trail_sha256"), baselines)
    # Only the seed may differ (another of search.repeats): under any other setting the recorded
    # fitness would not be this search's fitness.
    diff = sorted(k for k in settings if scored.get(k) != settings[k])
    if diff and diff != ["seed"]:
        raise InputError(
            f"{baselines}: scored with other fitness settings than this search ({', '.join(diff)}); "
            "rerun the baselines stage"
        )
    starts = {n: np.asarray(p["coefficients"], dtype=np.float64) for n, p in scored["profiles"].items()}
    # Another of search.repeats: the same profiles (and soup), scored again on this search's noise.
    if diff:
        print(
            f"[search] {baselines} was scored with seed {scored.get('seed')}, this search uses "
            f"{settings['seed']}: its {len(starts)} profiles are scored again as starts",
            flush=True,
        )
        return starts, {}
    return starts, {n: (p["fitness"], p.get("fids")) for n, p in scored["profiles"].items()}


def write(
    scfg: dict,
    paths: Paths,
    scorer: Scorer,
    history: History,
    start_row: Evaluation,
    chosen: Evaluation,
    rescored: float | None,
) -> dict:
    """history.csv, the combined weights and coefficients.json (written last: the rule's first output)."""
    history.write_csv(paths.history)
    trail = scorer.trail
    scorer.loader.combine_into(scorer.W, chosen.coefficients)
    save_tensors(paths.best, scorer.model.state_dict())
    result = {
        "coefficients": chosen.coefficients.tolist(),
        "fitness": chosen.fitness,
        "evaluation": chosen.index,
        "rescore_fitness": rescored,
        "trail_steps": trail.steps,
        "trail_sha256": trail.fingerprint,
        "fids": {str(n): f for n, f in chosen.fids.items()},
        **history.objective.settings(),
        "samples": scfg["samples"],
        "seed": scfg["seed"],
        "optimizer": scfg["optimizer"],
        "budget": scfg["budget"],
        "parametrization": scfg["parametrization"],
        "start": {"name": start_row.name, "fitness": start_row.fitness},
        "starts": {r.name: r.fitness for r in history.rows if r.phase == "start"},
        "distinct_evaluations": len({r.key for r in history.rows}),
    }
    write_json(paths.coefficients, result)
    return result


def _announce(scfg: dict, scorer: Scorer, devices: list, fitness: Fitness) -> None:
    print(
        f"[search] {len(scorer.trail)} checkpoints, {scorer.loader.numel} parameters, {scfg['optimizer']} "
        f"budget {scfg['budget']}, {scfg['samples']} samples at {fitness_text(fitness.objective)}, "
        f"{scfg['num_workers']} candidates per batch on {', '.join(map(str, devices))}",
        flush=True,
    )
    print(f"[search] trail: {scorer.trail_placement()}", flush=True)
    journal = fitness.journal
    if fitness.resumed:
        print(
            f"[search] resuming from {journal.path}: {fitness.resumed} evaluations measured earlier are "
            "read back, and the optimizer replays its candidates",
            flush=True,
        )
    if journal.dropped:
        print(
            f"[search] {journal.path}: dropped a last record torn by an interruption ({journal.dropped} bytes)",
            flush=True,
        )


def _scorers(cfg: dict, family, paths: Paths, devices: list) -> list[Scorer]:
    """One scorer per search device; the first one's trail is shared with the others."""
    scfg = cfg["search"]
    scorers = [
        Scorer(
            family,
            paths.features,
            paths.stats,
            d,
            scfg["batch_size"],
            scfg["trail_chunk_mb"],
            compile=scfg["compile"],
            cfg=cfg,
        )
        for d in devices
    ]
    check_gate(scorers[0].features)
    if len(scorers) > 1:
        scorers[0].share_trail(scorers[1:])
    return scorers


def _digests(scfg: dict, settings: dict, scorer: Scorer, devices: list) -> tuple[str, str]:
    """The screening's and the rescoring's fitness digests (their samples and seeds differ)."""
    # what a fitness depends on; the device type too, so that resuming on other hardware rescores
    common = {
        **settings,
        "trail_sha256": scorer.trail.fingerprint,
        "device": sorted({d.type for d in devices}),
        **({"compile": True} if scfg["compile"] else {}),
    }
    rescoring = {**common, "samples": scfg["rescore_samples"], "seed": scfg["rescore_seed"]}
    return json_digest(common), json_digest(rescoring)


def run(cfg: dict, paths: Paths, model: str, device: torch.device, stage_run=None) -> dict:
    scfg = cfg["search"]
    for out in (paths.coefficients, paths.history, paths.best):
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out.parent)
    devices = search_devices(scfg, torch.device(device))
    optimizer_class(scfg)  # an unknown optimizer fails here, before any scoring
    family = family_for(open_trail(paths.manifest, model, cfg), cfg)
    check_compiler(scfg, devices)
    scorers = _scorers(cfg, family, paths, devices)
    scorer = scorers[0]
    settings = fitness_settings(scfg, scorer)
    screen_digest, rescore_digest = _digests(scfg, settings, scorer, devices)
    starts, known = _starts(cfg, scorer, settings, paths.baselines)
    if scfg["init"] != "best_profile" and scfg["init"] not in starts:
        raise ConfigError(f"search.init: {scfg['init']!r} is not among the baseline profiles {sorted(starts)}")
    journal = Journal(paths.journal)
    journal.start()
    try:  # the journal holds its lock until the outputs are written
        objective = Objective.of(scfg)
        fitness = Fitness(journal, Evaluator(scorers), objective)
        _announce(scfg, scorer, devices, fitness)
        history = History(len(starts) + scfg["budget"] + scfg["rescore_top"], objective, stage_run)
        start_row = start(scfg, starts, known, fitness, history, screen_digest)
        screen(scfg, start_row.coefficients.copy(), fitness, history, screen_digest)
        chosen, rescored = rescore(scfg, fitness, history, rescore_digest)
        history.bar.close()
        print(
            f"[search] {fitness.evaluated} evaluations computed in this run, {fitness.reused} fitnesses reused "
            "(from the baselines stage, the journal or an identical candidate)",
            flush=True,
        )
        print(f"[search] {peak_memory(devices)}", flush=True)
        result = write(scfg, paths, scorer, history, start_row, chosen, rescored)
    finally:
        journal.close()
    if stage_run is not None:
        stage_run.log_metrics({"best_fitness_final": result["fitness"]}, step=0)
        stage_run.log_artifact(paths.coefficients)
        stage_run.log_artifact(paths.history)
    return result
