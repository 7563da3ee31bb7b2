"""Explorers: a live widget in JupyterLab, a static view (never an empty box) in the HTML report."""

from __future__ import annotations

import nbformat
from nbformat.v4 import new_code_cell, new_notebook, new_output

from ur4rec.plots.diagnosis import nan_toggle_widget
from ur4rec.reports.runner import export_html

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def test_explorer_carries_a_widget_view_and_a_static_html_view() -> None:
    bundle = nan_toggle_widget(5)._repr_mimebundle_()
    assert WIDGET_VIEW in bundle and "model_id" in bundle[WIDGET_VIEW]
    html = bundle["text/html"]
    assert "Static view" in html and "make lab" in html
    assert "Plotly.newPlot" in html  # the heatmap of the initial selection, drawn by the page's plotly.js


def test_exported_report_shows_the_static_view_even_with_saved_widget_state(tmp_path) -> None:
    explorer = nan_toggle_widget(5)
    bundle = explorer._repr_mimebundle_()
    nb = new_notebook()  # as papermill leaves it: the widget state saved in the metadata
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {
        "state": {bundle[WIDGET_VIEW]["model_id"]: {"model_name": "VBoxModel", "state": {}}},
        "version_major": 2, "version_minor": 0}}
    progress_bar = {WIDGET_VIEW: {"model_id": "tqdm-bar-model", "version_major": 2, "version_minor": 0},
                    "text/plain": "stage e0:   0%|          | 0/11"}
    nb.cells = [new_code_cell("explorer", outputs=[new_output("display_data", data=bundle),
                                                   new_output("display_data", data=progress_bar)])]
    executed = tmp_path / "executed.ipynb"
    nbformat.write(nb, executed)
    export_html(executed, tmp_path / "report.html")
    body = (tmp_path / "report.html").read_text()
    assert "Static view" in body and "Plotly.newPlot" in body
    assert bundle[WIDGET_VIEW]["model_id"] not in body  # no dead widget view
    assert "unpkg.com" not in body and "html-manager" not in body  # no widget manager from a CDN
    assert "0/11" not in body  # a widget with no static view is left out, not shown in its initial state
    assert "widgets" in nbformat.read(executed, 4).metadata  # the executed notebook keeps its state
