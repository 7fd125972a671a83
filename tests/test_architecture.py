"""The package's layers import one way, and its text stands on its own.

Every module of ``pyro_qem`` is parsed (not imported) with :mod:`ast`; imports inside
``if TYPE_CHECKING:`` blocks are ignored (they never run). Function-level imports count:
a lazy import is still a dependency.
"""

import ast
import re
from pathlib import Path
from typing import Dict, Set

import pytest

import pyro_qem

ROOT = Path(pyro_qem.__file__).parent

# Each layer may import only the layers listed for it (and itself).
ALLOWED = {
    "handlers": set(),
    "families": set(),
    "model": {"handlers"},
    "estimator": {"handlers", "model"},
    "guides": {"handlers", "model", "families", "estimator"},
    "infer": {"handlers", "model", "families", "estimator", "guides"},
    "outputs": {"handlers", "model", "families", "estimator", "guides", "infer"},
    "evals": set(),
    "datasets": set(),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str) -> Set[str]:
    """The pyro_qem modules that module ``name`` imports."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    found: Set[str] = set()

    def visit(node):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(name, path.name == "__init__.py", node)
            submodules = {f"{target}.{a.name}" for a in node.names} & set(MODULES)
            # "from pkg import module" depends on the module; "from pkg import name"
            # on the package.
            found.update(submodules if len(submodules) == len(node.names) else submodules | {target})
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in MODULES and m != name}


GRAPH: Dict[str, Set[str]] = {name: imports_of(name) for name in MODULES}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_was_found():
    assert "pyro_qem.infer.inference" in GRAPH and "pyro_qem.estimator.contraction" in GRAPH
    assert "pyro_qem.infer.inference" in GRAPH["pyro_qem.outputs.sites"]


def test_import_graph_has_no_cycle():
    state: Dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for child in sorted(GRAPH[node]):
            if state.get(child) == 1:
                cycle = stack[stack.index(child):] + [child]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if child not in state:
                visit(child, stack + [child])
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node, [node])


def test_packages_import_only_lower_layers():
    wrong = []
    for module, targets in GRAPH.items():
        own = layer(module)
        if own not in ALLOWED:
            continue  # the top-level package and the demo may import anything
        for target in targets:
            other = layer(target)
            if other != own and other not in ALLOWED[own]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_estimator_and_model_never_import_guides_infer_or_outputs():
    for module, targets in GRAPH.items():
        if layer(module) in ("estimator", "model", "handlers"):
            assert not {layer(t) for t in targets} & {"guides", "infer", "outputs"}, module


SHIPPED = {p.name for p in ROOT.rglob("*") if p.is_file()}
# Documents a docstring could cite, and paths outside the package.
FILE_REFERENCE = re.compile(r"[\w./-]+\.(?:md|rst|ipynb|pdf|tex)\b|\.\./[\w./-]+|\bshared/[\w./-]+")


def test_no_text_cites_a_file_the_package_does_not_ship():
    cited = [f"{name}: {match.group(0)}" for name, path in MODULES.items()
             for match in FILE_REFERENCE.finditer(path.read_text())
             if Path(match.group(0)).name not in SHIPPED or ".." in match.group(0)]
    assert not cited, "\n".join(cited)


def test_public_names_are_importable_from_the_top_level():
    for name in pyro_qem.__all__:
        assert hasattr(pyro_qem, name), name
    for name in ("log_predictive_density", "SubsampleWarning", "posterior_moments",
                 "sample_posterior", "to_inference_data", "diagnose", "fit"):
        assert name in pyro_qem.__all__
