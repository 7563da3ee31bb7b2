"""Shared fixtures: tiny synthetic MovieLens datasets in both on-disk formats."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ur4rec.config import load_config
from ur4rec.data.readers import GENRES

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def synthetic_ml(n_users: int = 12, n_items: int = 30, per_user: int = 8, seed: int = 0) -> dict:
    """A small, deterministic MovieLens-like dataset (with timestamp ties on purpose)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        items = rng.choice(np.arange(1, n_items + 1), size=per_user + u % 3, replace=False)
        t = 880_000_000 + int(rng.integers(0, 10_000))
        for i, item in enumerate(items):
            t += int(rng.integers(0, 3))  # 0 makes ties
            rows.append((u, int(item), int(rng.integers(1, 6)), t))
    items = [(i, f"Film {i}", 1970 + i % 30, [GENRES[1 + i % 18], GENRES[1 + (i * 7) % 18]])
             for i in range(1, n_items + 1)]
    users = [(u, 20 + u, "MF"[u % 2], "student", f"{10000 + u}") for u in range(1, n_users + 1)]
    return {"inter": rows, "items": items, "users": users}


def write_grouplens(folder: Path, ds: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ds["inter"]))
    lines = []
    for i, title, year, genres in ds["items"]:
        flags = "|".join("1" if g in genres else "0" for g in GENRES)
        lines.append(f"{i}|{title} ({year})|01-Jan-{year}||http://example.invalid/{i}|{flags}\n")
    (folder / "u.item").write_text("".join(lines), encoding="latin-1")
    (folder / "u.user").write_text("".join(f"{u}|{a}|{g}|{o}|{z}\n" for u, a, g, o, z in ds["users"]))
    return folder


def write_recbole(folder: Path, ds: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    head = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    (folder / "ml-100k.inter").write_text(head + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ds["inter"]))
    head = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    (folder / "ml-100k.item").write_text(
        head + "".join(f"{i}\t{title}\t{year}\t{' '.join(g)}\n" for i, title, year, g in ds["items"])
    )
    head = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
    (folder / "ml-100k.user").write_text(head + "".join(f"{u}\t{a}\t{g}\t{o}\t{z}\n" for u, a, g, o, z in ds["users"]))
    return folder


@pytest.fixture
def synthetic() -> dict:
    return synthetic_ml()


@pytest.fixture
def grouplens_dir(tmp_path: Path, synthetic: dict) -> Path:
    return write_grouplens(tmp_path / "gl", synthetic)


@pytest.fixture
def recbole_dir(tmp_path: Path, synthetic: dict) -> Path:
    return write_recbole(tmp_path / "rb", synthetic)


@pytest.fixture
def tmp_cfg(tmp_path: Path):
    """A config factory writing everything under tmp_path (never the repo's data/)."""

    def make(**overrides):
        base = {"data_dir": str(tmp_path / "data"), "runs_dir": str(tmp_path / "runs"),
                "reports_dir": str(tmp_path / "reports"), "allow_download": False}
        return load_config(None, {**base, **overrides})

    return make


@pytest.fixture
def one_thread():
    """Many tiny ops: one intra-op thread avoids OpenMP thrashing on a busy machine, and makes float
    sums (and so bitwise comparisons) independent of how many cores the machine has."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
