"""Promises about the repository itself: clean notebooks, consistent environments, no secrets."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, "notebooks/ holds no .ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean_with_parameters(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)  # e.g. cell ids in a 4.4 notebook: JupyterLab and nbconvert warn or refuse
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip outputs (nbstripout)"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    assert "UR4REC_PROFILE" in params[0].source, "the parameters cell reads the profile for nbval"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "a title first"
    assert nb.metadata["kernelspec"]["name"] == "ur4rec"
    assert nb.cells[-1].cell_type == "markdown" and "Summary" in nb.cells[-1].source, "a closing summary"


def test_environment_yml_matches_pyproject_and_makefile() -> None:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
    assert python == "python=3.11" and project["requires-python"].startswith(">=3.11")
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    torch_pin = re.search(r"^TORCH_SPEC \?= (\S+)", (REPO / "Makefile").read_text(), re.M).group(1)
    assert pip[0] == torch_pin, "environment.yml installs torch first, with the Makefile's pin"
    extras = set(project["optional-dependencies"])
    assert f"-e .[{','.join(sorted(extras))}]" in pip, "environment.yml installs the project with every extra"


def test_no_secrets_committed() -> None:
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    pattern = re.compile(r"(sk-[A-Za-z0-9]{20,}|api_key\s*=\s*[\"'][^\"'$ {]{8,})")
    hits = [f for f in files if (REPO / f).is_file() and f.endswith((".py", ".yaml", ".yml", ".ipynb", ".md", ".toml"))
            and pattern.search((REPO / f).read_text(errors="ignore"))]
    assert not hits, hits


def test_data_and_reports_keep_only_readme_and_gitignore() -> None:
    files = subprocess.run(["git", "ls-files", "data", "reports"], cwd=REPO, capture_output=True, text=True)
    names = {Path(f).name for f in files.stdout.split()}
    assert names <= {"README.md", ".gitignore"}, names


def test_code_passes_ruff() -> None:
    """The package, benchmarks, tests and notebooks pass the checks pyproject.toml selects."""
    ruff = Path(sys.executable).with_name("ruff")
    out = subprocess.run([str(ruff), "check", "--no-cache", "--output-format", "concise", "."], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
