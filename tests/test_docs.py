"""The documentation builds without warnings, and every public name has a docstring."""

import dataclasses
import importlib
import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pyro_qem

ROOT = Path(__file__).resolve().parent.parent
SUBPACKAGES = ["guides", "infer", "outputs", "families", "estimator", "model", "handlers",
               "evals", "datasets"]


def _own_docstring(obj) -> str:
    """The object's own docstring: not inherited, and not the signature that
    ``dataclasses`` writes for a class without one."""
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else obj.__doc__
    doc = (doc or "").strip()
    if isinstance(obj, type) and dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}("):
        return ""
    return doc


def _public_objects():
    """(qualified name, object) for pyro_qem.__all__ and the classes and functions in each
    subpackage's __all__."""
    for name in pyro_qem.__all__:
        if not name.startswith("__"):
            yield f"pyro_qem.{name}", getattr(pyro_qem, name)
    for sub in SUBPACKAGES:
        module = importlib.import_module(f"pyro_qem.{sub}")
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                yield f"pyro_qem.{sub}.{name}", obj


def test_every_public_name_has_a_docstring():
    missing = sorted({name for name, obj in _public_objects() if not _own_docstring(obj)})
    assert not missing, f"public names without a docstring: {missing}"


def test_every_public_module_has_a_docstring():
    missing = [sub for sub in SUBPACKAGES
               if not (importlib.import_module(f"pyro_qem.{sub}").__doc__ or "").strip()]
    assert not missing


def test_intersphinx_is_off():
    """The build must work offline: no inventories to download."""
    conf = (ROOT / "docs" / "conf.py").read_text()
    assert "sphinx.ext.intersphinx" not in conf


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_nb")
    out = tmp_path / "html"
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(ROOT / "docs"), str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for page in ["index", "method", "installation", "tutorials", "api/pyro_qem", "api/guides",
                 "api/evals"]:
        assert (out / f"{page}.html").is_file(), page
    api = (out / "api" / "infer.html").read_text()
    assert 'id="pyro_qem.infer.Inference"' in api
    notebooks = sorted(p.stem for p in (ROOT / "tutorials").glob("*.ipynb"))
    for stem in notebooks:
        assert (out / "tutorials" / f"{stem}.html").is_file(), stem
    shutil.rmtree(tmp_path, ignore_errors=True)
