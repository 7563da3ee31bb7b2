"""``PreparedData``: the prepared dataset in memory, with the views every other part needs.

Users are 0..U-1 and items 1..N (0 = padding). A user's history for an evaluation split is
everything strictly before that split: training items for validation, training + validation items
for test. Nothing here ever hands a model or a text source a held-out item as history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ur4rec.config import Config
from ur4rec.data.prepare import prepare
from ur4rec.errors import DataError

Split = Literal["valid", "test"]


@dataclass
class PreparedData:
    path: Path
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    meta: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> PreparedData:
        path = Path(path)
        if not (path / "meta.json").is_file():
            raise DataError(
                "No prepared dataset here (meta.json missing).", where=str(path), fix="run `ur4rec prepare` first"
            )
        meta = json.loads((path / "meta.json").read_text())
        inter = pd.read_csv(path / "interactions.csv")
        # A generic log's raw ids are text ("007" must not become 7); MovieLens ids stay numbers.
        ids = {"raw_id": str} if meta.get("params", {}).get("dataset") == "custom" else {}
        # Only an empty year is missing: a title or text "NA" or "None" is text (dtypes of absent columns are unused).
        items = pd.read_csv(path / "items.csv", dtype={**ids, "title": str, "genres": str, "text": str},
                            keep_default_na=False, na_values={"year": [""]})
        items["year"] = items["year"].astype("Int64")
        users = pd.read_csv(path / "users.csv", dtype=ids)
        return cls(path, inter, items, users, meta)

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def num_users(self) -> int:
        return int(self.meta["counts"]["users"])

    @property
    def num_items(self) -> int:
        return int(self.meta["counts"]["items"])

    @cached_property
    def _by_split(self) -> dict[str, list[np.ndarray]]:
        out: dict[str, list[np.ndarray]] = {}
        inter = self.interactions.sort_values(["user", "position"])
        for split in ("train", "valid", "test"):
            part = inter[inter["split"] == split]
            groups = part.groupby("user")["item"].apply(lambda s: s.to_numpy(dtype=np.int64, copy=True))
            out[split] = [groups.get(u, np.zeros(0, dtype=np.int64)) for u in range(self.num_users)]
        return out

    def train_sequences(self) -> list[np.ndarray]:
        """Each user's training items in time order."""
        return self._by_split["train"]

    def held_out(self, split: Split) -> list[np.ndarray]:
        """Each user's held-out items of ``split`` in time order (one item under leave-one-out)."""
        return self._by_split[split]

    def history(self, split: Split) -> list[np.ndarray]:
        """What a model may see when predicting ``split``: everything strictly before it."""
        train = self._by_split["train"]
        if split == "valid":
            return train
        return [np.concatenate([t, v]) for t, v in zip(train, self._by_split["valid"])]

    def item_popularity(self) -> np.ndarray:
        """Training interaction counts per item, index 0 = padding (always 0)."""
        train = self.interactions[self.interactions["split"] == "train"]
        return np.bincount(train["item"].to_numpy(), minlength=self.num_items + 1)

    def item_genres(self) -> list[list[str]]:
        """Genres per item id (index 0 = padding, empty)."""
        genres = [[] for _ in range(self.num_items + 1)]
        for item, g in zip(self.items["item"], self.items["genres"]):
            genres[int(item)] = [x for x in str(g).split("|") if x]
        return genres


def load_prepared(cfg: Config) -> PreparedData:
    """Prepare (if needed) and load the dataset ``cfg`` names."""
    result = prepare(cfg)
    data = PreparedData.load(result.path)
    if cfg.num_items is not None and cfg.num_items != data.num_items:
        raise DataError(
            f"Config num_items={cfg.num_items} but the prepared data has {data.num_items} items.",
            where="config key num_items",
            fix=f"remove num_items (it is derived from the data) or set it to {data.num_items}",
        )
    return data
