"""The Evaluator: batches of candidates scored on one or more devices, each device in a thread of its own."""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import torch

from .latents import Latents
from .objective import Objective
from .scorer import Scorer


class Evaluator:
    """Scores batches of coefficient vectors with one Scorer per device (each its own model,
    stacked trail and copy of the noise). With several devices, each scores its share of a batch
    in its own thread; results come back in the main thread as they finish."""

    def __init__(self, scorers: list[Scorer]):
        self.scorers = scorers
        self._noise: dict[tuple, torch.Tensor] = {}

    def noise(self, scorer: Scorer, samples: int, seed: int) -> Latents:
        # Drawn once per device: every candidate is then scored on the very same noise (common random
        # numbers), so fitness differences come from the weights alone.
        key = (str(scorer.device), samples, seed)
        if key not in self._noise:
            self._noise[key] = scorer.make_noise(samples, seed)
        return self._noise[key]

    def noises(self, scorer: Scorer, objective: Objective, samples: int, seed: int) -> dict[int, Latents]:
        """The fixed noise of each of the objective's NFEs on `scorer`'s device."""
        return {n: self.noise(scorer, samples, objective.noise_seed(seed, n)) for n in objective.nfes}

    def _score(
        self, scorer: Scorer, c: np.ndarray, objective: Objective, samples: int, seed: int
    ) -> tuple[float, dict, float]:
        t0 = time.perf_counter()
        fitness, fids = scorer.measure(c, objective, self.noises(scorer, objective, samples, seed))
        if scorer.device.type == "cuda":
            # CUDA work is asynchronous: synchronised so the time counts all of this candidate's GPU work.
            torch.cuda.synchronize(scorer.device)
        return fitness, fids, time.perf_counter() - t0

    def evaluate(
        self, cs: list[np.ndarray], places: list[int], objective: Objective, samples: int, seed: int, on_result
    ) -> None:
        """Calls on_result(i, fitness, fids, seconds) for every cs[i] as soon as it is scored. With several
        devices, cs[i] goes to device places[i] % devices, its place in the optimizer's ask-batch: the
        batch's candidates spread evenly (8 on 8 GPUs: one each), and a candidate is scored on the
        same device whether it comes in a fresh batch or in what is left of one after a resume."""
        if len(self.scorers) == 1:
            for i, c in enumerate(cs):
                on_result(i, *self._score(self.scorers[0], c, objective, samples, seed))
            return
        done: queue.Queue = queue.Queue()
        stop = threading.Event()
        shares = [[] for _ in self.scorers]
        for i, place in enumerate(places):
            shares[place % len(self.scorers)].append(i)

        def work(scorer: Scorer, share: list[int]) -> None:
            try:
                for i in share:
                    # Checked between candidates: after an error or an interrupt the other
                    # threads stop at their next one.
                    if stop.is_set():
                        return
                    done.put((i, *self._score(scorer, cs[i], objective, samples, seed)))
            except BaseException as exc:  # surfaced in the main thread
                done.put((None, exc, None, None))

        threads = [
            threading.Thread(target=work, args=(s, share), daemon=True)
            for s, share in zip(self.scorers, shares)
            if share
        ]
        for t in threads:
            t.start()
        finished = False
        try:
            for _ in range(len(cs)):
                i, fitness, fids, seconds = done.get()
                if i is None:
                    raise fitness
                on_result(i, fitness, fids, seconds)
            finished = True
        finally:
            stop.set()
            # An interrupt or error need not wait for the candidates in flight: the threads are daemons
            # and their results are not kept, so each join waits 2 seconds at most.
            for t in threads:
                t.join(None if finished else 2.0)
