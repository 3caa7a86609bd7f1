"""Find a job's trainer class: an SDK trainer, or a class from the job's own code.

A trainer path is ``module:Class``. The module must be the SDK's (``ai4hi_sdk.*``) or one of the
job's own code files (``code:`` in the spec, whose folders are put on ``sys.path`` first): an
arbitrary installed module is not imported, so a job cannot make a site import code that merely
happens to be installed there. The class must subclass :class:`SiteTrainer`.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Iterable

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.trainers.site_trainer import SiteTrainer

SDK_PACKAGE = "ai4hi_sdk"


class TrainerNotFound(ImportError):
    """The trainer cannot be loaded; ``str(err)`` says why."""


def _code_modules(code_dirs: Iterable[Path], entries: Iterable[str]) -> set[str]:
    """Module names the job's code files provide (``a/b.py`` -> ``b``, as its folder is on sys.path)."""
    return {Path(entry).stem for entry in entries}


def load_trainer_class(trainer: str, code_dirs: Iterable[str | Path] = (), code_entries: Iterable[str] = ()) -> type:
    """Import ``module:Class`` (see the module docstring) and return the class.

    Args:
        trainer: the spec's ``trainer``.
        code_dirs: folders holding the job's code files (put on ``sys.path``).
        code_entries: the job's code file names (relative paths), which name the modules allowed
            besides the SDK's.
    """
    module_name, _, class_name = trainer.partition(":")
    dirs = [str(Path(d)) for d in code_dirs]
    own = _code_modules(map(Path, dirs), code_entries)
    top = module_name.split(".")[0]
    if top != SDK_PACKAGE and top not in own:
        raise TrainerNotFound(f"module '{module_name}' is neither part of the SDK nor one of the job's code files "
                              f"({', '.join(sorted(own)) or 'none'})")
    for folder in dirs:
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, class_name)
    except (ImportError, AttributeError) as err:
        raise TrainerNotFound(f"cannot import '{trainer}': {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, SiteTrainer)):
        raise TrainerNotFound(f"'{trainer}' is not a subclass of ai4hi_sdk SiteTrainer")
    return cls


def trainer_class_for(spec: JobSpec) -> type:
    """The trainer class of ``spec`` with its code files read from the spec's folder (the lead's
    side: CLI, builder, simulator runner)."""
    return load_trainer_class(spec.trainer, {p.parent for p in spec.code_paths()}, spec.code)
