"""What ``skipganomaly tune`` searches: the settings one training cannot choose by itself.

A training chooses its epoch (and, for the improved score, its score terms) on validation; it
cannot choose the loss weights of Eq. 4 (w_adv, w_con, w_lat), the learning rate or lambda of
Eq. 5, because each value is another training. The default space is those of the model's
(``ModelSpec.loss_weights``; w_rot only where the rotation task is on), around the paper's values
(Sec. IV-B: w_adv 1, w_con 40, w_lat 1, lr 2e-3, lambda 0.9) on a log scale, and lambda in [0, 1]
where the score is Eq. 5's (no ``model.score_terms``, lambda > 0). A setting the user fixed
(``--set``, ``--config``, a flag) is left out; ``--search KEY=LOW:HIGH[:log]`` replaces the space.

No Optuna here: a dimension asks the trial it is given (``trial.suggest_float``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..specs.config import Config, build_config, flatten_keys
from ..specs.errors import UserError
from ..specs.models import MODEL_SPECS

# (low, high, log) per searched setting.
DEFAULT_RANGES: dict[str, tuple[float, float, bool]] = {
    "train.lr": (1e-4, 5e-3, True),
    "train.w_adv": (0.1, 10.0, True),
    "train.w_con": (1.0, 100.0, True),
    "train.w_lat": (0.1, 10.0, True),
    "train.w_rot": (0.1, 10.0, True),
    "eval.score_lambda": (0.0, 1.0, False),
}


@dataclass(frozen=True)
class Dimension:
    """One searched setting: a float between ``low`` and ``high``, on a log scale or not."""

    key: str
    low: float
    high: float
    log: bool = False

    def suggest(self, trial) -> float:
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    @property
    def text(self) -> str:
        return f"{self.key} in [{self.low:g}, {self.high:g}]{' (log)' if self.log else ''}"


def parse_search(text: str) -> Dimension:
    """``KEY=LOW:HIGH`` or ``KEY=LOW:HIGH:log`` as a :class:`Dimension`, checked against the
    configuration (both ends must be valid values of the setting)."""
    key, _, raw = text.partition("=")
    parts = raw.split(":")
    if not _ or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise UserError(
            f"--search {text!r}: expected KEY=LOW:HIGH or KEY=LOW:HIGH:log, e.g. train.w_con=1:100:log"
        )
    key = key.strip()
    if key not in flatten_keys(build_config({}).to_dict()):
        raise UserError(f"--search {text!r}: {key} is not a setting; see skipganomaly configs show")
    try:
        low, high = float(parts[0]), float(parts[1])
    except ValueError:
        raise UserError(f"--search {text!r}: LOW and HIGH must be numbers") from None
    log = len(parts) == 3
    if not low < high or (log and low <= 0):
        raise UserError(f"--search {text!r}: use LOW < HIGH (and LOW > 0 on a log scale)")
    for end in (low, high):
        try:
            build_config({key: end})
        except UserError as exc:
            raise UserError(f"--search {text!r}: {exc}") from None
    return Dimension(key, low, high, log)


def default_space(base: Config, fixed: dict[str, Any]) -> list[Dimension]:
    """The default dimensions for ``base`` (the user's settings built), minus what ``fixed`` sets."""
    spec = MODEL_SPECS.get(base.model.name)
    weights = spec.loss_weights if spec is not None else ("w_adv", "w_con", "w_lat")
    keys = ["train.lr"]
    keys += [f"train.{w}" for w in weights if w != "w_rot" or base.train.w_rot > 0]
    if not getattr(base.model, "score_terms", "") and base.eval.score_lambda > 0:
        keys.append("eval.score_lambda")
    return [Dimension(k, *DEFAULT_RANGES[k]) for k in keys if k not in fixed]


def search_space(base: Config, fixed: dict[str, Any], searches: list[str]) -> list[Dimension]:
    """``--search`` dimensions when given (each once, none also fixed), else the default space."""
    if not searches:
        space = default_space(base, fixed)
        if not space:
            raise UserError(
                "tune has nothing to search: every default setting is fixed; add --search KEY=LOW:HIGH"
            )
        return space
    space = [parse_search(text) for text in searches]
    keys = [d.key for d in space]
    for d in space:
        if keys.count(d.key) > 1:
            raise UserError(f"--search {d.key} is given twice; give each setting one range")
        if d.key in fixed:
            raise UserError(f"--search {d.key} is also set by --config, --set or a flag; drop one of them")
    return space
