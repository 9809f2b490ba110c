"""LCSC's coefficient search: a nevergrad optimizer over one coefficient per checkpoint, with
fitness = FID of `samples` images at the target NFE, on noise that is the same for every
candidate (common random numbers).

Resumable without pickles. Every evaluation and every candidate the optimizer asks for goes to
an append-only journal (`state/journal.jsonl`, one JSON record per line, flushed and fsynced as
it is written; a line torn by a kill is dropped when the journal is reopened). A rerun rebuilds
the optimizer from its seed and replays the journal: the optimizer asks the same candidates
again (each is checked against the journal), and every fitness already measured is read back
instead of computed. So a search killed at any moment and rerun ends with the same history and
the same best coefficients as one that was never interrupted, and loses at most the evaluations
in flight when it was killed.

Evaluations are keyed by a hash of the coefficients and everything the fitness depends on
(trail, NFE, samples, seed, feature net, reference stats, sampler, batch size): no candidate is
evaluated twice, within a run or across reruns, and changing the optimizer's settings still
reuses every fitness measured under the same fitness settings.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import os
import queue
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from . import profiles
from .baselines import fitness_settings
from .config import ConfigError
from .errors import BusyError, InputError
from .evaluate import Scorer
from .io import atomic_path, read_json, remove_stale_temps, save_tensors, write_json
from .progress import progress
from .trail import Trail

JOURNAL_FORMAT = "lcsc-search-journal/1"


def make_parametrization(init: np.ndarray, scfg: dict):
    import nevergrad as ng

    lo, hi = scfg["bounds"]
    if not (lo <= init.min() and init.max() <= hi):
        raise ConfigError(f"search.bounds {scfg['bounds']} exclude the starting point {np.round(init, 3).tolist()}")
    param = ng.p.Array(init=init).set_bounds(lo, hi, full_range_sampling=False)
    param.set_mutation(sigma=scfg["sigma"])
    param.random_state = np.random.RandomState(scfg["seed"])
    return param


def to_coefficients(z: np.ndarray, parametrization: str, bounds) -> np.ndarray:
    """Map the optimizer's vector to coefficients within `bounds`: `free` keeps z (clipped); `sum_to_one`
    takes the nearest point with sum(c) = 1 inside the bounds, c = clip(z + t, lo, hi) for the one
    shift t that makes the sum 1 (the Euclidean projection onto that set; a plain shift when no
    coefficient reaches a bound)."""
    z = np.asarray(z, dtype=np.float64)
    lo, hi = bounds
    if parametrization != "sum_to_one":
        return np.clip(z, lo, hi)
    shifted = z + (1.0 - z.sum()) / len(z)
    if lo <= shifted.min() and shifted.max() <= hi:
        return shifted
    return np.clip(z + _shift_onto_sum(z, lo, hi, 1.0), lo, hi)


def _shift_onto_sum(z: np.ndarray, lo: float, hi: float, total: float) -> float:
    """The t with sum(clip(z + t, lo, hi)) = total. That sum grows piecewise linearly in t, with
    kinks where a coefficient meets a bound, so t lies between two neighbouring kinks, where a
    linear interpolation is exact."""
    if not len(z) * lo <= total <= len(z) * hi:
        raise ConfigError(f"search.bounds {[lo, hi]}: {len(z)} coefficients within them cannot sum to {total}")
    kinks = np.unique(np.concatenate([lo - z, hi - z]))
    excess = np.array([np.clip(z + t, lo, hi).sum() - total for t in kinks])
    j = int(np.searchsorted(excess, 0.0))  # first kink whose excess is >= 0 (excess is non-decreasing)
    if excess[j] == 0.0 or j == 0:
        return float(kinks[j])
    a, b = kinks[j - 1], kinks[j]
    return float(a + (b - a) * (0.0 - excess[j - 1]) / (excess[j] - excess[j - 1]))


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def fitness_key(coefficients, settings_digest: str) -> str:
    """The cache key of one evaluation: the coefficients' float64 bytes under fitness settings."""
    h = hashlib.sha256(settings_digest.encode())
    h.update(np.ascontiguousarray(coefficients, dtype="<f8").tobytes())
    return h.hexdigest()[:32]


class Journal:
    """Append-only JSON-lines record of a search. Each record is written with one write, then
    flushed and fsynced. Opened for writing (the search does), a last line torn by a kill (no
    newline, or not JSON) is dropped and cut from the file; a bad line anywhere else is an error,
    never a silent loss. An exclusive lock keeps a second search off the same journal; opened
    read-only (`readonly=True`) it neither locks nor changes the file."""

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
        self.records: list[dict] = []
        self.dropped = 0
        self._fh = None
        if not readonly:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "ab")
            except OSError as exc:
                raise OSError(exc.errno, f"cannot write the search journal here: {exc.strerror}",
                              str(exc.filename or self.path)) from exc
            try:
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._fh.close()
                raise BusyError(f"{self.path}: another search is running on this journal "
                                "(it holds the lock); wait for it or stop it first") from None
        try:
            self._read(readonly)
        except BaseException:
            self.close()
            raise
        if self.records and self.records[0].get("format") != JOURNAL_FORMAT:
            self.close()
            raise InputError(f"{self.path}: not an lcsc search journal (first record {self.records[0]!r:.80}); "
                             "move it away to start the search afresh")

    def _read(self, readonly: bool) -> None:
        data = self.path.read_bytes() if self.path.exists() else b""
        lines = data.splitlines(keepends=True)
        good = 0
        for number, line in enumerate(lines, start=1):
            try:
                if not line.endswith(b"\n"):
                    raise ValueError("no newline")
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a record")
                self.records.append(record)
            except ValueError:  # also UnicodeDecodeError
                if number < len(lines):
                    raise InputError(f"{self.path}: line {number} of {len(lines)} is not a complete JSON record; "
                                     "the journal was changed by hand or by another program: move it away "
                                     "to start the search afresh") from None
                break
            good += len(line)
        self.dropped = len(data) - good
        if self.dropped and not readonly:
            self._fh.truncate(good)

    def append(self, record: dict) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        try:
            self._fh.write(line)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise OSError(exc.errno, f"cannot write the search journal: {exc.strerror}", str(self.path)) from exc
        self.records.append(record)

    def start(self) -> None:
        """Write the header record of a new journal."""
        if not self.records:
            self.append({"type": "header", "format": JOURNAL_FORMAT})

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()  # also releases the lock
            self._fh = None


def search_devices(scfg: dict, device: torch.device) -> list[torch.device]:
    """`search.devices`: `auto` is the stage's one device (the one its resources reserve); a list
    spreads every batch over those devices (reserve them all, e.g. `--resources gpu=2`)."""
    if scfg["devices"] == "auto":
        return [device]
    out = []
    for name in scfg["devices"]:
        try:
            d = torch.device(name)
        except RuntimeError as exc:
            raise ConfigError(f"search.devices: {name!r} is not a torch device name ({exc})") from None
        if d.type == "cuda" and (not torch.cuda.is_available() or (d.index or 0) >= torch.cuda.device_count()):
            raise ConfigError(f"search.devices: {name!r} is not available here "
                             f"({torch.cuda.device_count()} CUDA devices visible)")
        out.append(d)
    return out


class Evaluator:
    """Scores batches of coefficient vectors with one Scorer per device (each its own model,
    stacked trail and copy of the noise). With several devices, each scores its share of a batch
    in its own thread; results come back in the main thread as they finish."""

    def __init__(self, scorers: list[Scorer]):
        self.scorers = scorers
        self._noise: dict[tuple, torch.Tensor] = {}

    def noise(self, scorer: Scorer, samples: int, seed: int) -> torch.Tensor:
        key = (str(scorer.device), samples, seed)
        if key not in self._noise:
            self._noise[key] = scorer.make_noise(samples, seed)
        return self._noise[key]

    def _score(self, scorer: Scorer, c: np.ndarray, nfe: int, samples: int, seed: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        fitness, _ = scorer.score(c, nfe, self.noise(scorer, samples, seed))
        if scorer.device.type == "cuda":
            torch.cuda.synchronize(scorer.device)
        return fitness, time.perf_counter() - t0

    def evaluate(self, cs: list[np.ndarray], keys: list[str], nfe: int, samples: int, seed: int,
                 on_result) -> None:
        """Calls on_result(i, fitness, seconds) for every cs[i] as soon as it is scored. With several
        devices, a candidate goes to the device its key picks, so it is scored on the same device
        whether it comes in a fresh batch or in what is left of one after a resume."""
        if len(self.scorers) == 1:
            for i, c in enumerate(cs):
                on_result(i, *self._score(self.scorers[0], c, nfe, samples, seed))
            return
        done: queue.Queue = queue.Queue()
        stop = threading.Event()
        shares = [[] for _ in self.scorers]
        for i, key in enumerate(keys):
            shares[int(key, 16) % len(self.scorers)].append(i)

        def work(scorer: Scorer, share: list[int]) -> None:
            try:
                for i in share:
                    if stop.is_set():
                        return
                    done.put((i, *self._score(scorer, cs[i], nfe, samples, seed)))
            except BaseException as exc:  # surfaced in the main thread
                done.put((None, exc, None))

        threads = [threading.Thread(target=work, args=(s, share), daemon=True)
                   for s, share in zip(self.scorers, shares) if share]
        for t in threads:
            t.start()
        finished = False
        try:
            for _ in range(len(cs)):
                i, fitness, seconds = done.get()
                if i is None:
                    raise fitness
                on_result(i, fitness, seconds)
            finished = True
        finally:
            stop.set()
            for t in threads:  # an interrupt or error need not wait for the candidates in flight
                t.join(None if finished else 2.0)  # (daemon threads; their results are not kept)


def _write_history(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def run_search(cfg: dict, manifest: str | Path, features: str | Path, stats: str | Path,
               out_dir: str | Path, device: torch.device, run=None,
               baselines: str | Path | None = None) -> dict:
    """Three phases, all in history.csv: `start` lists the baseline profiles with their fitness
    (read from the baselines stage's file, or scored here when there is none) and the optimizer
    starts at the best (or at `search.init`); `search` asks and tells the optimizer for `budget`
    evaluations, `num_workers` at a time; `rescore` scores the top candidates again on more
    samples with another seed and keeps the best of those, which removes most of the luck of the
    screening noise. The result is never worse, on the search's own fitness, than any start."""
    import nevergrad as ng

    scfg = cfg["search"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir)
    trail = Trail.open(manifest)
    devices = search_devices(scfg, torch.device(device))
    scorers = [Scorer(cfg, trail, features, stats, d, scfg["batch_size"], scfg["trail_chunk_mb"]) for d in devices]
    scorer = scorers[0]
    evaluator = Evaluator(scorers)
    try:
        opt_cls = ng.optimizers.registry[scfg["optimizer"]]
    except KeyError:
        raise ConfigError(f"search.optimizer: {scfg['optimizer']!r} is not a nevergrad optimizer; "
                         f"try CMA, NGOpt, TwoPointsDE, DE or OnePlusOne") from None
    settings = fitness_settings(cfg, scorer)
    # what a fitness depends on; the device type too, so that resuming on other hardware rescores
    fitness_common = {**settings, "trail_sha256": trail.fingerprint,
                      "device": sorted({d.type for d in devices})}
    screen_digest = _digest(fitness_common)
    rescore_digest = _digest({**fitness_common, "samples": scfg["rescore_samples"], "seed": scfg["rescore_seed"]})

    known: dict[str, float] = {}
    if baselines is not None:
        scored = read_json(baselines, "rerun the baselines stage (or pass the right --baselines)",
                           keys=("profiles", "trail_sha256"))
        trail.check_fingerprint(scored.get("trail_sha256"), baselines)
        if {k: scored.get(k) for k in settings} != settings:
            diff = sorted(k for k in settings if scored.get(k) != settings[k])
            raise InputError(f"{baselines}: scored with other fitness settings than this search ({', '.join(diff)}); "
                             "rerun the baselines stage")
        starts = {n: np.asarray(p["coefficients"], dtype=np.float64) for n, p in scored["profiles"].items()}
        known = {n: p["fitness"] for n, p in scored["profiles"].items()}
    else:
        starts = profiles.trail_profiles(trail.steps, cfg["baselines"])
    if scfg["init"] != "best_profile" and scfg["init"] not in starts:
        raise ConfigError(f"search.init: {scfg['init']!r} is not among the baseline profiles {sorted(starts)}")

    journal = Journal(out_dir / "state" / "journal.jsonl")
    journal.start()
    try:
        cache: dict[str, dict] = {r["key"]: r for r in journal.records if r.get("type") == "eval"}
        resumed_evals = len(cache)
        print(f"[search] {len(trail)} checkpoints, {scorer.loader.numel} parameters, {scfg['optimizer']} "
              f"budget {scfg['budget']}, {scfg['samples']} samples at NFE {scfg['nfe']}, "
              f"{scfg['num_workers']} candidates per batch on {', '.join(map(str, devices))}", flush=True)
        print(f"[search] trail: {scorer.trail_placement()}", flush=True)
        if resumed_evals:
            print(f"[search] resuming from {journal.path}: {resumed_evals} evaluations measured earlier are "
                  "read back, and the optimizer replays its candidates", flush=True)
        if journal.dropped:
            print(f"[search] {journal.path}: dropped a last record torn by an interruption ({journal.dropped} bytes)",
                  flush=True)

        rows: list[dict] = []
        best = float("inf")  # best screening fitness so far
        bar = progress(total=len(starts) + scfg["budget"] + scfg["rescore_top"], desc="search")
        stats_count = {"evaluated": 0, "cached": 0}

        row_key: dict[int, str] = {}  # evaluation -> fitness key

        def record(phase: str, c: np.ndarray, rec: dict, name: str = "") -> None:
            nonlocal best
            fitness, seconds = rec["fitness"], rec["seconds"]
            row_key[len(rows)] = rec["key"]
            if phase != "rescore":
                best = min(best, fitness)
            rows.append({"evaluation": len(rows), "phase": phase, "name": name, "fitness": fitness,
                         "best_so_far": best, "seconds": round(seconds, 4),
                         **{f"c{i:03d}": v for i, v in enumerate(c)}})
            bar.update(1)
            bar.set_postfix(best=f"{best:.2f}", last=f"{fitness:.2f}")
            if run is not None:
                key = "rescore_fitness" if phase == "rescore" else "fitness"
                run.log_metrics({key: fitness, "best_fitness": best, "seconds": seconds}, step=len(rows) - 1)

        def measure(cs: list[np.ndarray], digest: str, samples: int, seed: int) -> list[dict]:
            """Fitness records of `cs`, scoring only those not in the cache (each distinct one once)."""
            keys = [fitness_key(c, digest) for c in cs]
            todo = list(dict.fromkeys(k for k in keys if k not in cache))
            first = {k: cs[keys.index(k)] for k in todo}
            stats_count["cached"] += len(keys) - len(todo)

            def on_result(i: int, fitness: float, seconds: float) -> None:
                rec = {"type": "eval", "key": todo[i], "fitness": float(fitness), "seconds": round(seconds, 4)}
                journal.append(rec)
                cache[todo[i]] = rec
                stats_count["evaluated"] += 1

            evaluator.evaluate([first[k] for k in todo], todo, scfg["nfe"], samples, seed, on_result)
            return [cache[k] for k in keys]

        # start: the baseline profiles (their fitness from the baselines stage when it ran)
        for name, c in starts.items():
            if name in known:
                k = fitness_key(c, screen_digest)
                cache.setdefault(k, {"key": k, "fitness": known[name], "seconds": 0.0})
        start_recs = measure(list(starts.values()), screen_digest, scfg["samples"], scfg["seed"])
        for (name, c), rec in zip(starts.items(), start_recs):
            record("start", c, rec, name=name)
        start_row = (min(rows, key=lambda r: r["fitness"]) if scfg["init"] == "best_profile"
                     else next(r for r in rows if r["name"] == scfg["init"]))
        init = np.array([start_row[f"c{i:03d}"] for i in range(len(trail))])

        # search: ask num_workers candidates, score them as one batch, tell; replayed from the journal
        opt = opt_cls(parametrization=make_parametrization(init, scfg), budget=scfg["budget"],
                      num_workers=scfg["num_workers"])
        run_key = _digest({"fitness": screen_digest, "init": init.tolist(),
                           **{k: scfg[k] for k in ("optimizer", "budget", "num_workers", "seed", "sigma", "bounds",
                                                   "parametrization")}})[:16]
        asked = [r["z"] for r in journal.records if r.get("type") == "ask" and r.get("run") == run_key]
        n_asked, replay_ok = 0, True
        end = len(rows) + scfg["budget"]
        while len(rows) < end:
            batch = [opt.ask() for _ in range(min(scfg["num_workers"], end - len(rows)))]
            for cand in batch:
                z = np.asarray(cand.value, dtype=np.float64)
                if n_asked < len(asked):
                    if replay_ok and not np.array_equal(np.asarray(asked[n_asked]), z):
                        replay_ok = False
                        warnings.warn(f"{journal.path}: the optimizer's candidate {n_asked} differs from the one "
                                      "recorded (another nevergrad version?); the search goes on from here with "
                                      "new candidates, reusing every fitness measured before", stacklevel=2)
                else:
                    journal.append({"type": "ask", "run": run_key, "index": n_asked, "z": z.tolist()})
                n_asked += 1
            cs = [to_coefficients(cand.value, scfg["parametrization"], scfg["bounds"]) for cand in batch]
            for cand, c, rec in zip(batch, cs, measure(cs, screen_digest, scfg["samples"], scfg["seed"])):
                opt.tell(cand, rec["fitness"])
                record("search", c, rec)

        # rescore: the top candidates on more samples and another seed
        chosen = min(rows, key=lambda r: r["fitness"])
        rescored = None
        if scfg["rescore_top"] > 0:
            distinct: dict[str, dict] = {}
            for row in sorted(rows, key=lambda r: r["fitness"]):  # the same coefficients are re-scored once
                distinct.setdefault(row_key[row["evaluation"]], row)
            top = list(distinct.values())[:scfg["rescore_top"]]
            cs = [np.array([row[f"c{i:03d}"] for i in range(len(trail))]) for row in top]
            results = []
            for row, c, rec in zip(top, cs, measure(cs, rescore_digest, scfg["rescore_samples"], scfg["rescore_seed"])):
                record("rescore", c, rec, name=f"of evaluation {row['evaluation']}")
                results.append((rec["fitness"], row))
            rescored, chosen = min(results, key=lambda x: x[0])
        bar.close()
        print(f"[search] {stats_count['evaluated']} evaluations computed in this run, {stats_count['cached']} "
              "fitnesses reused (from the baselines stage, the journal or an identical candidate)", flush=True)
        _write_history(out_dir / "history.csv", rows)

        c = np.array([chosen[f"c{i:03d}"] for i in range(len(trail))])
        scorer.loader.combine_into(scorer.W, c)
        save_tensors(out_dir / "best.safetensors", scorer.model.state_dict())
        result = {"coefficients": c.tolist(), "fitness": chosen["fitness"], "evaluation": chosen["evaluation"],
                  "rescore_fitness": rescored, "trail_steps": trail.steps, "trail_sha256": trail.fingerprint,
                  "nfe": scfg["nfe"],
                  "samples": scfg["samples"], "seed": scfg["seed"], "optimizer": scfg["optimizer"],
                  "budget": scfg["budget"], "parametrization": scfg["parametrization"],
                  "start": {"name": start_row["name"], "fitness": start_row["fitness"]},
                  "starts": {r["name"]: r["fitness"] for r in rows if r["phase"] == "start"},
                  "distinct_evaluations": len(set(row_key.values()))}
        write_json(out_dir / "coefficients.json", result)
        return result
    finally:
        journal.close()  # holds the lock until the outputs are written
