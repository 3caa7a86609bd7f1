"""User-facing errors: raised for user mistakes, printed by the CLI without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (bad path, bad option, bad file). The message says how."""


class ConfigError(UserError):
    """A configuration file failed validation.

    Args:
        file: path of the offending file (as given by the user).
        problems: one ``(field, reason)`` pair per problem; ``field`` is a dotted path
            such as ``train.rounds`` or ``<file>`` for whole-file problems.
    """

    def __init__(self, file: str, problems: list[tuple[str, str]]):
        self.file = file
        self.problems = problems
        lines = [f"{file}: invalid configuration"]
        lines += [f"  - {field}: {reason}" for field, reason in problems]
        super().__init__("\n".join(lines))


class RoundRefused(Exception):
    """A site will not train or send for this task; ``str(err)`` is the reason it sends instead.

    Raised by the site runtime (policy, budget, custom code, secure aggregation): the site then
    answers with the refusal alone, so nothing of the round's work leaves. ``privacy`` optionally
    carries the site's privacy position (dataset id, epsilon spent and limit, delta)."""

    def __init__(self, reason: str, privacy: dict | None = None):
        super().__init__(reason)
        self.privacy = privacy
