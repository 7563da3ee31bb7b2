"""``ur4rec prepare``: a dataset (ML-100K, ML-1M, a generic log) → per-user time-ordered sequences
with a held-out split.

Output folder ``<data_dir>/processed/<dataset>/<fingerprint[:12]>/`` (written whole, atomically):

- ``interactions.csv``: user (0..U-1), item (1..N; 0 is padding), rating, timestamp, position
  (0-based index in the user's time-ordered sequence), split (train / valid / test)
- ``items.csv``: item, raw_id, title, year, genres ("|"-joined); generic logs add text
- ``users.csv``: user, raw_id, age, gender, occupation; ML-1M adds age_group
- ``meta.json``: counts, parameters, source files with their sha256, fingerprint

Users and items are numbered in the sorted order of their raw ids (as numbers when every id is an
integer, else as text). Within a user, interactions are ordered by timestamp; ties keep the raw
item id order for MovieLens (never the file's row order) and the file's row order for a generic log
(whose rows are often written in event order), where a repeated user-item pair keeps only its first
interaction by that order.

The fingerprint hashes the source files' contents and every parameter that changes the output, so
re-running with the same inputs finds the folder and does nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from ur4rec.config import Config
from ur4rec.data.readers import CsvOptions, read_dataset
from ur4rec.data.sources import DatasetFiles, locate_custom, locate_movielens
from ur4rec.errors import DataError
from ur4rec.io import atomic_directory, atomic_write_json, sha256_file, sha256_json

FORMAT_VERSION = 1
#: Config keys that change the prepared data (and so its fingerprint).
PREPARE_KEYS = ("dataset", "min_rating", "min_user_interactions", "max_users", "split", "split_ratios")
#: ... and, for dataset: custom only (so the MovieLens fingerprints, and their caches, stay as they were),
#: how its files are read. The files themselves count by content, not by path.
CUSTOM_KEYS = ("interactions_columns", "interactions_sep", "items_columns", "items_sep")


@dataclass
class PrepareResult:
    users: int
    items: int
    interactions: int
    train: int
    valid: int
    test: int
    fingerprint: str
    path: str
    source: str
    source_format: str
    created: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prepare_params(cfg: Config) -> dict[str, Any]:
    keys = PREPARE_KEYS + (CUSTOM_KEYS if cfg.dataset == "custom" else ())
    return {k: getattr(cfg, k) for k in keys}


def csv_options(cfg: Config) -> CsvOptions:
    return CsvOptions(dict(cfg.interactions_columns), cfg.interactions_sep, dict(cfg.items_columns), cfg.items_sep)


def locate(cfg: Config) -> DatasetFiles:
    """The source files of the dataset ``cfg`` names (sources.py: where each is looked for)."""
    if cfg.dataset == "custom":
        return locate_custom(cfg.path("interactions_file"), cfg.path("items_file") if cfg.items_file else None)
    data_path = cfg.path("data_path") if cfg.data_path else None
    return locate_movielens(cfg.dataset, cfg.data_source, data_path, cfg.path("data_dir"), cfg.allow_download)


def fingerprint(files: DatasetFiles, params: dict[str, Any]) -> tuple[str, dict[str, str]]:
    # A generic log's two files may share a name (a.csv in two folders): key them by role too.
    hashes = {(f"{role}:{p.name}" if files.format == "csv" else p.name): sha256_file(p)
              for role, p in files.files.items()}
    fp = sha256_json({"format_version": FORMAT_VERSION, "files": hashes, "params": params})
    return fp, hashes


def _sorted_ids(ids: pd.Series) -> np.ndarray:
    """The distinct raw ids in sorted order (numbers, or text for string ids)."""
    return np.sort(np.asarray(ids.unique()))


def _filter(inter: pd.DataFrame, cfg: Config, has_rating: bool = True) -> pd.DataFrame:
    n0 = len(inter)
    if cfg.min_rating is not None and not has_rating:
        raise DataError(f"min_rating is {cfg.min_rating} but the interactions have no rating column.",
                        where="config key min_rating",
                        fix="remove min_rating (every interaction counts), or name the rating column in "
                            "interactions_columns: {rating: <column>}")
    if cfg.min_rating is not None:
        inter = inter[inter["rating"] >= cfg.min_rating]
    if cfg.max_users is not None:
        keep = _sorted_ids(inter["user_id"])[: cfg.max_users]
        inter = inter[inter["user_id"].isin(keep)]
    counts = inter.groupby("user_id")["item_id"].transform("size")
    inter = inter[counts >= cfg.min_user_interactions]
    if inter.empty:
        raise DataError(
            f"The filters left no users (of {n0} interactions: min_rating={cfg.min_rating}, "
            f"min_user_interactions={cfg.min_user_interactions}, max_users={cfg.max_users}).",
            where="config",
            fix="lower min_rating or min_user_interactions",
        )
    return inter


def _order_and_split(inter: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    # Timestamps tie often in ML-100K (several ratings in one second); break ties by raw item id
    # so the order never depends on the file's row order. A generic log's rows are its own record of
    # the order (its reader numbers them): ties keep it.
    tie = "row" if "row" in inter.columns else "item_id"
    inter = inter.sort_values(["user", "timestamp", tie], kind="stable").reset_index(drop=True)
    inter["position"] = inter.groupby("user").cumcount()
    length = inter.groupby("user")["item"].transform("size")
    if cfg.split == "leave_one_out":
        n_test = np.ones(len(inter), dtype=int)
        n_valid = np.ones(len(inter), dtype=int)
    else:  # the original's per-user chronological ratio split
        _, r_valid, r_test = cfg.split_ratios
        n_test = np.maximum(1, np.floor(length * r_test).astype(int))
        n_valid = np.maximum(1, np.floor(length * r_valid).astype(int))
    from_end = length - inter["position"]  # 1 for the latest item
    split = np.where(from_end <= n_test, "test", np.where(from_end <= n_test + n_valid, "valid", "train"))
    inter["split"] = split
    return inter


def prepare(cfg: Config, force: bool = False) -> PrepareResult:
    """Prepare the dataset named by ``cfg`` (does nothing if an identical output exists)."""
    t0 = time.perf_counter()
    files = locate(cfg)
    params = prepare_params(cfg)
    fp, hashes = fingerprint(files, params)
    out = cfg.path("data_dir") / "processed" / cfg.dataset / fp[:12]
    meta_path = out / "meta.json"
    if not force and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") == fp:
            return PrepareResult(**meta["counts"], fingerprint=fp, path=str(out), source=files.origin,
                                 source_format=files.format, created=False,
                                 seconds=time.perf_counter() - t0)

    inter, items, users = read_dataset(files, csv_options(cfg))
    notes = {k: inter.attrs[k] for k in ("has_rating", "duplicates_dropped") if k in inter.attrs}  # generic logs
    inter = _filter(inter, cfg, notes.get("has_rating", True))

    item_raw = _sorted_ids(inter["item_id"])
    user_raw = _sorted_ids(inter["user_id"])
    item_map = pd.Series(np.arange(1, len(item_raw) + 1), index=item_raw)  # 0 = padding
    user_map = pd.Series(np.arange(len(user_raw)), index=user_raw)
    inter = inter.assign(user=inter["user_id"].map(user_map), item=inter["item_id"].map(item_map))
    inter = _order_and_split(inter, cfg)

    items_out = items[items["item_id"].isin(item_raw)].assign(item=lambda d: d["item_id"].map(item_map))
    items_out = items_out.rename(columns={"item_id": "raw_id"}).sort_values("item")
    users_out = users[users["user_id"].isin(user_raw)].assign(user=lambda d: d["user_id"].map(user_map))
    users_out = users_out.rename(columns={"user_id": "raw_id"}).sort_values("user")

    counts = {
        "users": int(len(user_raw)),
        "items": int(len(item_raw)),
        "interactions": int(len(inter)),
        "train": int((inter["split"] == "train").sum()),
        "valid": int((inter["split"] == "valid").sum()),
        "test": int((inter["split"] == "test").sum()),
    }
    meta = {
        "format_version": FORMAT_VERSION,
        "fingerprint": fp,
        "params": params,
        "source": {"origin": files.origin, "format": files.format, "folder": str(files.folder), "sha256": hashes,
                   **({"files": {k: str(p) for k, p in files.files.items()}} if files.format == "csv" else {}),
                   **notes},
        "counts": counts,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with atomic_directory(out) as tmp:
        columns = ["user", "item", "rating", "timestamp", "position", "split"]
        inter[columns].to_csv(tmp / "interactions.csv", index=False)
        extra_items = [c for c in ("text",) if c in items_out.columns]
        extra_users = [c for c in ("age_group",) if c in users_out.columns]
        items_out[["item", "raw_id", "title", "year", "genres", *extra_items]].to_csv(tmp / "items.csv", index=False)
        users_out[["user", "raw_id", "age", "gender", "occupation", *extra_users]].to_csv(tmp / "users.csv",
                                                                                         index=False)
        cfg.save(tmp, "config.yaml")  # the resolved config that produced this folder
        atomic_write_json(tmp / "meta.json", meta)  # written last: its presence marks completeness
    return PrepareResult(**counts, fingerprint=fp, path=str(out), source=files.origin, source_format=files.format,
                         created=True, seconds=time.perf_counter() - t0)
