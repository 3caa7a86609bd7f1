"""Backbone checkpoints: import a file from elsewhere, save and load our own, verify by sha256.

* :func:`read_state_dict`: safetensors (preferred), or ``.pt``/``.pth``/``.bin``/``.ckpt`` only
  through ``torch.load(weights_only=True)`` (no arbitrary unpickling); ``state_dict`` / ``model``
  wrappers are unwrapped.
* :func:`import_checkpoint`: strip common prefixes (``module.``, ``_module.``, ``model.``,
  ``encoder.``, ...), convert a full MONAI ``MaskedAutoEncoderViT`` state to its encoder, check
  every tensor's shape against the architecture and name missing and unexpected keys, then write
  ``backbone.safetensors`` (the architecture's own names) and ``provenance.json`` (sha256 of both
  files, source, licence, what was stripped or dropped).
* :func:`save_backbone` / :func:`load_backbone`: the same pair for backbones we pretrain;
  :func:`load_backbone` refuses a file whose sha256 differs from its record or from the one the
  caller expects (a site verifies the base checkpoint before round 0).
"""

from __future__ import annotations

import json
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from ai4hi_sdk.audit.file_digest import sha256_file
from ai4hi_sdk.errors import UserError
from ai4hi_sdk.foundation.presets import resolve_backbone

BACKBONE_FILE = "backbone.safetensors"
PROVENANCE_FILE = "provenance.json"
PROVENANCE_VERSION = 1
#: leading name parts that wrappers add (DataParallel, opacus, Lightning, timm/MONAI containers)
COMMON_PREFIXES = ("module.", "_module.", "model.", "encoder.", "backbone.", "vit.", "net.", "network.",
                   "state_dict.")
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "network", "net")
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_MAX_NAMED = 8



def _names(keys: Any) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - _MAX_NAMED} more)" if len(keys) > _MAX_NAMED else ""
    return ", ".join(keys[:_MAX_NAMED]) + more


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """Read a checkpoint's tensors: ``(name -> tensor, format)`` with format ``"safetensors"`` or
    ``"torch"``.

    Raises:
        UserError: missing file, unknown suffix, a ``.pt`` that holds anything but tensors and
            plain containers (refused by ``weights_only=True``), or no tensors at all.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu")), "safetensors"
        except (SafetensorError, OSError, ValueError) as err:
            raise UserError(f"{path}: not a readable safetensors file ({err})") from err
    if suffix not in _TORCH_SUFFIXES:
        raise UserError(f"{path}: unknown checkpoint type {suffix!r}; use .safetensors (preferred) or "
                        f"{'/'.join(_TORCH_SUFFIXES)}")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: refused: the file holds more than tensors, and only weights_only loading is "
                        f"allowed (convert it to safetensors where it came from): {first}") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err})") from err
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise UserError(f"{path}: expected a mapping of tensor names to tensors, found {type(obj).__name__}")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise UserError(f"{path}: no tensors found")
    return state, "torch"


def strip_prefixes(state: Mapping[str, torch.Tensor],
                   expected: set[str]) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Strip :data:`COMMON_PREFIXES` from the front of each name until it is an ``expected`` name
    or no known prefix is left. Returns ``(renamed state, prefix -> how many names lost it)``."""
    out: dict[str, torch.Tensor] = {}
    stripped: dict[str, int] = {}
    for name, tensor in state.items():
        new = name
        while new not in expected:
            prefix = next((p for p in COMMON_PREFIXES if new.startswith(p)), None)
            if prefix is None:
                break
            new = new[len(prefix):]
            stripped[prefix] = stripped.get(prefix, 0) + 1
        if new in out:
            raise UserError(f"checkpoint names '{name}' and another entry both map to '{new}' after stripping prefixes")
        out[new] = tensor
    return out, stripped


@dataclass
class MatchReport:
    """How a checkpoint's names and shapes compare with an architecture's state."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    def problems(self, *, allow_unexpected: bool = False) -> list[str]:
        out = [f"'{name}' has shape {list(got)}, the architecture expects {list(want)}"
               for name, got, want in self.mismatched[:_MAX_NAMED]]
        if len(self.mismatched) > _MAX_NAMED:
            out.append(f"... and {len(self.mismatched) - _MAX_NAMED} more shape mismatches")
        if self.missing:
            out.append(f"missing keys: {_names(self.missing)}")
        if self.unexpected and not allow_unexpected:
            out.append(f"unexpected keys: {_names(self.unexpected)}")
        return out


def match_state(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> MatchReport:
    """Compare names and shapes of ``state`` with ``reference`` (an architecture's ``state_dict()``)."""
    report = MatchReport(missing=sorted(set(reference) - set(state)), unexpected=sorted(set(state) - set(reference)))
    for name in sorted(set(state) & set(reference)):
        got, want = tuple(state[name].shape), tuple(reference[name].shape)
        if got != want:
            report.mismatched.append((name, got, want))
    return report


def conform_state(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], *, where: str,
                  allow_unexpected: bool = False) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Check ``state`` against ``reference`` and return ``(state in the reference's dtypes, dropped
    unexpected names)``. Raises :class:`UserError` (prefixed by ``where``) naming every problem."""
    report = match_state(state, reference)
    problems = report.problems(allow_unexpected=allow_unexpected)
    if problems:
        raise UserError(f"{where} does not fit the architecture: " + "; ".join(problems))
    out = {name: state[name].detach().to(reference[name].dtype).contiguous().clone() for name in reference}
    return out, report.unexpected


@dataclass
class Provenance:
    """Where a backbone came from (``provenance.json``).

    ``sha256`` is the hash of ``backbone.safetensors`` (what sites verify); ``source_sha256`` the
    hash of the file it was imported from (or None for our own pretraining).
    """

    arch: str | dict[str, Any]
    arch_config: dict[str, Any]
    sha256: str
    kind: str = "imported"  # imported | pretrained
    source: str = "unknown"
    licence: str = "unknown"
    source_file: str | None = None
    source_sha256: str | None = None
    source_format: str | None = None
    stripped_prefixes: dict[str, int] = field(default_factory=dict)
    dropped_keys: list[str] = field(default_factory=list)
    converted_from: str | None = None
    batchnorm_layers: list[str] = field(default_factory=list)
    tensors: int = 0
    parameters: int = 0
    created: str = ""
    card: dict[str, Any] | None = None
    format_version: int = PROVENANCE_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Provenance":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _arch_label(arch: str | Mapping[str, Any]) -> str | dict[str, Any]:
    return arch if isinstance(arch, str) else dict(arch)


def _batchnorm_names(model: torch.nn.Module) -> list[str]:
    from torch.nn.modules.batchnorm import _BatchNorm

    return [name for name, module in model.named_modules() if isinstance(module, _BatchNorm)]


def save_backbone(state: Mapping[str, torch.Tensor], out_dir: str | Path, provenance: Provenance, *,
                  overwrite: bool = False) -> Provenance:
    """Write ``out_dir/backbone.safetensors`` and ``out_dir/provenance.json``; fills in the
    provenance's sha256, tensor and parameter counts and creation time, and returns it.

    Raises:
        UserError: ``out_dir`` already holds a backbone and not ``overwrite``.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    target = out / BACKBONE_FILE
    if target.exists() and not overwrite:
        raise UserError(f"{target} already exists (use --overwrite to replace it)")
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous().clone() for name, t in state.items()}
    arch_text = json.dumps(provenance.arch, sort_keys=True)
    tmp = target.with_suffix(".safetensors.tmp")
    save_file(tensors, str(tmp), metadata={"ai4hi_arch": arch_text})
    tmp.replace(target)
    provenance.sha256 = sha256_file(target)
    provenance.tensors = len(tensors)
    provenance.parameters = int(sum(t.numel() for t in tensors.values() if t.is_floating_point()))
    provenance.created = provenance.created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (out / PROVENANCE_FILE).write_text(json.dumps(provenance.to_dict(), indent=2, sort_keys=True) + "\n")
    return provenance


def load_backbone(path: str | Path, *,
                  expected_sha256: str | None = None) -> tuple[dict[str, torch.Tensor], Provenance]:
    """Read a backbone folder (or its ``backbone.safetensors``) after verifying its sha256 against
    ``provenance.json`` and, if given, ``expected_sha256``.

    Raises:
        UserError: missing files, or a hash that differs (nothing is loaded then).
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    weights = folder / BACKBONE_FILE if path.is_dir() else path
    record = folder / PROVENANCE_FILE
    if not weights.is_file():
        raise UserError(f"backbone checkpoint not found: {weights}")
    if not record.is_file():
        raise UserError(f"{folder} has no {PROVENANCE_FILE}: import the checkpoint with 'ai4hi model import' first")
    try:
        provenance = Provenance.from_dict(json.loads(record.read_text()))
    except (json.JSONDecodeError, TypeError) as err:
        raise UserError(f"{record}: unreadable provenance record ({err})") from err
    actual = sha256_file(weights)
    for label, wanted in (("its provenance record", provenance.sha256), ("the job", expected_sha256)):
        if wanted is not None and actual != wanted.lower():
            raise UserError(f"refused: {weights} has sha256 {actual}, but {label} expects {wanted}")
    state, _ = read_state_dict(weights)
    return state, provenance


@dataclass
class ImportResult:
    """What :func:`import_checkpoint` wrote: the folder, the record, and the checked state."""

    out_dir: Path
    provenance: Provenance
    state: dict[str, torch.Tensor]


def import_checkpoint(path: str | Path, arch: str | Mapping[str, Any], out_dir: str | Path, *,
                      source: str = "unknown", licence: str = "unknown", allow_unexpected: bool = False,
                      overwrite: bool = False) -> ImportResult:
    """Import an external checkpoint as a backbone of architecture ``arch``.

    Steps: read (safetensors, or ``.pt`` via ``weights_only=True``); strip common prefixes; if it
    is a full MONAI masked autoencoder, keep its encoder under ViT names; compare with the
    architecture (shapes, missing and unexpected keys, all named in the error); write
    ``backbone.safetensors`` + ``provenance.json``. A BatchNorm's statistics are kept (the task
    model freezes them, :mod:`~ai4hi_sdk.foundation.batchnorm`), never replaced by GroupNorm.

    Args:
        allow_unexpected: drop keys the architecture does not have (e.g. another model's head)
            instead of refusing; they are listed in the provenance record.

    Raises:
        UserError: unreadable or unsafe file, or a checkpoint that does not fit ``arch``.
    """
    from ai4hi_sdk.foundation.architectures import build_backbone
    from ai4hi_sdk.foundation.mae import encoder_state, looks_like_mae

    path = Path(path)
    config = resolve_backbone(arch)
    raw, fmt = read_state_dict(path)
    with torch.random.fork_rng(devices=[]):
        reference_model = build_backbone(config)
    reference = reference_model.state_dict()
    expected = set(reference)
    state, stripped = strip_prefixes(raw, expected)
    converted = None
    if looks_like_mae(state) and config["family"] == "vit":
        mae_only = sorted(n for n in state if not n.startswith(("blocks.", "patch_embedding.")))
        try:
            state = encoder_state(state, int(config["num_layers"]))
        except KeyError as err:
            raise UserError(f"{path}: masked-autoencoder checkpoint does not fit the architecture: {err}") from err
        converted = f"MONAI MaskedAutoEncoderViT (decoder and tokens dropped: {len(mae_only)} tensors)"
    conformed, dropped = conform_state(state, reference, where=str(path), allow_unexpected=allow_unexpected)
    provenance = Provenance(
        arch=_arch_label(arch), arch_config=config, sha256="", kind="imported", source=source, licence=licence,
        source_file=path.name, source_sha256=sha256_file(path), source_format=fmt, stripped_prefixes=stripped,
        dropped_keys=dropped, converted_from=converted, batchnorm_layers=_batchnorm_names(reference_model))
    provenance = save_backbone(conformed, out_dir, provenance, overwrite=overwrite)
    return ImportResult(out_dir=Path(out_dir), provenance=provenance, state=conformed)
