"""Plotly figures for the notebooks and reports.

Reports must render offline, so figures are shown with both the plotly MIME bundle (JupyterLab's
native renderer) and the ``notebook`` HTML renderer, which embeds plotly.js inline: nbconvert's
HTML keeps the latter, with no CDN. ``PLOTLY_RENDERER`` in the environment takes precedence.
"""

from __future__ import annotations

import os

import plotly.io as pio

OFFLINE_RENDERER = "plotly_mimetype+notebook"


def use_offline_renderer() -> None:
    """Make figures render in JupyterLab and in exported HTML without network access."""
    pio.renderers.default = os.environ.get("PLOTLY_RENDERER", OFFLINE_RENDERER)


use_offline_renderer()
