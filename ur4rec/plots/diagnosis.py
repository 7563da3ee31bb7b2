"""Charts and widgets for the NaN diagnosis notebook."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import torch

from ur4rec.diagnostics.reproductions import NaiveSASRec, attention_nan_matrix, padded_batch
from ur4rec.models.sasrec import SASRec
from ur4rec.plots.widgets import LiveExplorer


def nan_heatmap(matrix: dict[str, list[bool]], title: str) -> go.Figure:
    """Rows: mode; columns: history length; cell = last-position scores are NaN."""
    modes = list(matrix)
    z = [[int(v) for v in matrix[m]] for m in modes]
    lengths = [str(i + 1) for i in range(len(z[0]))]
    fig = px.imshow(z, x=lengths, y=modes, color_continuous_scale=[[0, "#e6f4ea"], [1, "#cf222e"]], zmin=0, zmax=1,
                    labels={"x": "history length (max_seq_len = full, no padding)", "y": "mode", "color": "NaN"},
                    aspect="auto")
    fig.update_layout(title=title, coloraxis_showscale=False, height=320)
    return fig


def bias_chart(bias: dict[str, dict[str, Any]], metric: str = "NDCG@10") -> go.Figure:
    names = list(bias)
    fig = go.Figure(go.Bar(x=names, y=[bias[n]["mean"] or 0 for n in names],
                           text=[f"{bias[n]['users']} users" for n in names], textposition="outside"))
    fig.update_layout(title=f"The same model's validation {metric}, depending on which users are kept",
                      yaxis_title=metric)
    return fig


def sweep_heatmap(table: pd.DataFrame, row: str, col: str, title: str) -> go.Figure:
    pivot = table.assign(label=table["train"].map({True: "train", False: "eval"}) + "/" + table["mode"])
    pivot = pivot.pivot_table(index="label", columns=col, values="nan", aggfunc="sum")
    fig = px.imshow(pivot, color_continuous_scale="Reds", labels={"color": "NaN scores", "x": col, "y": row},
                    aspect="auto", text_auto=True)
    fig.update_layout(title=title, height=340)
    return fig


def nan_toggle_widget(max_seq_len: int = 10) -> LiveExplorer:
    """Pick a mask strategy and see which users (by history length) get NaN in each mode (static
    view: the naive strategy on left-padded histories)."""
    import ipywidgets as widgets

    strategy = widgets.ToggleButtons(options=["naive nn.MultiheadAttention + key_padding_mask",
                                              "workbench SASRec (diagonal always allowed)"], description="mask")
    padding = widgets.Checkbox(value=True, description="left-padded (short histories)")

    def view() -> list[Any]:
        torch.manual_seed(0)
        model = NaiveSASRec(max_seq_len=max_seq_len) if strategy.value.startswith("naive") else \
            SASRec(50, 32, 2, 2, 0.0, max_seq_len)
        seq = padded_batch(max_seq_len)
        if not padding.value:
            seq = torch.arange(1, max_seq_len + 1).repeat(max_seq_len, 1)
        return [nan_heatmap(attention_nan_matrix(model, seq), strategy.value)]

    return LiveExplorer([strategy, padding], view, "naive mask, left-padded histories")
