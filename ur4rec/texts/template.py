"""Template texts: offline, deterministic, built from the prepared data alone.

These are *template* texts, not LLM output: every record says ``origin: "template"``. A user's text
uses only that user's training prefix; an item's text uses its metadata and training-split statistics.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pandas as pd

from ur4rec.data.dataset import PreparedData
from ur4rec.io import sha256_json
from ur4rec.texts.base import Kind, OnResult, PreferenceTextSource
from ur4rec.texts.prompts import TrainingView

TEMPLATE_VERSION = "ur4rec-template-v2"
TOP_GENRES = 3
TOP_DECADES = 2
TOP_TITLES = 3


def _title(title: str, year) -> str:
    return f"{title} ({int(year)})" if year is not None and not pd.isna(year) else str(title)


def _known(value) -> bool:
    return value is not None and not pd.isna(value) and str(value).strip() != ""


def demographics_text(view: TrainingView, user: int) -> str:
    """"Age 24, male, technician." from the users table (what is missing is left out; "" if nothing).

    Where the dataset gives an age range instead of an age (ML-1M's ``age_group``), the range is
    stated: "Age 25-34, female, writer.", "Age under 18, ..."."""
    if int(user) not in view.users.index:
        return ""
    row = view.users.loc[int(user)]
    parts = []
    group = row.get("age_group")
    if _known(group):
        label = str(group).strip()
        parts.append(f"Age {label[:1].lower()}{label[1:]}")  # "Under 18" reads "Age under 18"
    elif "age" in row and not pd.isna(row["age"]):
        parts.append(f"Age {int(row['age'])}")
    gender = {"M": "male", "F": "female"}.get(str(row.get("gender", "")).strip().upper())
    if gender:
        parts.append(gender)
    occupation = row.get("occupation")
    if occupation is not None and not pd.isna(occupation) and str(occupation).strip().lower() not in ("", "none"):
        parts.append(str(occupation).strip())
    return (", ".join(parts) + ".") if parts else ""


def user_text(view: TrainingView, user: int, demographics: bool = False) -> str:
    """The user's template text from their training prefix; ``demographics``: their age, gender and
    occupation too (from the users table: static, nothing held out)."""
    rows = view.user_rows(user)
    about = demographics_text(view, user) if demographics else ""
    if len(rows) == 0:
        return " ".join(p for p in ("Viewer profile (template): no training history.", about) if p)
    genres = Counter(g for gs in rows["genres"] for g in str(gs).split("|") if g)
    top_g = sorted(genres.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_GENRES]
    decades = Counter(int(y) // 10 * 10 for y in rows["year"] if y is not None and not pd.isna(y))
    top_d = sorted(decades.items(), key=lambda kv: (-kv[1], -kv[0]))[:TOP_DECADES]
    # best rated first; among equal ratings the most recent first
    best = rows.sort_values(["rating", "position"], ascending=[False, False], kind="stable").head(TOP_TITLES)
    noun = "items" if view.data.meta.get("params", {}).get("dataset") == "custom" else "films"
    parts = [f"Viewer profile (template), {len(rows)} {noun}."] + ([about] if about else [])
    if top_g:
        parts.append("Top genres: " + ", ".join(f"{g} {n}" for g, n in top_g) + ".")
    if top_d:
        parts.append("Decades: " + ", ".join(f"{d}s {n}" for d, n in top_d) + ".")
    titles = [_title(t, y) for t, y in zip(best["title"], best["year"]) if _known(t)]  # a log may lack titles
    if titles:
        parts.append("Best rated: " + "; ".join(titles) + ".")
    return " ".join(parts)


def _generic_item_text(view: TrainingView, meta: pd.Series, n: int, mean_rating: float) -> str:
    """A generic log's item: only what is known (title, year, genres, training counts, free text)."""
    title = str(meta["title"]).strip()
    year = None if pd.isna(meta["year"]) else str(int(meta["year"]))
    head = ", ".join(x for x in (title, year) if x)
    text = "Item (template)" + (f": {head}." if head else ".")
    genres = [g for g in str(meta["genres"]).split("|") if g]
    if genres:
        text += f" Genres: {', '.join(genres)}."
    if not n:
        text += " No training interactions."
    elif view.data.meta.get("source", {}).get("has_rating", True):
        text += f" {n} training ratings, mean {mean_rating:.1f}."  # a log's rating scale is its own: no "/5"
    else:
        text += f" {n} training interactions."
    free = meta.get("text")
    return text + (f" {str(free).strip()}" if _known(free) else "")


def item_text(view: TrainingView, item: int) -> str:
    meta = view.item_meta.loc[int(item)]
    stats = view.item_stats.loc[int(item)]
    n = int(stats["count"])
    if view.data.meta.get("params", {}).get("dataset") == "custom":
        return _generic_item_text(view, meta, n, float(stats["mean_rating"]) if n else 0.0)
    genres = str(meta["genres"]).replace("|", ", ") or "unknown"
    year = "unknown" if pd.isna(meta["year"]) else str(int(meta["year"]))
    text = f"Film (template): {meta['title']}, {year}. Genres: {genres}."
    if n:
        text += f" {n} training ratings, mean {float(stats['mean_rating']):.1f}/5."
    else:
        text += " No training ratings."
    return text


def template_texts(data: PreparedData, kind: Kind, ids: Sequence[int] | None = None,
                   view: TrainingView | None = None, demographics: bool = False) -> list[str]:
    """Template texts for ``ids`` (default: every user 0..U-1, or every item 1..N)."""
    view = view or TrainingView(data)
    if ids is None:
        ids = range(data.num_users) if kind == "user" else range(1, data.num_items + 1)
    if kind == "user":
        return [user_text(view, i, demographics) for i in ids]
    return [item_text(view, i) for i in ids]


class TemplateSource(PreferenceTextSource):
    name = "template"
    model = "template"
    origin = "template"

    def __init__(self, demographics: bool = False) -> None:
        super().__init__()
        self.demographics = demographics
        self._views: dict[int, TrainingView] = {}

    def prompt_hash(self) -> str:
        spec = {"version": TEMPLATE_VERSION, "genres": TOP_GENRES, "decades": TOP_DECADES, "titles": TOP_TITLES}
        if self.demographics:  # only when on, so the texts without demographics keep their cache
            spec["demographics"] = True
        return sha256_json(spec)[:16]

    def view(self, data: PreparedData) -> TrainingView:
        if id(data) not in self._views:
            self._views[id(data)] = TrainingView(data)
        return self._views[id(data)]

    def generate(self, data: PreparedData, kind: Kind, ids: Sequence[int], on_result: OnResult,
                 progress: bool = True) -> None:
        view = self.view(data)
        for i in ids:
            text = user_text(view, i, self.demographics) if kind == "user" else item_text(view, i)
            on_result(int(i), text, {})
