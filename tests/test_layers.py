"""The package's layers import downward only, and ur4rec modules are imported at the top of files.

Layers, bottom to top: config/errors/io/devices → data → models → texts → training → evaluation →
diagnostics → top level (pipeline, seeds, cli, reports, plots). A module may import its own layer
and the ones below. Imports of ur4rec modules inside functions hide such dependencies (and import
cycles) and are allowed only in ``ur4rec/cli.py``, whose commands import what they need lazily;
lazy imports of heavy optional third-party packages (sentence_transformers, openai, transformers)
are not ur4rec modules and are fine anywhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ur4rec"

#: first component under ``ur4rec`` -> layer (higher imports lower)
LAYERS = {"__init__": 0, "config": 0, "errors": 0, "io": 0, "profiles": 0, "devices": 0,
          "data": 1, "models": 2, "texts": 3, "training": 4, "evaluation": 5, "diagnostics": 6,
          "pipeline": 7, "seeds": 7, "cli": 7, "reports": 7, "plots": 7}
LAZY_ALLOWED = {"ur4rec/cli.py"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    if key not in LAYERS:
        raise AssertionError(f"ur4rec module '{module}' has no layer: add '{key}' to LAYERS in {__file__}")
    return LAYERS[key]


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported ur4rec module, line, inside a function) for every import of an ur4rec module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: resolve against this module's package
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    names = [".".join(base + ([child.module] if child.module else []))]
                else:
                    names = [child.module or ""]
                # `from ur4rec import seeds` imports the module ur4rec.seeds
                if names == ["ur4rec"]:
                    names = [f"ur4rec.{a.name}" for a in child.names]
            found.extend((n, child.lineno, in_function) for n in names if n == "ur4rec" or n.startswith("ur4rec."))
            visit(child, nested)

    visit(tree, False)
    return found


def _files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    for path in _files():
        _layer(_module_name(path))


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_imports_point_downward_and_sit_at_the_top(path: Path) -> None:
    rel = str(path.relative_to(PACKAGE.parent))
    module = _module_name(path)
    own = _layer(module)
    problems = []
    for target, line, in_function in _imports(path):
        if module.startswith("ur4rec.training") and target.startswith(("ur4rec.evaluation", "ur4rec.diagnostics")):
            problems.append(f"{rel}:{line} training imports {target} (pass what it needs in, e.g. a callback)")
        elif _layer(target) > own:
            problems.append(f"{rel}:{line} imports {target}, a higher layer ({_layer(target)} > {own})")
        if in_function and rel not in LAZY_ALLOWED:
            problems.append(f"{rel}:{line} imports {target} inside a function: import it at the top of the file")
    assert not problems, "\n".join(problems)


def test_the_walk_finds_upward_and_function_level_imports(tmp_path: Path, monkeypatch) -> None:
    """The checker itself: a planted upward import and a function-level import are both reported."""
    fake = tmp_path / "ur4rec"
    (fake / "training").mkdir(parents=True)
    bad = fake / "training" / "bad.py"
    bad.write_text("from ur4rec.evaluation.scoring import validation_metric\n\n"
                   "def f():\n    from ur4rec.data import batching\n    import sentence_transformers\n")
    monkeypatch.setitem(globals(), "PACKAGE", fake)  # the helpers read PACKAGE from this module
    assert _imports(bad) == [("ur4rec.evaluation.scoring", 1, False), ("ur4rec.data", 4, True)]
    with pytest.raises(AssertionError) as err:
        test_imports_point_downward_and_sit_at_the_top(bad)
    assert "training imports ur4rec.evaluation.scoring" in str(err.value)
    assert "imports ur4rec.data inside a function" in str(err.value)
