"""Papers' claims as data: the variants that test one, and what its numbers must show.

A method file registers its paper's claim next to the method (``register_claim``), so the claims
board (``benchmarks/board.py``) runs every registered method and its ablations without being
edited. A claim names its *baseline* and *variants* (a method and its config, each trained the
same way from the same starting point) and *checks*: statements about paired differences on
benchmark buckets (the schema benchmark's ``schema-1shot`` ... ``schema-gate`` and the three
synthetic families ``explicit`` / ``multi`` / ``implicit``), each judged from a bootstrap interval
(``eval/claims.py``):

- ``Gain``: the variant beats the baseline by at least ``at_least`` points;
- ``Parity``: the variant stays within ``within`` points of the baseline;
- ``Shrinks``: the variant's gain on ``buckets`` is larger than on ``then``;
- ``LosesGain``: an ablation keeps less than ``keep`` of the full variant's gain;
- ``RecoversGap``: on the ``low`` buckets the variant recovers at least ``fraction`` of what the
  baseline gains from ``low`` to ``high`` (a threshold relative to the measured shot curve, not a
  fixed number of points the set-up may not have).

*Preconditions* say when the checks can show the claim at all; a failed one makes the verdict
"untestable here" with its number, never "not reproduced":

- ``HasRange``: the baseline's metric must move by at least the claimed effect between two sets of
  buckets (the few-shot buckets and the many-shot one): a gain larger than everything more
  examples buy the baseline cannot be told from the set-up's ceiling;
- ``Headroom``: the baseline must leave the claimed effect's points below 100 on the check's buckets;
- ``Engaged``: removing the mechanism at test time (``ablation``, the same trained model) changes at
  least ``at_least`` of the variant's test top-1s: an inert mechanism cannot show a claim either way;
- ``Decodes``: a probe on the mechanism's feature recovers what the claim says it carries;
- ``SubTask``: a sub-task the claim relies on is done well enough (a recorded per-run number).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any

from composir.errors import ConfigError


@dataclass(frozen=True)
class Variant:
    """A method with its config (``method.config``) and train-section overrides; and, at test time,
    the gallery's captions as given or changed (``gallery_captions``, ``experiments.captions``:
    ``as_given`` | ``empty`` | ``shuffled`` | ``noise-P``), which leaves the trained model the same."""

    method: str
    config: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    gallery_captions: str = "as_given"
    # Where target captions come from, in training and at test: ``default``, the experiment's own
    # source (a learned captioner's where it trains one), or ``oracle``, the generator's ground truth.
    captions: str = "default"
    # Where training starts: ``default``, the experiment's own start (the board's backbone, the
    # compare's random init), or ``captioner``, the experiment's learned captioner of the same seed
    # (CIR-CoT's caption stage: what the paper's pretrained multimodal LLM stands for here).
    start: str = "default"

    def __post_init__(self) -> None:
        parse_gallery_captions(self.gallery_captions)
        if self.captions not in ("default", "oracle"):
            raise ConfigError(f"captions must be default or oracle, got {self.captions!r}")
        if self.start not in ("default", "captioner"):
            raise ConfigError(f"start must be default or captioner, got {self.start!r}")

    @property
    def key(self) -> str:
        """Identity of the run: variants with the same method and settings share their runs. The
        method's whole config (defaults filled in) counts: a changed default is a new run, never a
        stale cached result."""
        from composir.methods.registry import available_methods, resolved_config

        known = self.method in available_methods()  # an unknown one fails when its run is built
        return self._digest("", resolved_config(self.method, self.config) if known else self.config)

    @property
    def training_key(self) -> str:
        """Identity of the trained model: variants that differ only in inference settings
        (``MethodConfig.training_settings``) share it."""
        from composir.methods.registry import available_methods, training_settings

        if self.method not in available_methods():
            return self.key
        return self._digest("train-", training_settings(self.method, self.config))

    def _digest(self, kind: str, settings: dict[str, Any]) -> str:
        parts: list[Any] = [self.method, settings, self.train]
        if self.captions != "default":  # another model: trained on other captions
            parts.append({"captions": self.captions})
        if self.start != "default":  # another model: trained from another start
            parts.append({"start": self.start})
        if kind == "" and self.gallery_captions != "as_given":  # scored apart; trained as the same model
            parts.append(self.gallery_captions)
        text = json.dumps(parts, sort_keys=True, default=str)
        return f"{self.method}-{kind}{hashlib.sha1(text.encode()).hexdigest()[:10]}"


GALLERY_CAPTIONS = ("as_given", "empty", "shuffled", "noise-P")


def parse_gallery_captions(mode: str) -> tuple[str, float]:
    """(kind, rate) of a ``gallery_captions`` mode: ``noise-0.2`` -> ("noise", 0.2), others rate 0."""
    kind, _, rate = mode.partition("-")
    if kind in ("as_given", "empty", "shuffled") and not rate:
        return kind, 0.0
    try:
        value = float(rate) if kind == "noise" else float("nan")
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:
        raise ConfigError(f"gallery_captions must be one of {list(GALLERY_CAPTIONS)} (0 < P <= 1), got {mode!r}")
    return kind, value


@dataclass(frozen=True)
class Gain:
    variant: str
    buckets: tuple[str, ...]
    metric: str
    at_least: float


@dataclass(frozen=True)
class Parity:
    variant: str
    buckets: tuple[str, ...]
    metric: str
    within: float


@dataclass(frozen=True)
class Shrinks:
    variant: str
    buckets: tuple[str, ...]
    then: tuple[str, ...]
    metric: str


@dataclass(frozen=True)
class LosesGain:
    ablation: str
    variant: str
    buckets: tuple[str, ...]
    metric: str
    keep: float = 0.5  # the ablation keeps less than this fraction of the variant's gain


@dataclass(frozen=True)
class RecoversGap:
    variant: str
    low: tuple[str, ...]
    high: tuple[str, ...]
    metric: str
    fraction: float = 0.25


Check = Gain | Parity | Shrinks | LosesGain | RecoversGap


@dataclass(frozen=True)
class HasRange:
    metric: str
    low: tuple[str, ...]  # buckets where the baseline should be weakest (fewest examples)
    high: tuple[str, ...]  # buckets where it should be strongest
    at_least: float  # points: the claimed effect


@dataclass(frozen=True)
class Headroom:
    metric: str
    buckets: tuple[str, ...]
    at_least: float  # points the baseline must leave below 100


@dataclass(frozen=True)
class Retrieves:
    """The baseline retrieves at all on the checked buckets: ``metric`` at least ``at_least`` points
    (a baseline at the floor has no range for a gain or a loss to show in)."""

    metric: str
    buckets: tuple[str, ...]
    at_least: float


@dataclass(frozen=True)
class Engaged:
    variant: str
    ablation: str  # the variant with its mechanism removed at test time only
    at_least: float = 0.05  # fraction of test queries whose top-1 changes


@dataclass(frozen=True)
class Decodes:
    """The variant's mechanism carries what the claim relies on: a nearest-class-mean probe on the
    ``feature`` its method exposes (``RetrievalMethod.probe_features``) recovers the test queries'
    ``label`` (a query ``extra`` field; ``a.b`` reads a field inside it) at least ``above_chance``
    points above chance."""

    variant: str
    feature: str
    label: str
    above_chance: float = 5.0


@dataclass(frozen=True)
class SubTask:
    """The variant (or ``baseline``) does the sub-task the claim relies on: its ``metric`` (a number
    the board records per run, e.g. how many of the target's attribute words a CIR-CoT conclusion
    names) is at least ``at_least``."""

    variant: str
    metric: str
    at_least: float


Precondition = HasRange | Headroom | Retrieves | Engaged | Decodes | SubTask


@dataclass(frozen=True)
class Claim:
    """One paper's claim: ``variants`` (the method and its ablations) against ``baseline``."""

    paper: str
    statement: str
    baseline: Variant
    variants: dict[str, Variant]
    checks: tuple[Check, ...]
    # Names of the ``variants`` whose diagnostics (``method.diagnostics``) the board shows.
    diagnose: tuple[str, ...] = ()
    note: str = ""
    preconditions: tuple[Precondition, ...] = ()
    # The board fine-tunes this claim's variants this many times its steps (a method whose new
    # layers start from scratch may need more than the board's budget to retrieve at all).
    steps_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.steps_factor <= 0:
            raise ConfigError(f"claim {self.paper!r}: steps_factor must be positive, got {self.steps_factor}")
        for check in (*self.checks, *self.preconditions):
            names = [getattr(check, a) for a in ("variant", "ablation") if hasattr(check, a)]
            for name in names:
                if name not in self.variants and not (isinstance(check, SubTask) and name == "baseline"):
                    raise ConfigError(f"claim {self.paper!r}: check names unknown variant {name!r}")

    def with_config(self, paper: str, overrides: dict[str, Any], note: str = "") -> Claim:
        """The same claim with ``overrides`` merged into every variant of the claim's method."""
        method = next(iter(self.variants.values())).method
        variants = {
            name: replace(v, config={**v.config, **overrides}) if v.method == method else v
            for name, v in self.variants.items()
        }
        return replace(self, paper=paper, variants=variants, note=note or self.note)


_CLAIMS: dict[str, Claim] = {}


def register_claim(claim: Claim) -> Claim:
    _CLAIMS[claim.paper] = claim
    return claim


def registered_claims() -> dict[str, Claim]:
    """Every method file's claims, by paper (importing the methods registers them)."""
    from composir.methods.registry import available_methods

    available_methods()
    return dict(_CLAIMS)
