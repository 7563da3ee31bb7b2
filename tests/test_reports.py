"""The report runner: papermill runs, HTML export, the index, failures, and offline rendering."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import plotly.graph_objects as go
import plotly.io as pio
import torch
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
from plotly.offline import get_plotlyjs

from tests.browser import rendered_dom, screenshot
from ur4rec.cli import main
from ur4rec.plots.widgets import static_html
from ur4rec.reports.runner import export_html, run_reports

REPO = Path(__file__).resolve().parents[1]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
#: What a page would fetch by itself: a src= or <link href=>, a CSS @import/url() or a module import()
#: of an http(s) or protocol-relative URL. Plain <a href> links fetch nothing until clicked; URL strings
#: inside the embedded plotly.js (map tiles, topojson) are only used by map charts, which no notebook draws.
_EXTERNAL = re.compile(
    r"""\bsrc\s*=\s*["']?(?:https?:)?//[^"'\s>]*"""
    r"""|<link\b[^>]*\bhref\s*=\s*["']?(?:https?:)?//[^"'\s>]*"""
    r"""|@import\s+["']?(?:https?:)?//[^"'\s;]*"""
    r"""|\burl\(\s*["']?(?:https?:)?//[^"')\s]*"""
    r"""|\bimport\s*\(\s*["'](?:https?:)?//[^"']*""",
    re.IGNORECASE,
)


def external_refs(page: str) -> list[str]:
    return _EXTERNAL.findall(page)


def _notebook(path: Path, *sources: str) -> Path:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "ur4rec", "display_name": "Python (ur4rec)", "language": "python"}
    params = new_code_cell('profile = "full"\nrun_dir = None')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(new_code_cell(s) for s in sources)]
    nbformat.write(nb, path)
    return path


def test_external_refs_finds_every_kind_of_remote_load() -> None:
    """The check below must be able to fail: nbconvert's and plotly's default CDN tags are caught."""
    page = """<script src="https://cdnjs.cloudflare.com/ajax/libs/require.js/2.1.10/require.min.js"></script>
    <script src='//unpkg.com/@jupyter-widgets/html-manager'></script><img src=http://example.org/a.png>
    <link rel="stylesheet" href="https://fonts.example.org/f.css"><style>@import "//x.org/a.css";
    body{background:url(https://x.org/b.png)}</style><script type="module">await import("https://x.org/m.mjs")</script>
    <a href="https://plotly.com">a link</a><img src="data:image/png;base64,AAAA"><script src="local.js"></script>"""
    assert len(external_refs(page)) == 7, external_refs(page)


def test_exported_html_loads_nothing_from_the_network_and_still_draws(tmp_path: Path) -> None:
    """nbconvert's template (require.js, MathJax, mermaid) and plotly's per-figure MathJax tag would
    each load a CDN script: the export has none, and the charts still draw offline without require.js."""
    fig = go.Figure(go.Scatter(y=[1, 3, 2]))
    chart = pio.renderers["notebook"].to_mimebundle(fig.to_dict())
    assert external_refs(chart["text/html"]), "plotly no longer adds a CDN MathJax tag: simplify offline_html"
    nb = new_notebook()
    nb.cells = [new_markdown_cell("# A report\nNo math here."), new_code_cell("fig", outputs=[
        new_output("display_data", data={"text/html": f"<script>{get_plotlyjs()}</script>"}),  # as activate() does
        new_output("display_data", data={**chart, "application/vnd.plotly.v1+json": fig.to_plotly_json()}),
        new_output("display_data", data={"text/html": static_html(fig), "text/plain": "VBox()",
                                         WIDGET_VIEW: {"model_id": "m1", "version_major": 2, "version_minor": 0}}),
    ])]
    executed = tmp_path / "executed.ipynb"
    nbformat.write(nb, executed)
    export_html(executed, tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert external_refs(page) == []
    assert "<h1" in page and "No math here." in page
    assert "mathjax" in nbformat.read(executed, 4).cells[1].outputs[1]["data"]["text/html"].lower()  # input kept
    dom = rendered_dom(tmp_path / "report.html")
    assert len(re.findall(r'class="[^"]*\bjs-plotly-plot\b', dom)) == 2
    assert len(re.findall(r'<svg[^>]*class="main-svg"', dom)) >= 2


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
    saved = json.loads((index.parent / "index.json").read_text())
    assert saved["results"][0]["status"] == "failed"
    # numbers depend on torch's thread count: the index records it, and the page shows it
    assert saved["meta"]["torch_threads"] == torch.get_num_threads()
    assert f"torch {torch.get_num_threads()} threads" in page


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


def test_custom_parameters_file_reaches_every_notebook(tmp_path: Path) -> None:
    """`ur4rec reports -f my_params.yaml`: values for every notebook, and per-notebook values."""
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    for name in ("01_data_prep", "03_training"):
        nb = _notebook(nbdir / f"{name}.ipynb", "print(f'epochs={epochs} note={note} seed={profile_config(profile, "
                       "None, None, config_overrides).seed}')")
        book = nbformat.read(nb, 4)
        book.cells[0].source += "\nepochs = 1\nnote = 'default'\nconfig_overrides = None\n" \
                                "from ur4rec.profiles import profile_config"
        nbformat.write(book, nb)
    params = tmp_path / "my_params.yaml"
    params.write_text("epochs: 7\noverrides: [seed=7]\n03_training:\n  note: per-notebook\n")
    code = main(["reports", "--profile", "quick", "-f", str(params), "--notebook-dir", str(nbdir), "--set",
                 f"reports_dir={tmp_path / 'r'}", "--set", f"runs_dir={tmp_path / 'runs'}"])
    assert code == 0
    out = {n: nbformat.read(tmp_path / "r" / "quick" / f"{n}.ipynb", 4) for n in ("01_data_prep", "03_training")}
    printed = {n: "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", [])) for n, nb in out.items()}
    assert printed == {"01_data_prep": "epochs=7 note=default seed=7\n",
                       "03_training": "epochs=7 note=per-notebook seed=7\n"}


def test_unreadable_parameters_file_is_a_clear_error(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("- just\n- a list\n")
    assert main(["reports", "--profile", "quick", "-f", str(bad)]) == 2
    assert "must be a mapping" in capsys.readouterr().err


def _plotly_outputs(executed: Path) -> int:
    """How many plotly charts an executed notebook displayed (directly or in an explorer's static view)."""
    nb = nbformat.read(executed, 4)
    count = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "application/vnd.plotly.v1+json" in data:
                count += 1
            elif "application/vnd.jupyter.widget-view+json" in data:
                count += data.get("text/html", "").count("Plotly.newPlot(")
    return count


def test_quick_profile_reports_render_offline_in_chromium(tmp_path: Path) -> None:
    """Every notebook of the quick profile runs, and each HTML report draws all its charts with the
    network off: plotly.js embedded, explorers shown as static views (never an empty box)."""
    results, index = run_reports("quick", reports_dir=tmp_path / "reports", runs_dir=tmp_path / "runs")
    expected = [(p.stem, "ok") for p in sorted((REPO / "notebooks").glob("*.ipynb"))]
    assert [(r.name, r.status) for r in results] == expected, [(r.name, r.error) for r in results if r.status != "ok"]
    shots = tmp_path / "screenshots"
    shots.mkdir()
    for r in results:
        html = index.parent / r.html
        text = html.read_text()
        assert external_refs(text) == [], (r.name, external_refs(text))
        assert "VBox(children" not in text, f"{r.name}: an explorer exported as a dead widget"
        expected = _plotly_outputs(index.parent / r.notebook)
        dom = rendered_dom(html)
        drawn = len(re.findall(r'<svg[^>]*class="main-svg"', dom))
        plots = len(re.findall(r'class="[^"]*\bjs-plotly-plot\b', dom))
        assert plots == expected and drawn >= expected, (r.name, plots, drawn, expected)
        if r.name in ("02_model_walkthrough", "04_nan_diagnosis", "05_evaluation"):
            assert "ur4rec-static-explorer" in dom, f"{r.name}: the explorer has no static view"
        png = screenshot(html, shots / f"{r.name}.png")
        assert png.stat().st_size > 20_000, f"{r.name}: the screenshot looks blank"
    assert external_refs(index.read_text()) == []
    idx_dom = rendered_dom(index)
    assert all(r.name in idx_dom for r in results)
    assert {r["status"] for r in json.loads((index.parent / "index.json").read_text())["results"]} == {"ok"}
