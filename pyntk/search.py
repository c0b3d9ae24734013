"""`pyntk plan --measure`: narrow each method family's parameters by perplexity at the target on the
user's own text, within a time budget; every measurement is cached, so an interrupted run resumes.

prepare() loads the model and the text's tokens and opens their cache, measure_text() searches from
the recommendation and its runner-up, summary() says what was found; run() is the search itself,
given any function that measures a setup.

The search is a pattern search per parameter on a log scale, from the value pyntk's rule gives
(plan.scaling_for): try the value times `step` and divided by it; move to whichever is better,
else take the square root of the step; stop when the step falls below `min_step`. YaRN narrows its
factor first, then its attention temperature (attn_factor, which multiplies 0.1*ln(factor)+1).
Families take turns, so a small budget still measures each one's starting point.

The search is deterministic: a resumed run asks for the same setups in the same order and finds
the ones already measured in the cache, at no cost to the budget.

Cache: one JSON file per (model weights, tokens of the text read, target) in
$XDG_CACHE_HOME/pyntk/measure/ (default ~/.cache/pyntk/measure/), written after every measurement.
The model is identified by its last MiB (tensor data, which gguf-set never changes, so an edited
model keeps its cache) and the text by its tokens; delete the folder to measure afresh.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Generator, Iterable, List, Optional

import numpy as np

from .errors import PyntkError
from .plan import Recommendation, pair_rows
from .scaling import RopeScaling

# method -> its parameters in the order they are narrowed: (name, first step, smallest step, lowest)
AXES = {
    "ntk": (("alpha", 1.5, 1.04, 1.0),),
    "yarn": (("factor", 1.25, 1.04, 1.0), ("attn_factor", 1.1, 1.02, 0.5)),
    "ntk-by-parts": (("factor", 1.25, 1.04, 1.0),),
    "linear": (("factor", 1.25, 1.04, 1.0),),
}
FINGERPRINT_BYTES = 1 << 20

# a search proposes a setup, is sent its perplexity, and proposes the next
Search = Generator[RopeScaling, float, None]


def _round(value: float) -> float:
    """4 significant digits: the setups a search proposes are short to type and exact to cache."""
    return float(f"{value:.4g}")


def narrow(start: RopeScaling) -> Search:
    """Pattern search over the parameters of ``start``'s method (AXES), from ``start``."""
    best = start
    best_ppl = yield best
    for name, step, min_step, lowest in AXES[start.method]:
        while step >= min_step:
            value = getattr(best, name)
            moved = False
            for candidate in (_round(value * step), _round(max(lowest, value / step))):
                if candidate == value:
                    continue
                scaling = best.replace(**{name: candidate})
                ppl = yield scaling
                if ppl < best_ppl:
                    best, best_ppl, moved = scaling, ppl, True
                    break
            if not moved:
                step = math.sqrt(step)


@dataclass(frozen=True)
class Point:
    family: str
    scaling: RopeScaling
    ppl: float
    seconds: float
    cached: bool  # found in the cache, not measured by this run

    def to_dict(self) -> dict:
        return {"family": self.family, "summary": self.scaling.describe(), "scaling": self.scaling.to_dict(),
                "ppl": self.ppl, "seconds": self.seconds, "cached": self.cached}


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "pyntk" / "measure"


def cache_path(model_path: str, tokens: np.ndarray, target: int) -> Path:
    """The cache file of this model's weights, these tokens and this target."""
    h = hashlib.sha256()
    with open(model_path, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - FINGERPRINT_BYTES))
        h.update(f.read())
    h.update(np.ascontiguousarray(tokens, dtype=np.int32).tobytes())
    h.update(f"target={target};score=half".encode())
    return cache_dir() / f"{h.hexdigest()[:24]}.json"


def _key(scaling: RopeScaling) -> str:
    return json.dumps(scaling.to_dict(), sort_keys=True)


class Cache:
    """Measured perplexities by setup, saved to ``path`` (atomically) after each one."""

    def __init__(self, path: Path, header: dict) -> None:
        self.path, self.header = path, header
        self.entries: Dict[str, dict] = {}
        if path.exists():
            try:
                self.entries = {_key(RopeScaling(**e["scaling"])): e
                                for e in json.loads(path.read_text(encoding="utf-8"))["results"]}
            except (ValueError, KeyError, TypeError):  # unreadable: measure again and overwrite it
                self.entries = {}

    def get(self, scaling: RopeScaling) -> Optional[dict]:
        return self.entries.get(_key(scaling))

    def put(self, scaling: RopeScaling, ppl: float, seconds: float) -> None:
        self.entries[_key(scaling)] = {"scaling": scaling.to_dict(), "ppl": ppl, "seconds": seconds}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({**self.header, "results": list(self.entries.values())}, indent=1)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(data)
            os.replace(tmp, self.path)  # an interruption leaves the old file or the new one
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def mean_seconds(self) -> Optional[float]:
        seconds = [e["seconds"] for e in self.entries.values()]
        return sum(seconds) / len(seconds) if seconds else None


@dataclass(frozen=True)
class Outcome:
    points: List[Point]  # in the order measured or found
    complete: bool  # every search ran to its smallest step (else the budget stopped it)
    new: int  # measurements made by this run

    @property
    def winner(self) -> Point:
        return min(self.points, key=lambda p: p.ppl)

    def best_of(self, family: str) -> Point:
        return min((p for p in self.points if p.family == family), key=lambda p: p.ppl)


def run(starts: Iterable[RopeScaling], measure: Callable[[RopeScaling], float], cache: Cache, *,
        budget_seconds: float, report: Callable[[Point], None] = lambda p: None,
        clock: Callable[[], float] = time.monotonic) -> Outcome:
    """Narrow every family from its start, families taking turns, until each search ends or the
    next measurement would not finish within ``budget_seconds`` (judged from the mean time of
    those in the cache; this run's first is always made). Cached setups cost nothing."""
    t0 = clock()
    searches = []
    for start in starts:
        search = narrow(start)
        searches.append([start.method, search, next(search)])
    points: List[Point] = []
    seen: Dict[str, Point] = {}
    new = 0
    while searches:
        for entry in list(searches):
            family, search, scaling = entry
            key = _key(scaling)
            if key in seen:  # asked again by the pattern search: no new point
                point = seen[key]
            else:
                hit = cache.get(scaling)
                if hit is not None:
                    point = Point(family, scaling, hit["ppl"], hit["seconds"], True)
                else:
                    # Not before this run's first measurement: a cache warmed by other runs (or
                    # other targets' setups) may say that none fits, and every run must progress.
                    if new and clock() - t0 + cache.mean_seconds() > budget_seconds:
                        return Outcome(points, False, new)
                    t = clock()
                    ppl = measure(scaling)
                    seconds = clock() - t
                    cache.put(scaling, ppl, seconds)
                    new += 1
                    point = Point(family, scaling, ppl, seconds, False)
                seen[key] = point
                points.append(point)
                report(point)
            try:
                entry[2] = search.send(point.ppl)
            except StopIteration:
                searches.remove(entry)
    return Outcome(points, True, new)


# --- on a model and a text ---------------------------------------------------------------------------

def starts(rec: Recommendation) -> List[RopeScaling]:
    """Where the search starts: the recommendation and the runner-up, those with AXES to narrow."""
    found = [rec.scaling] + ([rec.runner_up.scaling] if rec.runner_up else [])
    found = [s for i, s in enumerate(found) if s.method in AXES and s not in found[:i]]
    if not found:
        raise PyntkError(f"nothing to search for {rec.scaling.describe()}; --measure narrows "
                         f"{', '.join(AXES)}")
    return found


def prepare(model_path: str, text_path: str, target: int, *, threads: Optional[int] = None):
    """(the model, the first ``target`` tokens of the text, their Cache)."""
    from .llama import Model  # imported here: llama-cpp-python loads only to measure
    from .perplexity import read_text

    model = Model(model_path, threads=threads)
    tokens = model.tokenize(read_text(text_path))
    if len(tokens) < target:
        raise PyntkError(f"{text_path} has {len(tokens)} tokens but --measure reads {target} (--ctx); "
                         f"give a longer text or a smaller --ctx")
    tokens = tokens[:target]
    header = {"model": model.path, "text": os.path.abspath(text_path), "target": target}
    return model, tokens, Cache(cache_path(model.path, tokens, target), header)


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, n: int) -> None:
        pass


def measure_text(rec: Recommendation, model, tokens, cache: Cache, *, budget_seconds: float,
                 report: Callable[[Point], None] = lambda p: None,
                 progress: Callable[[RopeScaling], Any] = lambda scaling: _NoBar()) -> Outcome:
    """run() from starts(rec), each setup measured by perplexity on ``tokens`` (one window from
    position 0, its second half scored, as `pyntk ppl`). ``progress(scaling)`` gives a context
    manager with ``update(tokens)``, such as a tqdm bar. Ctrl-C raises KeyboardInterrupt before an
    unfinished measurement can be cached."""
    from .perplexity import Candidate, evaluate

    first = starts(rec)
    # Ctrl-C raises KeyboardInterrupt, except inside llama.cpp's log callback (Python called from
    # C while a context is created), which swallows it: keep it, and raise it again after the
    # window, before the measurement can be cached.
    interrupted = []

    def on_interrupt(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    def measure(scaling: RopeScaling) -> float:
        with progress(scaling) as bar:
            def step(n):
                bar.update(n)
                if interrupted:
                    raise KeyboardInterrupt
            [result] = evaluate(model, tokens, [len(tokens)], [Candidate(scaling.method, scaling)],
                                progress=step)
        return result.ppl

    main = threading.current_thread() is threading.main_thread()  # signals: the main thread only
    previous = signal.signal(signal.SIGINT, on_interrupt) if main else None
    try:
        return run(first, measure, cache, budget_seconds=budget_seconds, report=report)
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


def summary(outcome: Outcome, rec: Recommendation) -> Dict[str, Any]:
    """What a search found: every point, each family's best, the winner, how far the recommendation
    is from it (None when the search did not measure it: a setup AXES does not narrow, such as
    Dynamic NTK) and the winner's pairs out of distribution by the criterion."""
    win = outcome.winner
    rule = next((p for p in outcome.points if p.scaling == rec.scaling), None)
    families = sorted({p.family for p in outcome.points}, key=lambda f: outcome.best_of(f).ppl)
    return {"complete": outcome.complete, "new_measurements": outcome.new,
            "points": [p.to_dict() for p in outcome.points],
            "best_per_family": {f: outcome.best_of(f).to_dict() for f in families},
            "winner": win.to_dict(), "recommendation_vs_winner": rule.ppl / win.ppl - 1 if rule else None,
            "pairs_out_of_distribution": sum(not r["in_distribution"] for r in
                                             pair_rows(win.scaling, rec.training_context, rec.target))}
