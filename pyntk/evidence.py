"""What pyntk has measured: perplexity of each method set up for a target context, at the target
and inside the training context, per model and text (pyntk/evidence.json).

Every number in evidence.json comes from a file of docs/results/ (`source` at the target,
`training_source` at the training context; tools/make_results.py writes the entries,
tests/test_plan.py checks each one), so a new measurement is added as data and `pyntk plan` ranks
the methods again from it. A setup missing from one measurement is left out of the ranking.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

from .scaling import RopeScaling

PATH = Path(__file__).with_name("evidence.json")


@dataclass(frozen=True)
class Setup:
    label: str  # as in docs/results; a method's name when set up by pyntk's rule for the target
    scaling: RopeScaling
    ppl: float  # at the target
    ppl_training: float  # over windows of the training context


@dataclass(frozen=True)
class Measurement:
    """One model and text, every setup aimed at one target context."""

    model: str
    text: str
    dims: int
    base: float
    training_context: int
    target: int
    source: str
    training_source: str
    setups: Tuple[Setup, ...]

    @property
    def factor(self) -> float:
        return self.target / self.training_context

    @property
    def best(self) -> Setup:
        return min(self.setups, key=lambda s: s.ppl)

    def setup(self, label: str) -> Optional[Setup]:
        return next((s for s in self.setups if s.label == label), None)

    def excess(self, setup: Setup) -> float:
        """Relative perplexity at the target against the best setup measured here."""
        return setup.ppl / self.best.ppl - 1

    def cost(self, setup: Setup) -> float:
        """Relative perplexity inside the training context against unscaled RoPE."""
        return setup.ppl_training / self.setup("none").ppl_training - 1

    def same_model(self, dims: int, base: float, training_context: int) -> bool:
        return (self.dims, self.base, self.training_context) == (dims, base, training_context)


def _measurement(m: dict) -> Measurement:
    shape = dict(dims=m["dims"], base=m["base"])
    setups = tuple(Setup(s["label"], RopeScaling(**shape, **s["scaling"]), s["ppl"], s["ppl_training"])
                   for s in m["setups"])
    fields = {k: v for k, v in m.items() if k != "setups"}
    return Measurement(**fields, setups=setups)


@functools.lru_cache(maxsize=1)
def measurements() -> Tuple[Measurement, ...]:
    data = json.loads(PATH.read_text(encoding="utf-8"))
    return tuple(_measurement(m) for m in data["measurements"])


def nearest(target: int, dims: int, base: float, training_context: int) -> Measurement:
    """The measurement closest to this case: the nearest scale factor (on a log scale), the same
    model shape first among equals."""
    factor = target / training_context
    return min(measurements(), key=lambda m: (round(abs(math.log(m.factor / factor)), 9),
                                              not m.same_model(dims, base, training_context)))


def worst(labels) -> Dict[str, Tuple[float, float]]:
    """For each label measured in EVERY measurement: (its largest excess at the target over the
    best setup measured there, its largest cost inside the training context). A label missing
    from one measurement is left out, so that setups are only ever compared on the same cases."""
    ms = measurements()
    return {label: (max(m.excess(m.setup(label)) for m in ms), max(m.cost(m.setup(label)) for m in ms))
            for label in labels if ms and all(m.setup(label) for m in ms)}
