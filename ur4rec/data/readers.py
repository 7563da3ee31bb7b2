"""Readers for the two on-disk formats of MovieLens-100K, into one standard shape.

Both return three DataFrames:

- ``interactions``: user_id, item_id (raw ints), rating (float), timestamp (int)
- ``items``: item_id, title (without the year), year (nullable int), genres ("|"-joined)
- ``users``: user_id, age (int), gender, occupation, zip_code

A truncated or corrupt file is an error naming the file and the first bad line.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ur4rec.data.sources import DatasetFiles
from ur4rec.errors import DataError

GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]  # fmt: skip
_YEAR_IN_TITLE = re.compile(r"\s*\((\d{4})\)\s*$")


def _canonical_genres(genres: list[str]) -> str:
    """Genres in GroupLens' fixed order, without duplicates, "|"-joined (both formats agree)."""
    present = set(genres)
    return "|".join([g for g in GENRES if g in present] + sorted(present - set(GENRES)))


def _read_table(path: Path, sep: str, names: list[str], header: bool, encoding: str) -> pd.DataFrame:
    """Read a delimited file as strings, rejecting rows with missing or extra fields."""
    try:
        lines = path.read_bytes().decode(encoding).splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(
            f"File is not valid {encoding} text ({exc.reason} at byte {exc.start}).",
            where=str(path),
            fix="the file is corrupt: replace it with a fresh copy of the dataset",
        ) from None
    if lines and not path.read_bytes().endswith(b"\n"):
        raise DataError(
            f"File does not end with a newline: its last line ({len(lines)}) was cut off, the file is truncated.",
            where=f"{path}, line {len(lines)}",
            fix="replace the file with a fresh copy of the dataset",
        )
    first = 1 if header else 0
    rows = []
    for lineno, line in enumerate(lines[first:], start=first + 1):
        if not line.strip():
            continue
        fields = line.split(sep)
        if len(fields) != len(names):
            raise DataError(
                f"Line has {len(fields)} fields, expected {len(names)} ({', '.join(names)}): "
                "the file looks truncated or corrupt.",
                where=f"{path}, line {lineno}",
                fix="replace the file with a fresh copy of the dataset",
            )
        rows.append(fields)
    if not rows:
        raise DataError("File holds no rows.", where=str(path), fix="replace it with a fresh copy of the dataset")
    return pd.DataFrame(rows, columns=names)


def _to_int(df: pd.DataFrame, column: str, path: Path, header: bool, *, as_float: bool = False) -> pd.Series:
    parsed = pd.to_numeric(df[column], errors="coerce")
    bad = parsed.isna()
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        raise DataError(
            f"Column '{column}' has a non-numeric value {df[column].iloc[i]!r}.",
            where=f"{path}, data row {i + 1}" + (" (after the header)" if header else ""),
            fix="the file is corrupt: replace it with a fresh copy of the dataset",
        )
    return parsed.astype(float) if as_float else parsed.astype("int64")


def _check_header(path: Path, expected: list[str]) -> None:
    with open(path, encoding="utf-8", errors="replace") as fh:
        got = [h.split(":")[0] for h in fh.readline().rstrip("\n").split("\t")]
    if got[: len(expected)] != expected:
        raise DataError(
            f"Unexpected header {got}, expected columns starting with {expected}.",
            where=f"{path}, line 1",
            fix="use RecBole atomic files of ML-100K (header like 'user_id:token')",
        )


def read_recbole(files: DatasetFiles) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    f = files.files
    _check_header(f["inter"], ["user_id", "item_id", "rating", "timestamp"])
    _check_header(f["item"], ["item_id", "movie_title", "release_year", "class"])
    _check_header(f["user"], ["user_id", "age", "gender", "occupation", "zip_code"])
    raw = _read_table(f["inter"], "\t", ["user_id", "item_id", "rating", "timestamp"], True, "utf-8")
    inter = pd.DataFrame({
        "user_id": _to_int(raw, "user_id", f["inter"], True),
        "item_id": _to_int(raw, "item_id", f["inter"], True),
        "rating": _to_int(raw, "rating", f["inter"], True, as_float=True),
        "timestamp": _to_int(raw, "timestamp", f["inter"], True),
    })
    raw = _read_table(f["item"], "\t", ["item_id", "title", "year", "genres"], True, "utf-8")
    items = pd.DataFrame({
        "item_id": _to_int(raw, "item_id", f["item"], True),
        "title": raw["title"].str.strip(),
        "year": pd.to_numeric(raw["year"], errors="coerce").astype("Int64"),
        # RecBole writes genres space-separated; ML-100K genre names contain no spaces.
        "genres": raw["genres"].str.split().apply(_canonical_genres),
    })
    raw = _read_table(f["user"], "\t", ["user_id", "age", "gender", "occupation", "zip_code"], True, "utf-8")
    users = raw.assign(user_id=_to_int(raw, "user_id", f["user"], True), age=_to_int(raw, "age", f["user"], True))
    return inter, items, users


def read_grouplens(files: DatasetFiles) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    f = files.files
    raw = _read_table(f["inter"], "\t", ["user_id", "item_id", "rating", "timestamp"], False, "utf-8")
    inter = pd.DataFrame({
        "user_id": _to_int(raw, "user_id", f["inter"], False),
        "item_id": _to_int(raw, "item_id", f["inter"], False),
        "rating": _to_int(raw, "rating", f["inter"], False, as_float=True),
        "timestamp": _to_int(raw, "timestamp", f["inter"], False),
    })
    names = ["item_id", "title", "release_date", "video_release_date", "url", *GENRES]
    raw = _read_table(f["item"], "|", names, False, "latin-1")
    titles = raw["title"].str.strip()
    year_from_title = titles.str.extract(_YEAR_IN_TITLE)[0]
    year_from_date = raw["release_date"].str.extract(r"(\d{4})$")[0]
    flags = raw[GENRES].apply(lambda c: c.str.strip() == "1")
    items = pd.DataFrame({
        "item_id": _to_int(raw, "item_id", f["item"], False),
        "title": titles.str.replace(_YEAR_IN_TITLE, "", regex=True),
        "year": pd.to_numeric(year_from_date.fillna(year_from_title), errors="coerce").astype("Int64"),
        "genres": flags.apply(lambda row: _canonical_genres([g for g, on in zip(GENRES, row) if on]), axis=1),
    })
    raw = _read_table(f["user"], "|", ["user_id", "age", "gender", "occupation", "zip_code"], False, "utf-8")
    users = raw.assign(user_id=_to_int(raw, "user_id", f["user"], False), age=_to_int(raw, "age", f["user"], False))
    return inter, items, users


def read_dataset(files: DatasetFiles) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Read either format and check the three tables agree (a truncated item/user file shows here)."""
    inter, items, users = (read_grouplens if files.format == "grouplens" else read_recbole)(files)
    missing_items = sorted(set(inter["item_id"]) - set(items["item_id"]))
    if missing_items:
        raise DataError(
            f"{len(missing_items)} item ids in the interactions have no metadata "
            f"(first: {missing_items[:5]}): the item file looks truncated.",
            where=str(files.files["item"]),
            fix="replace the item file with a fresh copy of the dataset",
        )
    missing_users = sorted(set(inter["user_id"]) - set(users["user_id"]))
    if missing_users:
        raise DataError(
            f"{len(missing_users)} user ids in the interactions have no metadata "
            f"(first: {missing_users[:5]}): the user file looks truncated.",
            where=str(files.files["user"]),
            fix="replace the user file with a fresh copy of the dataset",
        )
    return inter, items, users
