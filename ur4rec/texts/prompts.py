"""Prompts for LLM sources, built only from a user's TRAINING prefix and item metadata.

``TrainingView`` is the single place that reads interactions for texts: it keeps the training split
only, so nothing held out for validation or test can reach a prompt or a template.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import pandas as pd

from ur4rec.data.dataset import PreparedData
from ur4rec.io import sha256_json

PROMPT_VERSION = "ur4rec-prompts-v1"

USER_SYSTEM = (
    "You are a film expert who writes short, factual summaries of a viewer's film preferences "
    "for a recommender system."
)
USER_INSTRUCTION = (
    "These are the films this viewer rated most recently, oldest first, with genres and the "
    "viewer's rating out of 5:\n{history}\n\n"
    "In two or three sentences, describe this viewer's preferences: favourite genres, eras, tone, "
    "and what they rate highly or poorly. Do not repeat the list."
)
ITEM_SYSTEM = "You are a film expert who writes short, factual film descriptions for a recommender system."
ITEM_INSTRUCTION = (
    "Film: {title}\nRelease year: {year}\nGenres: {genres}\n\n"
    "In two sentences, describe this film's genre, tone and themes, and the kind of viewer who would "
    "enjoy it."
)


def _fmt_rating(r: float) -> str:
    return f"{r:g}"


def _year(y) -> str:
    return "unknown" if y is None or pd.isna(y) else str(int(y))


@dataclass
class TrainingView:
    """Training-split interactions joined with item metadata, per user (time order)."""

    data: PreparedData

    @cached_property
    def item_meta(self) -> pd.DataFrame:
        items = self.data.items.set_index("item").sort_index()
        return items

    @cached_property
    def users(self) -> pd.DataFrame:
        """The users table (age, gender, occupation where the dataset has them), indexed by user id."""
        return self.data.users.set_index("user").sort_index()

    @cached_property
    def train(self) -> pd.DataFrame:
        inter = self.data.interactions
        train = inter[inter["split"] == "train"][["user", "item", "rating", "position"]]
        return train.sort_values(["user", "position"], kind="stable").reset_index(drop=True)

    @cached_property
    def by_user(self) -> dict[int, pd.DataFrame]:
        joined = self.train.join(self.item_meta[["title", "year", "genres"]], on="item")
        return {int(u): g for u, g in joined.groupby("user", sort=True)}

    def user_rows(self, user: int) -> pd.DataFrame:
        """The user's training interactions with title/year/genres, oldest first."""
        rows = self.by_user.get(int(user))
        if rows is None:
            return pd.DataFrame(columns=["user", "item", "rating", "position", "title", "year", "genres"])
        return rows

    @cached_property
    def item_stats(self) -> pd.DataFrame:
        """Training-split popularity and mean rating per item (index 1..N; absent items count 0)."""
        g = self.train.groupby("item")["rating"]
        stats = pd.DataFrame({"count": g.size(), "mean_rating": g.mean()})
        stats = stats.reindex(range(1, self.data.num_items + 1))
        stats["count"] = stats["count"].fillna(0).astype(int)
        return stats


def user_messages(view: TrainingView, user: int, history_len: int) -> list[dict[str, str]]:
    rows = view.user_rows(user).tail(history_len)
    lines = [
        f"- {t} ({_year(y)}); {g.replace('|', ', ') if g else 'no genre'}; rated {_fmt_rating(r)}/5"
        for t, y, g, r in zip(rows["title"], rows["year"], rows["genres"], rows["rating"])
    ]
    history = "\n".join(lines) if lines else "- (no training history)"
    return [{"role": "system", "content": USER_SYSTEM},
            {"role": "user", "content": USER_INSTRUCTION.format(history=history)}]


def item_messages(view: TrainingView, item: int) -> list[dict[str, str]]:
    row = view.item_meta.loc[int(item)]
    genres = str(row["genres"]).replace("|", ", ") or "unknown"
    return [{"role": "system", "content": ITEM_SYSTEM},
            {"role": "user", "content": ITEM_INSTRUCTION.format(title=row["title"], year=_year(row["year"]),
                                                                 genres=genres)}]


def messages_for(view: TrainingView, kind: str, ident: int, history_len: int) -> list[dict[str, str]]:
    return user_messages(view, ident, history_len) if kind == "user" else item_messages(view, ident)


def all_user_prompts(data: PreparedData, history_len: int) -> list[list[dict[str, str]]]:
    """Every user's prompt (index = user id); used by the leakage tests."""
    view = TrainingView(data)
    return [user_messages(view, u, history_len) for u in range(data.num_users)]


def prompt_spec_hash(history_len: int, temperature: float, max_tokens: int) -> str:
    """Hash of the prompt templates and generation settings (part of the text cache key)."""
    return sha256_json({
        "version": PROMPT_VERSION, "user_system": USER_SYSTEM, "user": USER_INSTRUCTION,
        "item_system": ITEM_SYSTEM, "item": ITEM_INSTRUCTION, "history_len": history_len,
        "temperature": temperature, "max_tokens": max_tokens,
    })[:16]


def messages_digest(messages: list[dict[str, str]]) -> str:
    return sha256_json(messages)[:16]


def to_plain_prompt(messages: list[dict[str, str]]) -> str:
    """A chat as plain text, for models without a chat template."""
    system = "\n".join(m["content"] for m in messages if m["role"] == "system")
    user = "\n".join(m["content"] for m in messages if m["role"] != "system")
    return f"{system}\n\n{user}\n\nAnswer:"


__all__ = ["TrainingView", "all_user_prompts", "item_messages", "messages_digest", "messages_for",
           "prompt_spec_hash", "to_plain_prompt", "user_messages"]
