"""Packaging regressions: our Triton sources must never shadow Hugging Face's `kernels` package.

transformers >= 5 imports the HF `kernels` package; `python -m pytest` and `python -c` put the repository root
first on sys.path, so a regular package named `kernels` there would win (issue 19).
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_from_root(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def test_the_repo_root_has_no_regular_kernels_package():
    spec = importlib.machinery.PathFinder.find_spec("kernels", [str(ROOT)])
    # A namespace portion (no loader origin) is fine: any installed regular package of the name wins over it.
    assert spec is None or spec.origin is None, f"{spec.origin} makes `kernels` a regular package at the repo root"


def test_import_kernels_from_the_repo_root_finds_the_installed_package():
    if importlib.util.find_spec("kernels") is None or not importlib.util.find_spec("kernels").origin:
        pytest.skip("Hugging Face's `kernels` package is not installed")
    code = ("import json, kernels, transformers, diffusers; from diffusers import WanTransformer3DModel, "
            "AutoencoderKLWan; print(json.dumps(kernels.__file__))")
    path = Path(json.loads(_run_from_root(code))).resolve()
    assert not path.is_relative_to(ROOT / "kernels"), path


def test_our_kernels_import_as_miga_fast_kernels_from_the_repo_root():
    path = Path(json.loads(_run_from_root("import json, miga_fast.kernels.launch as m; print(json.dumps(m.__file__))")))
    # editable install: the source file; regular install: site-packages/miga_fast/kernels/launch.py
    assert path.name == "launch.py" and path.parent.name in ("miga_kernels", "kernels"), path
