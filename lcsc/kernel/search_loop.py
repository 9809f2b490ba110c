"""The search's loop, below the stage (lcsc.stages.search): its history, the fitness of each
candidate (measured once, kept in the journal, read back on resume) and its three phases (start,
screen, rescore). The stage reads its inputs, builds the scorers and writes the result."""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import atomic_path, json_digest
from .journal import Journal
from .optimizer import make_optimizer, to_coefficients
from .progress import progress
from .scoring import Evaluator, Objective, fitness_key


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
    # The FID at each search NFE (empty: not sampled, or read from an older file).
    fids: dict[int, float]


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
        # Rescores use other samples and another seed: they are not compared with the screening fitness.
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
        # dict.fromkeys keeps the first of each key in order: a candidate asked twice in one batch
        # is scored once.
        todo = list(dict.fromkeys(k for k in keys if k not in self.cache))
        # Each one's place in the ask-batch, which picks its device.
        places = [keys.index(k) for k in todo]
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
    # Everything that decides the optimizer's sequence of candidates: asks recorded under another
    # key are not replayed.
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
    # The budget counts this phase's evaluations only; the start rows are already in the history.
    # On resume the optimizer runs again from its seed: its asks are checked against the recorded
    # ones and their fitness comes from the journal, so only candidates past its end are scored.
    end = len(history.rows) + scfg["budget"]
    while len(history.rows) < end:
        # The whole batch is asked before any tell, so its candidates are scored together (one
        # per device, with several).
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
    # The same coefficients are re-scored once.
    for row in sorted(history.rows, key=lambda r: r.fitness):
        distinct.setdefault(row.key, row)
    top = list(distinct.values())[: scfg["rescore_top"]]
    recs = fitness.measure([row.coefficients for row in top], digest, scfg["rescore_samples"], scfg["rescore_seed"])
    results = []
    for row, rec in zip(top, recs):
        history.add("rescore", row.coefficients, rec, name=f"of evaluation {row.index}")
        results.append((rec["fitness"], row))
    rescored, chosen = min(results, key=lambda x: x[0])
    return chosen, rescored


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
