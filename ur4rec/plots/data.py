"""Tables and charts of a prepared dataset (the data-preparation notebook's content)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from ur4rec.data.dataset import PreparedData


def dataset_summary(data: PreparedData) -> pd.DataFrame:
    """One row per statistic: sizes, density, sequence lengths, split sizes, source."""
    inter = data.interactions
    lengths = inter.groupby("user").size()
    meta = data.meta
    rows = [
        ("users", data.num_users),
        ("items", data.num_items),
        ("interactions", len(inter)),
        ("density", f"{len(inter) / (data.num_users * data.num_items):.4%}"),
        ("sequence length: min / median / max", f"{lengths.min()} / {int(lengths.median())} / {lengths.max()}"),
        ("train interactions", int((inter["split"] == "train").sum())),
        ("validation held-out items", int((inter["split"] == "valid").sum())),
        ("test held-out items", int((inter["split"] == "test").sum())),
        ("split", meta["params"]["split"]),
        ("min_rating", "none (all ratings)" if meta["params"]["min_rating"] is None else meta["params"]["min_rating"]),
        ("source", f"{meta['source']['origin']} ({meta['source']['format']} files)"),
        ("fingerprint", data.fingerprint[:12]),
    ]
    return pd.DataFrame([(k, str(v)) for k, v in rows], columns=["statistic", "value"]).set_index("statistic")


def split_sanity_checks(data: PreparedData) -> pd.DataFrame:
    """Checks that the split is what it claims: held-out items are each user's latest, no overlap."""
    inter = data.interactions
    rank = {"train": 0, "valid": 1, "test": 2}
    order = inter.sort_values(["user", "position"])
    split_rank = order["split"].map(rank)
    # Within each user, split rank must never decrease along the time-ordered positions.
    monotone = (split_rank.groupby(order["user"]).diff().fillna(0) >= 0).all()
    ts_ok = True
    for a, b in (("train", "valid"), ("valid", "test")):
        last_a = inter[inter["split"] == a].groupby("user")["timestamp"].max()
        first_b = inter[inter["split"] == b].groupby("user")["timestamp"].min()
        ts_ok &= bool((last_a.reindex(first_b.index) <= first_b).all())
    pairs = inter.groupby("split")[["user", "item"]].apply(lambda d: set(zip(d["user"], d["item"])))
    overlap = len(pairs.get("train", set()) & (pairs.get("valid", set()) | pairs.get("test", set())))
    every_user = inter.groupby("user")["split"].agg(set).apply(lambda s: {"train", "valid", "test"} <= s).all()
    rows = [
        ("held-out items are each user's latest positions", bool(monotone), "split never goes back in time order"),
        ("no held-out item is older than a training item", ts_ok, "by timestamp, per user"),
        ("no (user, item) pair in both train and held-out", overlap == 0, f"{overlap} overlapping pairs"),
        ("every user has train, validation and test items", bool(every_user), f"{data.num_users} users"),
    ]
    return pd.DataFrame(rows, columns=["check", "passed", "detail"])


def sequence_length_histogram(data: PreparedData) -> go.Figure:
    lengths = data.interactions.groupby("user").size().rename("interactions per user").reset_index()
    fig = px.histogram(lengths, x="interactions per user", nbins=60, title="Sequence length per user")
    fig.update_layout(yaxis_title="users", bargap=0.05)
    return fig


def item_popularity_long_tail(data: PreparedData) -> go.Figure:
    counts = data.interactions.groupby("item").size().sort_values(ascending=False).to_numpy()
    ranks = np.arange(1, len(counts) + 1)
    fig = px.scatter(x=ranks, y=counts, log_x=True, log_y=True, title="Item popularity long tail (log-log)")
    fig.update_layout(xaxis_title="item rank by popularity", yaxis_title="interactions")
    return fig


def rating_distribution(data: PreparedData) -> go.Figure:
    counts = data.interactions["rating"].value_counts().sort_index().reset_index()
    counts.columns = ["rating", "interactions"]
    return px.bar(counts, x="rating", y="interactions", title="Rating distribution")


def genre_distribution(data: PreparedData) -> go.Figure:
    genres = data.item_genres()
    per_item = pd.Series({i: g for i, g in enumerate(genres) if g}).explode()
    inter_counts = data.interactions.groupby("item").size()
    table = pd.DataFrame({"item": per_item.index, "genre": per_item.to_numpy()})
    table["interactions"] = table["item"].map(inter_counts).fillna(0)
    agg = table.groupby("genre").agg(items=("item", "nunique"), interactions=("interactions", "sum"))
    agg = agg.sort_values("interactions", ascending=False).reset_index()
    fig = px.bar(agg, x="genre", y="interactions", hover_data=["items"], title="Interactions by genre")
    return fig


def interactions_over_time(data: PreparedData) -> go.Figure:
    inter = data.interactions.assign(week=pd.to_datetime(data.interactions["timestamp"], unit="s").dt.to_period("W"))
    weekly = inter.groupby(["week", "split"]).size().rename("interactions").reset_index()
    weekly["week"] = weekly["week"].dt.start_time
    fig = px.bar(weekly, x="week", y="interactions", color="split", title="Interactions per week, by split")
    return fig
