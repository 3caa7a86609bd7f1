"""Pick an accountant by name: ``create_accountant("rdp" | "prv")``."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from ai4hi_sdk.privacy.dp.accountants.base import InvalidPrivacyParameter, PrivacyAccountant
from ai4hi_sdk.privacy.dp.accountants.prv import PRVAccountant
from ai4hi_sdk.privacy.dp.accountants.rdp import RDPAccountant

_ACCOUNTANTS: dict[str, type[PrivacyAccountant]] = {
    RDPAccountant.mechanism: RDPAccountant,
    PRVAccountant.mechanism: PRVAccountant,
}


def available_accountants() -> list[str]:
    return sorted(_ACCOUNTANTS)


def accountant_class(mechanism: str) -> type[PrivacyAccountant]:
    """The accountant class for ``mechanism``; :class:`InvalidPrivacyParameter` if unknown."""
    try:
        return _ACCOUNTANTS[str(mechanism).strip().lower()]
    except KeyError:
        raise InvalidPrivacyParameter(
            f"unknown accountant {mechanism!r}; choose one of: {', '.join(available_accountants())}"
        ) from None


def create_accountant(mechanism: str, history: Iterable[Iterable[Any]] = (), **params: Any) -> PrivacyAccountant:
    """New accountant for ``mechanism`` ("rdp" or "prv"), optionally starting from ``history``."""
    return accountant_class(mechanism)(history=history, **params)


def register_accountant(cls: type[PrivacyAccountant], force: bool = False) -> None:
    """Make ``cls`` available under ``cls.mechanism``."""
    if not cls.mechanism:
        raise ValueError("accountant class must set 'mechanism'")
    if cls.mechanism in _ACCOUNTANTS and not force:
        raise ValueError(f"an accountant named {cls.mechanism!r} is already registered")
    _ACCOUNTANTS[cls.mechanism] = cls


def accountant_from_dict(data: Mapping[str, Any]) -> PrivacyAccountant:
    """Restore any accountant from its :meth:`~PrivacyAccountant.to_dict` state (the mechanism
    names its class)."""
    if not isinstance(data, Mapping) or "mechanism" not in data:
        raise InvalidPrivacyParameter("accountant state must be a mapping with 'mechanism' and 'history'")
    return accountant_class(data["mechanism"]).from_dict(data)
