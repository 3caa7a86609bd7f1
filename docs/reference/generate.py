"""Write the configuration and run-record reference (docs/reference/*.md) from the SDK's pydantic
schemas, so the reference cannot drift from what the loaders accept and the jobs write.

    python docs/reference/generate.py          # rewrite the pages
    python docs/reference/generate.py --check  # exit 1 if a page is out of date (tests run this)
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

HERE = Path(__file__).resolve().parent

#: what a configuration page says about mistakes
CONFIG_NOTE = "A mistake in the file is reported with the file, the field and the reason."
#: what a run-record page says about its fields
RECORD_NOTE = ("A field marked **required** is in every record; any other is absent where it does not apply (e.g.\n"
               "`secure_aggregation` in a job without it). Keys written by another SDK version are kept as they are.")

#: page -> (title, "module:Model", where the file lives / what it is for[, note])
PAGES = {
    "job-spec.md": ("Job spec", "ai4hi_sdk.config.job_spec:JobSpec",
                    "`jobs/*.yaml`: what a federated job trains and how; written by the consortium lead."),
    "site-policy.md": ("Site privacy policy", "ai4hi_sdk.config.site_policy:SitePrivacyPolicy",
                       "`<site workspace>/ai4hi/site_policy.yaml`: the site admin's rules, enforced by the site "
                       "runtime whatever a job asks."),
    "consortium.md": ("Consortium", "ai4hi_sdk.config.consortium:ConsortiumSpec",
                      "the file `ai4hi provision` reads: server, sites, people, the default site policy."),
    "validation.md": ("Validation settings", "ai4hi_sdk.config.validation_spec:ValidationSpec",
                      "the `validation:` block of `jobs/continuous.yaml`: how sites validate and monitor."),
    "continuous.md": ("Continuous loop", "ai4hi_sdk.config.continuous:ContinuousSpec",
                      "`jobs/continuous.yaml`: the train -> validate -> decide -> monitor loop."),
    "update-policy.md": ("Update policy", "ai4hi_sdk.validation.update_policy:UpdatePolicy",
                         "`jobs/update_policy.yaml`: when a candidate replaces the deployed model, when to retrain."),
    "metrics-json.md": ("metrics.json (training run record)", "ai4hi_sdk.jobs.run_record:TrainingRunRecord",
                        "`WS/result/metrics.json` (`ai4hi job simulate`) and `OUT/result/metrics.json` (`ai4hi job "
                        "download`): what a training job did, round by round; written by the server as it runs "
                        "(`ai4hi_metrics.json` in its run folder).", RECORD_NOTE),
    "validation-json.md": ("validation.json (validation run record)", "ai4hi_sdk.jobs.run_record:ValidationRecord",
                           "`result/validation.json` of a validation or monitoring job (the continuous loop keeps each "
                           "one in `WS/report/`): per-site aggregate reports, drift, operating points, refusals.",
                           RECORD_NOTE),
}


def _type_name(annotation: object) -> str:
    origin = typing.get_origin(annotation)
    if origin is None:
        if isinstance(annotation, type):
            return annotation.__name__
        return str(annotation).replace("typing.", "")
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " \\| ".join("null" if a is type(None) else _type_name(a) for a in args)
    inner = ", ".join(_type_name(a) for a in args)
    return f"{getattr(origin, '__name__', str(origin))}[{inner}]"


def _default(field: FieldInfo) -> str:
    if field.default is PydanticUndefined:
        if field.default_factory is not None:
            try:
                value = field.default_factory()  # type: ignore[call-arg]
            except TypeError:
                return "(computed)"
            return f"`{value!r}`" if not isinstance(value, BaseModel) else "(defaults below)"
        return "**required**"
    return f"`{field.default!r}`"


def _constraints(field: FieldInfo) -> str:
    parts = []
    for item in field.metadata:
        for name in ("gt", "ge", "lt", "le", "min_length", "max_length"):
            value = getattr(item, name, None)
            if value is not None:
                parts.append(f"{name} {value}")
    return ", ".join(parts)


def _models_in(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def render(title: str, target: str, about: str, note: str = CONFIG_NOTE) -> str:
    module, _, name = target.partition(":")
    root = getattr(importlib.import_module(module), name)
    lines = [f"# {title}", "", f"{about}", "",
             f"Generated from `{target}` by `docs/reference/generate.py`; do not edit by hand. "
             + ("A mistake in\nthe file is reported with the file, the field and the reason." if note == CONFIG_NOTE
                else note), ""]
    seen: set[type] = set()
    queue: list[tuple[str, type[BaseModel]]] = [("", root)]
    while queue:
        prefix, model = queue.pop(0)
        if model in seen:
            continue
        seen.add(model)
        heading = prefix or "(top level)"
        lines += [f"## `{heading}`", ""]
        doc = inspect.cleandoc(model.__doc__ or "").split("\n\n")[0].replace("\n", " ")
        if doc:
            lines += [doc, ""]
        lines += ["| field | type | default | constraints | description |", "|---|---|---|---|---|"]
        for field_name, field in model.model_fields.items():
            if field.exclude:
                continue
            description = (field.description or "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| `{field_name}` | {_type_name(field.annotation)} | {_default(field)} | "
                         f"{_constraints(field)} | {description} |")
            for sub in _models_in(field.annotation):
                queue.append((f"{prefix}.{field_name}" if prefix else field_name, sub))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true", help="exit 1 if a page differs from the schemas")
    args = parser.parse_args(argv)
    stale = []
    for page, (title, target, about, *note) in PAGES.items():
        text = render(title, target, about, *note)
        path = HERE / page
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(page)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run python docs/reference/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
