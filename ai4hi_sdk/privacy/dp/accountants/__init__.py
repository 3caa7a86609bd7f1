"""Privacy accountants behind one interface (:class:`PrivacyAccountant`), picked by name."""

from ai4hi_sdk.privacy.dp.accountants.base import (
    AccountingError,
    Composition,
    InvalidPrivacyParameter,
    PrivacyAccountant,
)
from ai4hi_sdk.privacy.dp.accountants.prv import PRVAccountant
from ai4hi_sdk.privacy.dp.accountants.rdp import RDPAccountant
from ai4hi_sdk.privacy.dp.accountants.registry import (
    accountant_class,
    accountant_from_dict,
    available_accountants,
    create_accountant,
    register_accountant,
)

__all__ = [
    "AccountingError",
    "Composition",
    "InvalidPrivacyParameter",
    "PRVAccountant",
    "PrivacyAccountant",
    "RDPAccountant",
    "accountant_class",
    "accountant_from_dict",
    "available_accountants",
    "create_accountant",
    "register_accountant",
]
