"""Common interface of the privacy accountants (pure core: no NVFlare, no torch).

An accountant holds the **history** of what was released from one dataset: a list of
compositions ``(noise_multiplier, sample_rate, steps)``, each meaning "``steps`` steps of the
Poisson-subsampled Gaussian mechanism with sampling rate ``sample_rate`` and noise multiplier
``noise_multiplier``" (one DP-SGD step = one such mechanism). Composition is commutative, so
entries with the same ``(noise_multiplier, sample_rate)`` are merged wherever they occur; the
order of rounds is kept by the privacy ledger, not here.

The history is mechanism-independent: the same history can be re-accounted by any accountant
(``RDPAccountant(history=prv.history)``), which lets a site change its accountant without
losing what it has spent.

State persists as JSON (``to_dict`` / ``from_dict``) so a site composes epsilon across rounds
and across jobs on the same dataset. Floats survive the JSON round trip exactly.
"""

from __future__ import annotations

import abc
import math
import numbers
from typing import Any, ClassVar, Iterable, Mapping

from ai4hi_sdk.errors import UserError

Composition = tuple[float, float, int]
"""``(noise_multiplier, sample_rate, steps)``."""

STATE_FORMAT = 1


class InvalidPrivacyParameter(UserError, ValueError):
    """A privacy parameter is out of range (e.g. sample rate outside (0, 1], negative noise)."""


class AccountingError(RuntimeError):
    """The numerical accounting failed (e.g. PRV discretisation out of range). Callers fail closed."""


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidPrivacyParameter(f"{name} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value):
        raise InvalidPrivacyParameter(f"{name} must be a number, got NaN")
    return value


def check_noise_multiplier(value: Any) -> float:
    value = _number("noise multiplier (sigma)", value)
    if value < 0 or math.isinf(value):
        raise InvalidPrivacyParameter(f"noise multiplier (sigma) must be finite and >= 0, got {value:g}")
    return value


def check_sample_rate(value: Any) -> float:
    value = _number("sample rate (q)", value)
    if not 0.0 < value <= 1.0:
        raise InvalidPrivacyParameter(f"sample rate (q) must be in (0, 1], got {value:g}")
    return value


def check_steps(value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InvalidPrivacyParameter(f"steps must be a whole number, got {value!r}")
    value = int(value)
    if value < minimum:
        raise InvalidPrivacyParameter(f"steps must be >= {minimum}, got {value}")
    return value


def check_delta(value: Any) -> float:
    value = _number("delta", value)
    if not 0.0 < value < 1.0:
        raise InvalidPrivacyParameter(f"delta must be in (0, 1), got {value:g}")
    return value


def check_composition(noise_multiplier: Any, sample_rate: Any, steps: Any) -> Composition:
    """Validate and normalise one composition; raises :class:`InvalidPrivacyParameter`."""
    return check_noise_multiplier(noise_multiplier), check_sample_rate(sample_rate), check_steps(steps)


def merge_history(history: Iterable[Iterable[Any]]) -> list[Composition]:
    """Validate entries, drop zero-step ones and merge entries with equal ``(sigma, q)``."""
    merged: dict[tuple[float, float], int] = {}
    for entry in history:
        try:
            sigma, q, steps = entry
        except (TypeError, ValueError):
            raise InvalidPrivacyParameter(
                f"history entries must be (noise_multiplier, sample_rate, steps), got {entry!r}"
            ) from None
        sigma, q, steps = check_composition(sigma, q, steps)
        if steps:
            merged[(sigma, q)] = merged.get((sigma, q), 0) + steps
    return [(sigma, q, steps) for (sigma, q), steps in merged.items()]


class PrivacyAccountant(abc.ABC):
    """Tracks (epsilon, delta) spent by Poisson-subsampled Gaussian mechanisms on one dataset.

    Subclasses implement :meth:`_compute_epsilon` for a (validated, merged, non-empty,
    noise > 0) history, and set :attr:`mechanism`.

    Args:
        history: initial compositions ``(noise_multiplier, sample_rate, steps)``.
    """

    mechanism: ClassVar[str] = ""

    def __init__(self, history: Iterable[Iterable[Any]] = ()):
        self.history: list[Composition] = merge_history(history)

    # -- composition -------------------------------------------------------------------------
    def step(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` steps with noise ``noise_multiplier`` and sampling rate ``sample_rate``."""
        self.history = merge_history([*self.history, (noise_multiplier, sample_rate, steps)])

    @property
    def total_steps(self) -> int:
        return sum(steps for _, _, steps in self.history)

    # -- epsilon -----------------------------------------------------------------------------
    def get_epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (an upper bound: 0.0 for an empty history,
        ``inf`` if any step used zero noise)."""
        return self._epsilon_of(self.history, delta)

    def projected_epsilon(self, delta: float, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Epsilon at ``delta`` if ``steps`` more steps with ``(noise_multiplier, sample_rate)`` were
        added. Does not change this accountant."""
        extra = check_composition(noise_multiplier, sample_rate, steps)
        return self._epsilon_of(merge_history([*self.history, extra]), delta)

    def _epsilon_of(self, history: list[Composition], delta: float) -> float:
        delta = check_delta(delta)
        if not history:
            return 0.0
        if any(sigma == 0.0 for sigma, _, _ in history):
            return math.inf
        try:
            epsilon = float(self._compute_epsilon(history, delta))
        except (ValueError, RuntimeError, OverflowError, FloatingPointError, ZeroDivisionError) as err:
            raise AccountingError(f"{self.mechanism} accounting failed for history {history}: {err}") from err
        if math.isnan(epsilon):
            raise AccountingError(f"{self.mechanism} accounting returned NaN for history {history}")
        return max(epsilon, 0.0)

    @abc.abstractmethod
    def _compute_epsilon(self, history: list[Composition], delta: float) -> float:
        """Epsilon of a non-empty, validated history with all noise multipliers > 0."""

    # -- state -------------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Accountant settings that change the result (JSON-able); empty for defaults."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state: ``{"format", "mechanism", "history": [[sigma, q, steps], ...], "params"}``."""
        return {
            "format": STATE_FORMAT,
            "mechanism": self.mechanism,
            "history": [[sigma, q, steps] for sigma, q, steps in self.history],
            "params": self.params(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PrivacyAccountant":
        """Restore from :meth:`to_dict` on the accountant class of the state's mechanism (the
        registry's :func:`~ai4hi_sdk.privacy.dp.accountants.registry.accountant_from_dict` picks
        it by name); a foreign mechanism is refused (re-account its history with ``Cls(history=...)``)."""
        if not isinstance(data, Mapping) or "mechanism" not in data or "history" not in data:
            raise InvalidPrivacyParameter("accountant state must be a mapping with 'mechanism' and 'history'")
        if data.get("format", STATE_FORMAT) != STATE_FORMAT:
            raise InvalidPrivacyParameter(f"unsupported accountant state format {data.get('format')!r}")
        if cls is PrivacyAccountant or data["mechanism"] != cls.mechanism:
            raise InvalidPrivacyParameter(
                f"state of a '{data['mechanism']}' accountant cannot be loaded into a "
                f"'{cls.mechanism or 'base'}' accountant (use accountant_from_dict)")
        try:
            return cls(history=data["history"], **dict(data.get("params") or {}))
        except (TypeError, AttributeError) as err:
            raise InvalidPrivacyParameter(f"invalid '{cls.mechanism}' accountant state: {err}") from None

    def copy(self) -> "PrivacyAccountant":
        return type(self).from_dict(self.to_dict())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(history={self.history!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PrivacyAccountant) and self.to_dict() == other.to_dict()
