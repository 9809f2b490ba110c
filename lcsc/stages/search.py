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

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..kernel import profiles
from ..kernel.devices import check_compiler, peak_memory, search_devices
from ..kernel.errors import ConfigError, InputError
from ..kernel.families import family_for
from ..kernel.features import check_gate
from ..kernel.io import (
    atomic_path,
    json_digest,
    read_json,
    remove_stale_temps,
    write_json,
)
from ..kernel.journal import Journal
from ..kernel.optimizer import make_optimizer, optimizer_class, to_coefficients
from ..kernel.progress import progress
from ..kernel.scoring import (
    Evaluator,
    Objective,
    Scorer,
    fitness_key,
    fitness_settings,
    open_trail,
)
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


@dataclass
class Evaluation:
    """One row of the history."""

    index: int
    phase: str  # start, search or rescore
    name: str
    coefficients: np.ndarray
    fitness: float
    best_so_far: float
    seconds: float
    key: str  # the fitness key: equal keys, equal coefficients and settings
    fids: dict[int, float]  # the FID at each search NFE (empty: not sampled, or read from an older file)


class History:
    """Every evaluation in order, the best screening fitness so far, and their progress bar and
    MLflow metrics."""

    def __init__(self, total: int, objective: Objective, stage_run=None):
        self.rows: list[Evaluation] = []
        self.objective = objective
        self.nfes = objective.nfes
        self.best = float("inf")
        self.bar = progress(total=total, desc="search")
        self.stage_run = stage_run

    def add(self, phase: str, c: np.ndarray, rec: dict, name: str = "") -> Evaluation:
        if phase != "rescore":
            self.best = min(self.best, rec["fitness"])
        row = Evaluation(
            len(self.rows),
            phase,
            name,
            np.asarray(c, dtype=np.float64),
            rec["fitness"],
            self.best,
            round(rec["seconds"], 4),
            rec["key"],
            {int(n): f for n, f in rec.get("fids", {}).items()},
        )
        self.rows.append(row)
        self.bar.update(1)
        self.bar.set_postfix(best=f"{self.best:.2f}", last=f"{row.fitness:.2f}")
        if self.stage_run is not None:
            key = "rescore_fitness" if phase == "rescore" else "fitness"
            self.stage_run.log_metrics(
                {key: row.fitness, "best_fitness": self.best, "seconds": rec["seconds"]}, step=row.index
            )
        return row

    def write_csv(self, path: Path) -> None:
        """history.csv: the FID at each search NFE (fid_nfe<n>, with several) and one column per
        coefficient (c000, c001, ...), for people and spreadsheets."""
        k = len(self.rows[0].coefficients)
        per_nfe = self.nfes if len(self.nfes) > 1 else []
        fields = [
            "evaluation",
            "phase",
            "name",
            "fitness",
            "best_so_far",
            "seconds",
            *[f"fid_nfe{n}" for n in per_nfe],
            *[f"c{i:03d}" for i in range(k)],
        ]
        with atomic_path(path) as tmp:
            with open(tmp, "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(fields)
                for r in self.rows:
                    writer.writerow(
                        [
                            r.index,
                            r.phase,
                            r.name,
                            r.fitness,
                            r.best_so_far,
                            r.seconds,
                            *[r.fids.get(n, "") for n in per_nfe],
                            *r.coefficients.tolist(),
                        ]
                    )


class Fitness:
    """Fitness records by key: measured by the evaluator, kept in the journal, read back on resume."""

    def __init__(self, journal: Journal, evaluator: Evaluator, objective: Objective):
        self.journal, self.evaluator, self.objective = journal, evaluator, objective
        self.cache: dict[str, dict] = {r["key"]: r for r in journal.records if r.get("type") == "eval"}
        self.resumed = len(self.cache)
        self.evaluated = self.reused = 0

    def know(self, c: np.ndarray, digest: str, fitness: float, fids: dict | None = None) -> None:
        """A fitness measured elsewhere under the same settings (the baselines stage)."""
        k = fitness_key(c, digest)
        self.cache.setdefault(k, {"key": k, "fitness": fitness, "fids": fids or {}, "seconds": 0.0})

    def measure(self, cs: list[np.ndarray], digest: str, samples: int, seed: int) -> list[dict]:
        """Fitness records of `cs`, scoring only those not in the cache (each distinct one once)."""
        keys = [fitness_key(c, digest) for c in cs]
        todo = list(dict.fromkeys(k for k in keys if k not in self.cache))
        places = [keys.index(k) for k in todo]  # each one's place in the ask-batch, which picks its device
        self.reused += len(keys) - len(todo)

        def on_result(i: int, fitness: float, fids: dict, seconds: float) -> None:
            rec = {
                "type": "eval",
                "key": todo[i],
                "fitness": float(fitness),
                "fids": {str(n): float(f) for n, f in fids.items()},
                "seconds": round(seconds, 4),
            }
            self.journal.append(rec)
            self.cache[todo[i]] = rec
            self.evaluated += 1

        self.evaluator.evaluate([cs[p] for p in places], places, self.objective, samples, seed, on_result)
        return [self.cache[k] for k in keys]


def _starts(cfg: dict, scorer: Scorer, settings: dict, baselines: Path | None) -> tuple[dict, dict]:
    """The baseline profiles to start from, and the fitness the baselines stage measured for them."""
    if baselines is None:
        return profiles.trail_profiles(scorer.trail.steps, cfg["baselines"]), {}
    scored = read_json(
        baselines, "rerun the baselines stage (or pass the right --baselines)", keys=("profiles", "trail_sha256")
    )
    scorer.trail.check_fingerprint(scored.get("trail_sha256"), baselines)
    diff = sorted(k for k in settings if scored.get(k) != settings[k])
    if diff and diff != ["seed"]:
        raise InputError(
            f"{baselines}: scored with other fitness settings than this search ({', '.join(diff)}); "
            "rerun the baselines stage"
        )
    starts = {n: np.asarray(p["coefficients"], dtype=np.float64) for n, p in scored["profiles"].items()}
    if diff:  # another of search.repeats: the same profiles (and soup), scored again on this search's noise
        print(
            f"[search] {baselines} was scored with seed {scored.get('seed')}, this search uses "
            f"{settings['seed']}: its {len(starts)} profiles are scored again as starts",
            flush=True,
        )
        return starts, {}
    return starts, {n: (p["fitness"], p.get("fids")) for n, p in scored["profiles"].items()}


def start(scfg: dict, starts: dict, known: dict, fitness: Fitness, history: History, digest: str) -> Evaluation:
    """Score the starting profiles (those the baselines stage scored are read back); the start row."""
    for name, c in starts.items():
        if name in known:
            fitness.know(c, digest, *known[name])
    recs = fitness.measure(list(starts.values()), digest, scfg["samples"], scfg["seed"])
    rows = [history.add("start", c, rec, name=name) for (name, c), rec in zip(starts.items(), recs)]
    if scfg["init"] == "best_profile":
        return min(rows, key=lambda r: r.fitness)
    return next(r for r in rows if r.name == scfg["init"])


def screen(scfg: dict, init: np.ndarray, fitness: Fitness, history: History, digest: str) -> None:
    """Ask `num_workers` candidates, score them as one batch, tell; replayed from the journal."""
    opt = make_optimizer(init, scfg)
    run_key = json_digest(
        {
            "fitness": digest,
            "init": init.tolist(),
            **{
                k: scfg[k]
                for k in ("optimizer", "budget", "num_workers", "seed", "sigma", "bounds", "parametrization")
            },
        }
    )[:16]
    journal = fitness.journal
    asked = [r["z"] for r in journal.records if r.get("type") == "ask" and r.get("run") == run_key]
    n_asked, replay_ok = 0, True
    end = len(history.rows) + scfg["budget"]
    while len(history.rows) < end:
        batch = [opt.ask() for _ in range(min(scfg["num_workers"], end - len(history.rows)))]
        for cand in batch:
            z = np.asarray(cand.value, dtype=np.float64)
            if n_asked >= len(asked):
                journal.append({"type": "ask", "run": run_key, "index": n_asked, "z": z.tolist()})
            elif replay_ok and not np.array_equal(np.asarray(asked[n_asked]), z):
                replay_ok = False
                warnings.warn(
                    f"{journal.path}: the optimizer's candidate {n_asked} differs from the one "
                    "recorded (another nevergrad version?); the search goes on from here with "
                    "new candidates, reusing every fitness measured before",
                    stacklevel=2,
                )
            n_asked += 1
        cs = [to_coefficients(cand.value, scfg["parametrization"], scfg["bounds"]) for cand in batch]
        for cand, c, rec in zip(batch, cs, fitness.measure(cs, digest, scfg["samples"], scfg["seed"])):
            opt.tell(cand, rec["fitness"])
            history.add("search", c, rec)


def rescore(scfg: dict, fitness: Fitness, history: History, digest: str) -> tuple[Evaluation, float | None]:
    """The top distinct candidates on more samples and another seed: the best of them, and its re-score."""
    chosen = min(history.rows, key=lambda r: r.fitness)
    if scfg["rescore_top"] <= 0:
        return chosen, None
    distinct: dict[str, Evaluation] = {}
    for row in sorted(history.rows, key=lambda r: r.fitness):  # the same coefficients are re-scored once
        distinct.setdefault(row.key, row)
    top = list(distinct.values())[: scfg["rescore_top"]]
    recs = fitness.measure([row.coefficients for row in top], digest, scfg["rescore_samples"], scfg["rescore_seed"])
    results = []
    for row, rec in zip(top, recs):
        history.add("rescore", row.coefficients, rec, name=f"of evaluation {row.index}")
        results.append((rec["fitness"], row))
    rescored, chosen = min(results, key=lambda x: x[0])
    return chosen, rescored


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


def fitness_text(objective: Objective) -> str:
    """`NFE 5`, or `NFE 3, 5, 8 (log mean, weights 0.33/0.33/0.33)`, and the penalty, for logs."""
    nfes = objective.nfes
    text = (
        f"NFE {nfes[0]}"
        if len(nfes) == 1
        else (
            f"NFE {', '.join(map(str, nfes))} ({objective.mean} mean, weights "
            f"{'/'.join(f'{w:.2f}' for w in objective.weights.values())})"
        )
    )
    if objective.penalty != "none" and objective.penalty_weight:
        text += f" + {objective.penalty_weight:g} x {objective.penalty} penalty"
    if objective.max_norm is not None:
        text += f", |c| <= {objective.max_norm:g}"
    return text


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


def run(cfg: dict, paths: Paths, model: str, device: torch.device, stage_run=None) -> dict:
    scfg = cfg["search"]
    for out in (paths.coefficients, paths.history, paths.best):
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out.parent)
    devices = search_devices(scfg, torch.device(device))
    optimizer_class(scfg)  # an unknown optimizer fails here, before any scoring
    family = family_for(open_trail(paths.manifest, model, cfg), cfg)
    check_compiler(scfg, devices)
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
    scorer = scorers[0]
    check_gate(scorer.features)
    if len(scorers) > 1:
        scorer.share_trail(scorers[1:])
    settings = fitness_settings(scfg, scorer)
    # what a fitness depends on; the device type too, so that resuming on other hardware rescores
    common = {
        **settings,
        "trail_sha256": scorer.trail.fingerprint,
        "device": sorted({d.type for d in devices}),
        **({"compile": True} if scfg["compile"] else {}),
    }
    screen_digest = json_digest(common)
    rescore_digest = json_digest({**common, "samples": scfg["rescore_samples"], "seed": scfg["rescore_seed"]})
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
