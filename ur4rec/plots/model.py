"""Model walkthrough: parameter table, shape trace, attention heatmap, routing, score scales."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import torch
from torch import nn

from ur4rec.data.batching import pad_left
from ur4rec.models.moe_retriever import EXPERTS
from ur4rec.plots.widgets import LiveExplorer


def parameter_table(model: nn.Module, depth: int = 2) -> pd.DataFrame:
    """Every module down to ``depth`` levels with its parameter count (trainable and frozen)."""
    rows = []
    for name, module in model.named_modules():
        if not name or name.count(".") >= depth:
            continue
        params = list(module.parameters())
        rows.append({"module": name, "type": type(module).__name__,
                     "parameters": sum(p.numel() for p in params),
                     "buffers (frozen text, memory)": sum(b.numel() for b in module.buffers())})
    total = sum(p.numel() for p in model.parameters())
    rows.append({"module": "(total)", "type": type(model).__name__, "parameters": total,
                 "buffers (frozen text, memory)": sum(b.numel() for b in model.buffers())})
    return pd.DataFrame(rows).set_index("module")


def trace_shapes(model: nn.Module, *inputs: torch.Tensor, depth: int = 2) -> pd.DataFrame:
    """Run one batch and record, in execution order, each module's output shape."""
    rows: list[dict[str, Any]] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        name = names[module]
        if name.count(".") >= depth:
            return
        out = output[0] if isinstance(output, tuple) else output
        if isinstance(out, dict):
            out = out.get("scores")
        if isinstance(out, torch.Tensor):
            rows.append({"module": name or "(model)", "type": type(module).__name__, "output shape": list(out.shape)})

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return pd.DataFrame(rows)


def attention_heatmap(model: nn.Module, ws: Any, user: int, split: str = "valid", block: int = -1) -> go.Figure:
    """Head-averaged attention of one SASRec block over a user's most recent items."""
    hist = ws.data.history(split)[user]
    seq = pad_left([hist], ws.cfg.max_seq_len)
    n = min(len(hist), 20)
    maps = model.sasrec.attention_maps(seq)[0, block].mean(0)[-n:, -n:]
    titles = dict(zip(ws.data.items["item"], ws.data.items["title"]))
    labels = [f"{i}. {str(titles.get(int(it), it))[:22]}" for i, it in enumerate(hist[-n:])]
    fig = px.imshow(maps.cpu().numpy(), x=labels, y=labels, color_continuous_scale="Blues", aspect="auto",
                    labels={"x": "attends to (key)", "y": "position (query)", "color": "attention"})
    fig.update_layout(title=f"SASRec attention (block {block % len(model.sasrec.blocks)}, heads averaged), "
                            f"user {user}'s last {n} items", height=560)
    return fig


def routing_chart(out: dict[str, torch.Tensor], cands: torch.Tensor, ws: Any, row: int = 0) -> go.Figure:
    """The router's expert weights for each candidate of one user (stacked to 1)."""
    titles = dict(zip(ws.data.items["item"], ws.data.items["title"]))
    w = out["routing_weights"][row].detach()
    names = [str(titles.get(int(i), i))[:28] for i in cands[row].tolist()]
    fig = go.Figure([go.Bar(name=e, x=names, y=w[:, k].cpu().numpy()) for k, e in enumerate(EXPERTS)])
    fig.update_layout(barmode="stack", title="Routing weights per candidate", yaxis_title="weight")
    return fig


def score_distributions(out: dict[str, torch.Tensor], spread: torch.Tensor) -> go.Figure:
    """Raw branch scores, the same divided by each branch's spread, and the fused score."""
    series = {
        "SASRec (raw)": out["sasrec_scores"], "retriever (raw)": out["retriever_scores"],
        "SASRec / spread": out["sasrec_scores"] / spread[0], "retriever / spread": out["retriever_scores"] / spread[1],
        "fused": out["scores"],
    }
    frames = [pd.DataFrame({"score": v.detach().flatten().cpu().numpy(), "series": k}) for k, v in series.items()]
    fig = px.histogram(pd.concat(frames), x="score", color="series", facet_row="series", nbins=60, height=800)
    fig.update_yaxes(matches=None)
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    fig.update_layout(title="Score scales: raw branches vs aligned (divided by running within-user spread)",
                      showlegend=False)
    return fig


def user_candidates(ws: Any, user: int, split: str = "valid", n: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """A user's history tensor and n candidates: the held-out item plus SASRec's top picks."""
    hist = ws.data.history(split)[user]
    seq = pad_left([hist], ws.cfg.max_seq_len)
    with torch.no_grad():
        s = ws.model.sasrec.full_sort_predict(seq)[0].cpu()
    s[0] = float("-inf")
    s[torch.as_tensor(hist, dtype=torch.long)] = float("-inf")
    target = int(ws.data.held_out(split)[user][0])
    top = [i for i in torch.topk(s, n).indices.tolist() if i != target][: n - 1]
    return seq, torch.tensor([[target, *top]])


def model_explorer(ws: Any, split: str = "valid", user: int = 0) -> LiveExplorer:
    """A user picker that redraws the attention heatmap, routing and score scales (static view of
    ``user`` in HTML reports)."""
    import ipywidgets as widgets

    picker = widgets.BoundedIntText(value=user, min=0, max=ws.data.num_users - 1, description="user")

    def view() -> list[Any]:
        u = picker.value
        seq, cands = user_candidates(ws, u, split)
        with torch.no_grad():
            res = ws.model(torch.tensor([u]), seq, cands)
        return [attention_heatmap(ws.model, ws, u, split), routing_chart(res, cands, ws)]

    return LiveExplorer([picker], view, f"user {user}, {split} split")
