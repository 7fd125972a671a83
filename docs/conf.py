"""Sphinx configuration for the pyro_qem documentation.

Build with ``make docs`` (warnings are errors). The tutorial notebooks are rendered from
their committed outputs and never re-executed here; ``tests/test_tutorials.py`` runs them.
Nothing is fetched from the network: intersphinx is not used.
"""

import filecmp
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

import pyro_qem  # noqa: E402

project = "pyro_qem"
author = "pyro_qem developers"
copyright = "2025, pyro_qem developers"
release = version = pyro_qem.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",
]

# Offline builds only: no inventories are downloaded.
intersphinx_mapping: dict = {}

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]

# The notebooks are executed and committed with their outputs (tutorials/build_notebooks.py).
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autosummary_generate = False
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False

html_theme = "alabaster"
html_title = f"pyro_qem {release}"
html_static_path: list = []
html_theme_options = {"description": "QEM inference for Pyro models", "fixed_sidebar": True}


def _copy_tutorials() -> None:
    """Mirror ``tutorials/*.ipynb`` into ``docs/tutorials/`` (git-ignored).

    Sphinx only reads sources under ``docs/``; files are copied only when they changed, so
    incremental builds stay incremental.
    """
    target = DOCS / "tutorials"
    target.mkdir(exist_ok=True)
    sources = sorted((ROOT / "tutorials").glob("*.ipynb"))
    for stale in set(target.glob("*.ipynb")) - {target / s.name for s in sources}:
        stale.unlink()
    for source in sources:
        dest = target / source.name
        if not dest.exists() or not filecmp.cmp(source, dest, shallow=False):
            shutil.copy2(source, dest)


def _write_toplevel_table() -> None:
    """List ``pyro_qem.__all__`` with a link to where each name is documented.

    Generated from ``__all__`` at build time, so the page cannot fall behind the package.
    """
    homes = ["guides", "infer", "outputs", "estimator"]
    lines = [".. list-table::", "   :header-rows: 1", "   :widths: 30 70", "",
             "   * - name", "     - documented in"]
    for name in pyro_qem.__all__:
        if name.startswith("__"):
            continue
        obj = getattr(pyro_qem, name)
        home = next((f"pyro_qem.{h}" for h in homes
                     if name in getattr(__import__(f"pyro_qem.{h}", fromlist=["_"]), "__all__", ())),
                    obj.__module__)
        role = "class" if isinstance(obj, type) else "func"
        summary = (obj.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        lines += [f"   * - :{role}:`~{home}.{name}`", f"     - {summary}"]
    (DOCS / "api" / "_toplevel.rst.inc").write_text("\n".join(lines) + "\n")


_copy_tutorials()
_write_toplevel_table()
