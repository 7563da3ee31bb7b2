"""Tables and charts of preference texts and their embeddings (the 01b notebook's content)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

import ur4rec.plots  # noqa: F401  (sets the offline renderer)
from ur4rec.data.dataset import PreparedData
from ur4rec.texts.pipeline import ORIGIN_LABEL, TextEmbeddings
from ur4rec.texts.prompts import TrainingView

WELL_KNOWN = ["Star Wars", "Toy Story", "Fargo", "Godfather, The", "Pulp Fiction", "Silence of the Lambs, The"]


def source_note(emb: TextEmbeddings) -> str:
    """One line saying what kind of texts these are (template texts are not LLM output)."""
    label = ORIGIN_LABEL.get(emb.origin, emb.origin)
    return (f"Text source: {emb.source} ({emb.model}) — {label}; encoder {emb.encoder}, {emb.dim}-d; "
            f"{emb.coverage.get('users', 0)} user and {emb.coverage.get('items', 0)} item texts from the source.")


def user_texts_with_history(data: PreparedData, emb: TextEmbeddings, users: Sequence[int] = (0, 1, 2),
                            n_history: int = 6) -> pd.DataFrame:
    """A few users: their latest training films (with ratings) beside their text."""
    view = TrainingView(data)
    rows = []
    for u in users:
        hist = view.user_rows(u)
        recent = zip(hist["title"].tail(n_history), hist["rating"].tail(n_history))
        latest = "; ".join(f"{t} ({r:g})" for t, r in recent)
        rows.append({"user": int(u), "training films": len(hist), f"latest {n_history} (rating)": latest,
                     "text origin": emb.user_origins[u] if emb.user_origins else emb.origin,
                     "text": emb.user_texts[u]})
    return pd.DataFrame(rows).set_index("user")


def text_length_histogram(emb: TextEmbeddings) -> go.Figure:
    """Words per text, users vs items."""
    frame = pd.concat([
        pd.DataFrame({"words": [len(t.split()) for t in emb.user_texts], "kind": "user"}),
        pd.DataFrame({"words": [len(t.split()) for t in emb.item_texts[1:]], "kind": "item"}),
    ])
    fig = px.histogram(frame, x="words", color="kind", barmode="overlay", opacity=0.7, nbins=60,
                       title=f"Text length ({emb.source} texts)")
    fig.update_layout(xaxis_title="words per text", yaxis_title="texts")
    return fig


def pca_2d(x: np.ndarray) -> np.ndarray:
    """First two principal components (numpy SVD of the centred matrix)."""
    centred = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def item_embedding_projection(data: PreparedData, emb: TextEmbeddings) -> go.Figure:
    """Item embeddings projected to 2-D (PCA), coloured by each film's first genre."""
    x = emb.item[1:].detach().cpu().numpy()
    xy = pca_2d(x)
    items = data.items.set_index("item").reindex(range(1, data.num_items + 1))
    main = [str(g).split("|")[0] if isinstance(g, str) and g else "unknown" for g in items["genres"]]
    frame = pd.DataFrame({"pc1": xy[:, 0], "pc2": xy[:, 1], "main genre": main,
                          "title": items["title"].astype(str).to_numpy()})
    fig = px.scatter(frame, x="pc1", y="pc2", color="main genre", hover_name="title", opacity=0.75,
                     title="Item text embeddings, first two principal components")
    fig.update_traces(marker={"size": 5})
    return fig


def find_item(data: PreparedData, title: str) -> int | None:
    titles = data.items["title"].astype(str)
    exact = data.items[titles.str.lower() == title.lower()]
    if len(exact):
        return int(exact["item"].iloc[0])
    part = data.items[titles.str.contains(title, case=False, regex=False)]
    return int(part["item"].iloc[0]) if len(part) else None


def nearest_neighbours(data: PreparedData, emb: TextEmbeddings, titles: Sequence[str] = WELL_KNOWN,
                       k: int = 5) -> pd.DataFrame:
    """The k most similar films (cosine of text embeddings) to each of a few well-known ones."""
    x = emb.item.detach().cpu().numpy()
    names = data.items.set_index("item")["title"].astype(str)
    rows = []
    for title in titles:
        i = find_item(data, title)
        if i is None:
            continue
        sims = x @ x[i]
        sims[0] = -np.inf
        sims[i] = -np.inf
        for rank, j in enumerate(np.argsort(-sims, kind="stable")[:k], start=1):
            rows.append({"film": names[i], "rank": rank, "neighbour": names[int(j)],
                         "cosine": round(float(sims[j]), 3)})
    return pd.DataFrame(rows)


def coverage_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Per cached source: texts it wrote itself vs template fallbacks (from ``coverage_by_source``)."""
    if not rows:
        return pd.DataFrame(columns=["source", "model", "origin"])
    frame = pd.DataFrame(rows)
    return frame[["source", "model", "origin", "users_from_source", "users_fallback", "users_total",
                  "items_from_source", "items_fallback", "items_total"]]


def coverage_figure(rows: list[dict[str, Any]]) -> go.Figure:
    """Share of users and items each source covers itself."""
    records = []
    for r in rows:
        name = f"{r['source']} ({r['model']})" if r["model"] != r["source"] else r["source"]
        for kind in ("user", "item"):
            total = max(1, r[f"{kind}s_total"])
            records.append({"source": name, "kind": kind, "coverage": r[f"{kind}s_from_source"] / total})
    frame = pd.DataFrame(records, columns=["source", "kind", "coverage"])
    fig = px.bar(frame, x="source", y="coverage", color="kind", barmode="group", range_y=[0, 1],
                 title="Coverage per text source (texts from the source itself, not template fallback)")
    fig.update_layout(yaxis_tickformat=".0%")
    return fig
