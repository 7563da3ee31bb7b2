"""Training curves (loss components, learning rates, validation NDCG@10 with stage boundaries)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def read_history(run_dir: str | Path) -> pd.DataFrame:
    path = Path(run_dir) / "history.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return pd.DataFrame(rows)


def training_curves(history: pd.DataFrame | list[dict[str, Any]]) -> go.Figure:
    h = pd.DataFrame(history)
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=("training losses", "learning rates", "validation NDCG@10 (full ranking)"))
    if h.empty:
        return fig
    h = h.reset_index(drop=True)
    h["x"] = range(1, len(h) + 1)
    for col in [c for c in h.columns if c.startswith("loss_")]:
        fig.add_trace(go.Scatter(x=h["x"], y=h[col], mode="lines+markers", name=col.removeprefix("loss_")), 1, 1)
    for col in ("lr_sasrec", "lr_retriever"):
        if col in h:
            fig.add_trace(go.Scatter(x=h["x"], y=h[col], mode="lines", name=col), 2, 1)
    metric = next((c for c in h.columns if c.startswith("valid_")), None)
    if metric:
        fig.add_trace(go.Scatter(x=h["x"], y=h[metric], mode="lines+markers", name=metric), 3, 1)
    for _, first in h.groupby("stage", sort=False).head(1).iterrows():
        fig.add_vline(x=first["x"] - 0.5, line_dash="dot", line_color="grey")
        fig.add_annotation(x=first["x"] - 0.5, y=1.0, yref="paper", text=first["stage"], showarrow=False,
                           xanchor="left", font={"size": 10})
    fig.update_layout(height=720, xaxis3_title="epoch (all stages)", legend={"orientation": "h"})
    return fig


def stage_timeline(history: pd.DataFrame | list[dict[str, Any]]) -> go.Figure:
    h = pd.DataFrame(history)
    if h.empty:
        return go.Figure()
    per = h.groupby("stage", sort=False)["seconds"].sum().reset_index()
    per["start"] = per["seconds"].cumsum() - per["seconds"]
    fig = go.Figure(go.Bar(y=per["stage"], x=per["seconds"], base=per["start"], orientation="h",
                           text=[f"{s:.1f} s" for s in per["seconds"]]))
    fig.update_layout(title="Stage timeline (wall seconds)", xaxis_title="seconds", height=300,
                      yaxis={"autorange": "reversed"})
    return fig


def figure_bundle(fig: go.Figure) -> dict[str, Any]:
    """The MIME bundle the default renderers would display for ``fig``.

    A plotly figure displays itself through ``_ipython_display_``, which ignores ``display_id``, so
    ``DisplayHandle.update(fig)`` would append a new chart per update (37 of them in a headless
    training report). Displaying the bundle itself keeps one output that updates in place."""
    import plotly.io as pio

    # The notebook renderer embeds plotly.js once, on its first use; plotly does that only on its
    # own display path, so trigger it here (private API, guarded) before the first bundle.
    if hasattr(pio.renderers, "_activate_pending_renderers"):
        pio.renderers._activate_pending_renderers()
    bundle: dict[str, Any] = {}
    for name in str(pio.renderers.default).split("+"):
        bundle |= pio.renderers[name].to_mimebundle(fig.to_dict())
    return bundle


class LiveTrainingPlot:
    """An ``on_epoch`` callback that redraws the curves in place while training runs."""

    def __init__(self) -> None:
        from IPython.display import display

        self.records: list[dict[str, Any]] = []
        self.handle = display(figure_bundle(training_curves([])), raw=True, display_id=True)

    def __call__(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.handle is not None:
            self.handle.update(figure_bundle(training_curves(self.records)), raw=True)
