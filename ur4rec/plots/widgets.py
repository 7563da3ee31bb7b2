"""Interactive explorers that stay readable in a shared HTML report.

A live ipywidget needs a kernel; papermill saves no widget state, and nbconvert then drops the
widget view from the HTML (``WidgetsDataTypeFilter``) and shows the next MIME type it finds. So an
explorer carries a second MIME type, ``text/html``: a static rendering of its initial selection.
JupyterLab ranks the widget view above HTML and shows the live explorer; the report shows the
static view with a note saying how to get the live one. Never an empty box, no CDN.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio

View = Callable[[], Iterable[Any]]  # renders the current selection as displayable objects


def static_html(obj: Any) -> str:
    """One displayable object as an HTML fragment (figures use the offline ``notebook`` renderer's
    markup, which relies on the plotly.js that the report embeds once)."""
    if isinstance(obj, go.Figure):
        return pio.renderers["notebook"].to_mimebundle(obj.to_dict())["text/html"]
    if hasattr(obj, "to_html"):  # pandas DataFrame / Styler
        return obj.to_html()
    if hasattr(obj, "_repr_html_") and obj._repr_html_() is not None:
        return obj._repr_html_()
    if hasattr(obj, "_repr_markdown_"):  # IPython.display.Markdown: keep its text, escaped
        return f"<p>{html.escape(obj._repr_markdown_() or '')}</p>"
    return f"<pre>{html.escape(str(obj))}</pre>"


class LiveExplorer:
    """Controls + an output area that ``view`` redraws on every change; static HTML as fallback.

    ``controls`` are ipywidgets whose ``value`` changes trigger a redraw; ``view`` returns the
    objects to show for their current values. ``caption`` says what the static view shows."""

    def __init__(self, controls: list[Any], view: View, caption: str) -> None:
        import ipywidgets as widgets

        self.controls, self.view, self.caption = controls, view, caption
        self.output = widgets.Output()
        self.widget = widgets.VBox([*controls, self.output])
        for control in controls:
            control.observe(self.redraw, names="value")
        self.redraw()

    def redraw(self, change: Any = None) -> None:
        """Replace the output area's contents with the current view.

        The outputs are set as widget state (``append_display_data``), not captured with
        ``with output:``: capture routes the kernel's display messages through the front end's
        output-widget hooks, and headless nbclient runs stalled there under load."""
        from IPython import get_ipython

        if get_ipython() is None:  # no kernel, nothing to draw into (the static view still works)
            return
        self.output.outputs = ()
        for obj in self.view():
            self.output.append_display_data(obj)

    def static_html(self) -> str:
        note = (f"<p><em>Static view ({html.escape(self.caption)}). Open this notebook in JupyterLab "
                f"(<code>make lab</code>) for the interactive explorer.</em></p>")
        return "<div class='ur4rec-static-explorer'>" + note + "".join(static_html(o) for o in self.view()) + "</div>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle = self.widget._repr_mimebundle_(include=include, exclude=exclude)
        data = dict(bundle[0] if isinstance(bundle, tuple) else bundle)
        data["text/html"] = self.static_html()
        return data
