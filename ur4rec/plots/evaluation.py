"""Evaluation charts: leaderboard with CIs, breakdowns, sampled vs full, and a per-user explorer."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import torch

from ur4rec.data.batching import pad_left
from ur4rec.plots.widgets import LiveExplorer


def leaderboard_bars(results: dict[str, Any], split: str = "test", metric: str = "ndcg@10",
                     protocol: str = "full") -> go.Figure:
    entries = results[protocol][split]
    names = sorted(entries, key=lambda n: -entries[n]["metrics"][metric])
    vals = [entries[n]["metrics"][metric] for n in names]
    lo = [entries[n]["ci95"][metric][0] for n in names]
    hi = [entries[n]["ci95"][metric][1] for n in names]
    fig = go.Figure(go.Bar(x=names, y=vals, error_y={"type": "data", "symmetric": False,
                                                     "array": [h - v for h, v in zip(hi, vals)],
                                                     "arrayminus": [v - low for v, low in zip(vals, lo)]}))
    fig.update_layout(title=f"{metric} on {split} ({protocol} ranking), 95% bootstrap CI over users",
                      yaxis_title=metric)
    return fig


def breakdown_chart(table: pd.DataFrame, breakdown: str, metric: str = "ndcg@10") -> go.Figure:
    part = table[table["breakdown"] == breakdown]
    fig = px.bar(part, x="group", y=metric, color="model", barmode="group", hover_data=["users"],
                 title=f"{metric} by {breakdown}")
    return fig


def sampled_vs_full(results: dict[str, Any], split: str = "test", metric: str = "ndcg@10") -> pd.DataFrame:
    """The same models under both protocols, with each protocol's rank order."""
    rows = []
    for name in results["full"][split]:
        rows.append({"model": name, f"full {metric}": results["full"][split][name]["metrics"][metric],
                     f"sampled {metric}": results["sampled"][split][name]["metrics"][metric]})
    df = pd.DataFrame(rows).set_index("model")
    df["full rank"] = df[f"full {metric}"].rank(ascending=False, method="min").astype(int)
    df["sampled rank"] = df[f"sampled {metric}"].rank(ascending=False, method="min").astype(int)
    df["order differs"] = df["full rank"] != df["sampled rank"]
    return df.sort_values("full rank")


def sampled_vs_full_chart(table: pd.DataFrame, metric: str = "ndcg@10") -> go.Figure:
    long = table[[f"full {metric}", f"sampled {metric}"]].reset_index().melt(id_vars="model", var_name="protocol")
    return px.bar(long, x="model", y="value", color="protocol", barmode="group",
                  title=f"{metric}: full ranking vs 100 sampled negatives (same models, same users)")


def user_top_k(ws: Any, scorers: dict[str, Any], user: int, split: str = "test", k: int = 10) -> pd.DataFrame:
    """Top-k items of each model for one user (known items excluded), the held-out item marked."""
    data = ws.data
    hist = data.history(split)[user]
    target = int(data.held_out(split)[user][0])
    seq = pad_left([hist], ws.cfg.max_seq_len)
    titles = dict(zip(data.items["item"], data.items["title"]))
    cols = {}
    for name, fn in scorers.items():
        with torch.no_grad():
            s = fn(torch.tensor([user]), seq)[0].clone()
        s[0] = float("-inf")
        s[torch.as_tensor(hist, dtype=torch.long)] = float("-inf")
        top = torch.topk(s, k).indices.tolist()
        cols[name] = [("✔ " if i == target else "") + str(titles.get(i, i)) for i in top]
    df = pd.DataFrame(cols, index=pd.RangeIndex(1, k + 1, name="rank"))
    df.attrs["target"] = titles.get(target, target)
    return df


def user_history(ws: Any, user: int, split: str = "test", last: int = 15) -> pd.DataFrame:
    data = ws.data
    titles = dict(zip(data.items["item"], data.items["title"]))
    hist = data.history(split)[user][-last:]
    return pd.DataFrame({"item": hist, "title": [titles.get(int(i), i) for i in hist]})


def user_explorer(ws: Any, scorers: dict[str, Any], split: str = "test", user: int = 0) -> LiveExplorer:
    """A user picker: history, preference text and each model's top-10 (hit marked); static view of
    ``user`` in HTML reports."""
    import ipywidgets as widgets
    from IPython.display import Markdown

    picker = widgets.BoundedIntText(value=user, min=0, max=ws.data.num_users - 1, description="user")

    def view() -> list[Any]:
        u = picker.value
        table = user_top_k(ws, scorers, u, split)
        return [Markdown(f"**User {u}** — held-out {split} item: **{table.attrs['target']}**\n\n"
                         f"Preference text ({ws.texts.source}): {ws.texts.user_texts[u]}"),
                user_history(ws, u, split), table]

    return LiveExplorer([picker], view, f"user {user}, {split} split")


def fusion_sweep_chart(table: pd.DataFrame) -> go.Figure:
    """NDCG@10 against the retriever's fusion weight (0 = SASRec alone), per split."""
    fig = go.Figure()
    for col in [c for c in table.columns if c.endswith("ndcg@10")]:
        fig.add_trace(go.Scatter(x=table.index, y=table[col], mode="lines+markers", name=col))
    fig.update_layout(title="Fused NDCG@10 vs the text branch's weight (0 = SASRec's ranking)",
                      xaxis_title="retriever weight", yaxis_title="NDCG@10")
    return fig


def cold_start_chart(curve: pd.DataFrame) -> go.Figure:
    """Test NDCG@10 against the number of history items each user is scored from, one line per row
    (``ur4rec.evaluation.ablations.text_ablation_curve``; empty figure if there is no curve yet)."""
    fig = go.Figure()
    for row, values in curve.iterrows():
        fig.add_trace(go.Scatter(x=[str(k) for k in values.index], y=values.values, mode="lines+markers",
                                 name=str(row)))
    fig.update_layout(title="Cold start: test NDCG@10 from only the last k history items",
                      xaxis_title="history items shown (k)", yaxis_title="NDCG@10", xaxis_type="category")
    return fig
