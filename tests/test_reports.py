"""The report runner: papermill runs, HTML export, the index, failures, and offline rendering."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from tests.browser import rendered_dom, screenshot
from ur4rec.cli import main
from ur4rec.reports.runner import run_reports

REPO = Path(__file__).resolve().parents[1]


def _notebook(path: Path, *sources: str) -> Path:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "ur4rec", "display_name": "Python (ur4rec)", "language": "python"}
    params = new_code_cell('profile = "full"\nrun_dir = None')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(new_code_cell(s) for s in sources)]
    nbformat.write(nb, path)
    return path


def test_broken_notebook_fails_the_run_skips_dependants_and_keeps_its_html(tmp_path: Path) -> None:
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    _notebook(nbdir / "01_data_prep.ipynb", "print('fine')", "raise ValueError('deliberately broken')")
    _notebook(nbdir / "03_training.ipynb", "print('never runs: depends on 01')")
    _notebook(nbdir / "02_model_walkthrough.ipynb", "print('depends on 01 too')")
    results, index = run_reports("quick", reports_dir=tmp_path / "reports", runs_dir=tmp_path / "runs",
                                 notebook_dir=nbdir)
    status = {r.name: r.status for r in results}
    assert status == {"01_data_prep": "failed", "02_model_walkthrough": "skipped", "03_training": "skipped"}
    failed = results[0]
    assert "deliberately broken" in failed.error
    html = (index.parent / failed.html).read_text()
    assert "deliberately broken" in html and "ValueError" in html  # the traceback is in the HTML
    page = index.read_text()
    assert "failed" in page and "skipped" in page and "01_data_prep.html" in page
    assert json.loads((index.parent / "index.json").read_text())["results"][0]["status"] == "failed"


def test_cli_reports_exit_status_is_non_zero_on_failure(tmp_path: Path) -> None:
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    _notebook(nbdir / "01_data_prep.ipynb", "assert False, 'broken'")
    code = main(["reports", "--profile", "quick", "--notebook-dir", str(nbdir), "--set",
                 f"reports_dir={tmp_path / 'r'}", "--set", f"runs_dir={tmp_path / 'runs'}", "--json"])
    assert code == 1
    assert (tmp_path / "r" / "quick" / "index.html").is_file()


def test_unknown_notebook_name_is_a_clear_error(capsys) -> None:
    assert main(["reports", "--profile", "quick", "--only", "99_nope"]) == 2
    assert "No notebook named" in capsys.readouterr().err


def test_data_prep_report_renders_offline_in_chromium(tmp_path: Path) -> None:
    results, index = run_reports("quick", only=["01_data_prep"], reports_dir=tmp_path / "reports",
                                 runs_dir=tmp_path / "runs")
    assert [r.status for r in results] == ["ok"], results[0].error
    html = index.parent / "01_data_prep.html"
    text = html.read_text()
    external = re.findall(r'<script[^>]*src="(https?://[^"]*)"', text)
    assert not [src for src in external if "plot" in src], external  # plotly.js is embedded, not fetched
    dom = rendered_dom(html)
    # Each plotly chart becomes a div.js-plotly-plot holding rendered <svg class="main-svg">.
    assert len(re.findall(r'class="[^"]*\bjs-plotly-plot\b', dom)) >= 5, "charts did not render"
    assert len(re.findall(r'<svg[^>]*class="main-svg"', dom)) >= 5
    png = screenshot(html, index.parent / "01_data_prep.png")
    assert png.stat().st_size > 20_000  # a blank page compresses to a few KB
    idx_dom = rendered_dom(index)
    assert "01_data_prep" in idx_dom and "ok" in idx_dom
