"""Export an executed notebook to one HTML file that makes no network request when opened.

nbconvert's ``lab`` template loads require.js and MathJax from cdnjs in every page and imports
mermaid from cdnjs when a page has a diagram; plotly's offline ``notebook`` renderer still adds a
MathJax ``<script src>`` from cdnjs to every figure. None of that is needed here:

* require.js only serves the widget manager and plotly's AMD path. The widget state is left out
  (explorers show their static view, see ``ur4rec.plots.widgets``) and plotly.js is embedded
  inline, where it defines the global ``Plotly`` when no ``require`` exists.
* MathJax only typesets LaTeX (``$...$`` in Markdown, LaTeX in plotly labels). No notebook or
  chart here writes any, so it is dropped rather than bundled: bundling would add about 2 MB to
  every report for nothing. Math written later shows as its TeX source, still readable.
* Mermaid diagrams (none here) would show as their source text.

The template below is nbconvert's own ``lab`` template with those blocks emptied; the exporter
settings are nbconvert's; only plotly's per-figure MathJax tag is removed from the outputs.
"""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
import nbformat
from nbconvert import HTMLExporter

from ur4rec.io import atomic_write_text

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
TEMPLATE_FILE = "ur4rec_offline.html.j2"
#: nbconvert's ``lab`` page with the CDN script blocks emptied (block names from lab/index.html.j2).
OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""
#: The MathJax loader that plotly's ``notebook`` renderer puts before every figure (not configurable there).
_REMOTE_MATHJAX = re.compile(r"""<script[^>]*\bsrc=["'](?:https?:)?//[^"']*mathjax[^"']*["'][^>]*>\s*</script>""",
                             re.IGNORECASE)


def offline_exporter() -> HTMLExporter:
    """nbconvert's HTML exporter on the offline ``lab`` template."""
    return HTMLExporter(template_name="lab", template_file=TEMPLATE_FILE,
                        extra_loaders=[jinja2.DictLoader({TEMPLATE_FILE: OFFLINE_TEMPLATE})])


def offline_outputs(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Prepare a notebook's outputs for the offline page, in place; returns ``nb``.

    The saved widget state is removed: rendering it needs the widget manager's JavaScript from a
    CDN; without it nbconvert shows each explorer's static ``text/html`` view. Widgets with no
    static view (tqdm progress bars) would show their initial text ("0%|"), which misleads: they
    are left out; the run's progress is in its history and charts. Plotly's remote MathJax tag is
    dropped from HTML outputs (see the module docstring)."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs = [o for o in cell.get("outputs", []) if not (
            WIDGET_VIEW in o.get("data", {}) and "text/html" not in o.get("data", {}))]
        for out in cell.outputs:
            data = out.get("data", {})
            if isinstance(data.get("text/html"), str):
                data["text/html"] = _REMOTE_MATHJAX.sub("", data["text/html"])
    return nb


def export_html(executed: Path, html_path: Path) -> None:
    """Convert an executed notebook to one standalone HTML file (plotly.js embedded, no CDN).

    The executed notebook itself is not changed: it keeps its widget state for JupyterLab."""
    nb = offline_outputs(nbformat.read(executed, as_version=4))
    body, _ = offline_exporter().from_notebook_node(nb)
    atomic_write_text(html_path, body)
