"""`ai4hi --help` (building the parser of every command group) imports no heavy library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_help_imports_neither_torch_nor_nvflare():
    code = ("import sys; from ai4hi_sdk.cli.main import build_parser; build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'nvflare', 'monai', 'opacus'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
