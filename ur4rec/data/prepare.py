"""``ur4rec prepare``: MovieLens-100K → per-user time-ordered sequences with a held-out split.

Output folder ``<data_dir>/processed/<dataset>/<fingerprint[:12]>/`` (written whole, atomically):

- ``interactions.csv``: user (0..U-1), item (1..N; 0 is padding), rating, timestamp, position
  (0-based index in the user's time-ordered sequence), split (train / valid / test)
- ``items.csv``: item, raw_id, title, year, genres ("|"-joined)
- ``users.csv``: user, raw_id, age, gender, occupation
- ``meta.json``: counts, parameters, source files with their sha256, fingerprint

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
from ur4rec.data.readers import read_dataset
from ur4rec.data.sources import DatasetFiles, locate_ml100k
from ur4rec.errors import DataError
from ur4rec.io import atomic_directory, atomic_write_json, sha256_file, sha256_json

FORMAT_VERSION = 1
#: Config keys that change the prepared data (and so its fingerprint).
PREPARE_KEYS = ("dataset", "min_rating", "min_user_interactions", "max_users", "split", "split_ratios")


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
    return {k: getattr(cfg, k) for k in PREPARE_KEYS}


def fingerprint(files: DatasetFiles, params: dict[str, Any]) -> tuple[str, dict[str, str]]:
    hashes = {p.name: sha256_file(p) for p in files.files.values()}
    fp = sha256_json({"format_version": FORMAT_VERSION, "files": hashes, "params": params})
    return fp, hashes


def _filter(inter: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    n0 = len(inter)
    if cfg.min_rating is not None:
        inter = inter[inter["rating"] >= cfg.min_rating]
    if cfg.max_users is not None:
        keep = np.sort(inter["user_id"].unique())[: cfg.max_users]
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
    # so the order never depends on the file's row order.
    inter = inter.sort_values(["user", "timestamp", "item_id"], kind="stable").reset_index(drop=True)
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
    data_path = cfg.path("data_path") if cfg.data_path else None
    files = locate_ml100k(cfg.data_source, data_path, cfg.path("data_dir"), cfg.allow_download)
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

    inter, items, users = read_dataset(files)
    inter = _filter(inter, cfg)

    item_raw = np.sort(inter["item_id"].unique())
    user_raw = np.sort(inter["user_id"].unique())
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
        "source": {"origin": files.origin, "format": files.format, "folder": str(files.folder), "sha256": hashes},
        "counts": counts,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with atomic_directory(out) as tmp:
        columns = ["user", "item", "rating", "timestamp", "position", "split"]
        inter[columns].to_csv(tmp / "interactions.csv", index=False)
        items_out[["item", "raw_id", "title", "year", "genres"]].to_csv(tmp / "items.csv", index=False)
        users_out[["user", "raw_id", "age", "gender", "occupation"]].to_csv(tmp / "users.csv", index=False)
        cfg.save(tmp, "config.yaml")  # the resolved config that produced this folder
        atomic_write_json(tmp / "meta.json", meta)  # written last: its presence marks completeness
    return PrepareResult(**counts, fingerprint=fp, path=str(out), source=files.origin, source_format=files.format,
                         created=True, seconds=time.perf_counter() - t0)
