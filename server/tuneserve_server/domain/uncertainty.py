"""What a classification Predict can ask about the reliability of its answers (issue #14):
a conformal prediction set at a confidence level, an abstain signal and an out-of-domain
flag. All off by default, so a caller who asks for none of them pays nothing."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ConformalScore(str, enum.Enum):
    LAC = "lac"  # 1 - p(label): the smallest sets on average
    APS = "aps"  # probability mass down to the label: sets that grow with uncertainty


class ConformalMode(str, enum.Enum):
    AUTO = "auto"  # Mondrian when every label has enough calibration rows, else marginal
    MARGINAL = "marginal"
    MONDRIAN = "mondrian"


@dataclass(frozen=True)
class UncertaintyRequest:
    """A Predict's uncertainty options. `confidence_level` None: no prediction set."""

    confidence_level: float | None = None
    score: ConformalScore = ConformalScore.LAC
    mode: ConformalMode = ConformalMode.AUTO
    abstention: bool = False  # abstain + out-of-domain outputs

    @property
    def wanted(self) -> bool:
        return self.confidence_level is not None or self.abstention


NONE = UncertaintyRequest()
