"""Readers for the on-disk formats (sources.py lists them), into one standard shape.

Every reader returns three DataFrames:

- ``interactions``: user_id, item_id (raw ids: ints; strings in a generic log whose ids are not all
  integers), rating (float), timestamp (int; float in a generic log with fractional times). The generic
  reader adds ``row`` (the line's index among the file's data rows: it orders timestamp ties) and
  records in ``interactions.attrs`` whether the log had ratings (``has_rating``) and how many repeated
  user-item pairs it dropped (``duplicates_dropped``).
- ``items``: item_id, title (without the year), year (nullable int), genres ("|"-joined; GroupLens
  genres in GroupLens' order, others after them sorted); the generic reader adds ``text`` (free text).
  What is unknown is "" (title, genres, text) or <NA> (year).
- ``users``: user_id, age (nullable int), gender, occupation, zip_code; ML-1M adds ``age_group`` (its
  age code decoded, e.g. "25-34"). Without a user file every demographic is unknown (<NA>).

A truncated or corrupt file is an error naming the file and the first bad line.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ur4rec.data.sources import DatasetFiles
from ur4rec.errors import DataError

GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]  # fmt: skip
#: ML-1M's age codes (its README): each is the lower bound of its range, except 1 = under 18.
AGE_GROUPS = {1: "Under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+"}
#: ML-1M's occupation codes (its README), index = code. The original UR4Rec layout's user.dat uses them for ML-100K too.
OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer", "programmer",
    "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
    "unemployed", "writer",
)  # fmt: skip
INTER_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
#: Generic files: role -> default column name (config keys interactions_columns / items_columns override).
INTERACTION_ROLES = {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "rating": "rating"}
ITEM_ROLES = {"item": "item_id", "title": "title", "year": "year", "genres": "genres", "text": "text"}
_REQUIRED = {"inter": {"user", "item", "timestamp"}, "item": {"item"}}
#: Separators a misread line may hold instead: name, plural.
_SEPARATORS = {"\t": ("tab", "tabs"), ",": ("comma", "commas"), ";": ("semicolon", "semicolons"),
               "|": ("'|'", "'|'s"), "::": ("'::'", "'::'s")}
_YEAR_IN_TITLE = re.compile(r"\s*\((\d{4})\)\s*$")
_INTEGER_ID = r"0|[1-9][0-9]{0,17}"  # canonical integers only: "007" stays a string id, not 7
_NO_GENRES = "(no genres listed)"  # MovieLens' placeholder in later releases


@dataclass(frozen=True)
class CsvOptions:
    """How to read a generic log: the column names the user set, by role, and the separators (None: tab
    for .tsv/.tab files, else comma)."""

    interactions_columns: Mapping[str, str] = field(default_factory=dict)
    interactions_sep: str | None = None
    items_columns: Mapping[str, str] = field(default_factory=dict)
    items_sep: str | None = None


def _canonical_genres(genres: list[str]) -> str:
    """Genres in GroupLens' fixed order, without duplicates, "|"-joined (both formats agree)."""
    present = set(genres) - {""}
    return "|".join([g for g in GENRES if g in present] + sorted(present - set(GENRES)))


def _split_genres(value: str) -> str:
    return _canonical_genres([g.strip() for g in str(value).split("|") if g.strip() != _NO_GENRES])


def _sep_name(sep: str) -> str:
    return _SEPARATORS.get(sep, (repr(sep),))[0]


def _separator_hint(text: str, sep: str) -> str:
    """Why ``text`` split badly when it uses another separator than ``sep`` (else "")."""
    if sep in text:
        return ""
    other = next((s for s in _SEPARATORS if s != sep and s in text), None)
    if other is None:
        return ""
    return f"it holds {_SEPARATORS[other][1]} but no {_sep_name(sep)}: the file is not {_sep_name(sep)}-separated."


def _read_table(path: Path, sep: str, names: list[str], header: bool, encoding: str) -> pd.DataFrame:
    """Read a delimited file as strings, rejecting rows with missing or extra fields.

    ``attrs["lines"]`` holds each row's line number (for errors about its values)."""
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
    rows, numbers = [], []
    for lineno, line in enumerate(lines[first:], start=first + 1):
        if not line.strip():
            continue
        fields = line.split(sep)
        if len(fields) != len(names):
            hint = _separator_hint(line, sep)
            raise DataError(
                f"Line has {len(fields)} fields, expected {len(names)} ({', '.join(names)}): "
                + (hint or "the file looks truncated or corrupt."),
                where=f"{path}, line {lineno}",
                fix="replace the file with a fresh copy of the dataset"
                + (f" (its fields are separated by {_sep_name(sep)})" if hint else ""),
            )
        rows.append(fields)
        numbers.append(lineno)
    if not rows:
        raise DataError("File holds no rows.", where=str(path), fix="replace it with a fresh copy of the dataset")
    df = pd.DataFrame(rows, columns=names)
    df.attrs["lines"] = numbers
    return df


def _numbers(values: pd.Series, lines: list[int], column: str, path: Path, fix: str) -> pd.Series:
    """``values`` as finite floats; the first value that is not one is an error naming its line."""
    parsed = pd.to_numeric(values, errors="coerce").astype(float)
    bad = ~np.isfinite(parsed.to_numpy())
    if bad.any():
        i = int(bad.nonzero()[0][0])
        raise DataError(f"Column '{column}' has a non-numeric value {values.iloc[i]!r}.",
                        where=f"{path}, line {lines[i]}", fix=fix)
    return parsed


def _to_int(df: pd.DataFrame, column: str, path: Path, header: bool, *, as_float: bool = False) -> pd.Series:
    lines = df.attrs.get("lines") or list(range(1 + header, len(df) + 1 + header))
    parsed = _numbers(df[column], lines, column, path,
                      "the file is corrupt: replace it with a fresh copy of the dataset")
    return parsed if as_float else parsed.astype("int64")


def _interactions(raw: pd.DataFrame, path: Path, header: bool) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": _to_int(raw, "user_id", path, header),
        "item_id": _to_int(raw, "item_id", path, header),
        "rating": _to_int(raw, "rating", path, header, as_float=True),
        "timestamp": _to_int(raw, "timestamp", path, header),
    })


def _check_header(path: Path, expected: list[str]) -> None:
    with open(path, encoding="utf-8", errors="replace") as fh:
        got = [h.split(":")[0] for h in fh.readline().rstrip("\n").split("\t")]
    if got[: len(expected)] != expected:
        raise DataError(
            f"Unexpected header {got}, expected columns starting with {expected}.",
            where=f"{path}, line 1",
            fix="use RecBole atomic files of ML-100K (header like 'user_id:token')",
        )


def unknown_users(user_ids: pd.Series) -> pd.DataFrame:
    """A users table for ``user_ids`` with every demographic unknown (no user file)."""
    ids = pd.Series(pd.unique(user_ids.to_numpy()))
    missing = pd.Series([pd.NA] * len(ids), dtype=object)
    return pd.DataFrame({"user_id": ids, "age": pd.array([pd.NA] * len(ids), dtype="Int64"),
                         "gender": missing, "occupation": missing.copy(), "zip_code": missing.copy()})


def read_recbole(files: DatasetFiles) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    f = files.files
    _check_header(f["inter"], ["user_id", "item_id", "rating", "timestamp"])
    _check_header(f["item"], ["item_id", "movie_title", "release_year", "class"])
    _check_header(f["user"], ["user_id", "age", "gender", "occupation", "zip_code"])
    inter = _interactions(_read_table(f["inter"], "\t", INTER_COLUMNS, True, "utf-8"), f["inter"], True)
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
    inter = _interactions(_read_table(f["inter"], "\t", INTER_COLUMNS, False, "utf-8"), f["inter"], False)
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


# ---------------------------------------------------------------------------- the .dat layout
def _decode_codes(codes: pd.Series, lines: list[int], column: str, table: Mapping[int, str], path: Path,
                  fix: str) -> pd.Series:
    """``codes`` looked up in ``table``; the first code it lacks is an error naming its line."""
    labels = codes.map(table)
    bad = labels.isna().to_numpy()
    if bad.any():
        i = int(bad.nonzero()[0][0])
        known = sorted(table)
        shown = f"{known[0]}-{known[-1]}" if known == list(range(known[0], known[-1] + 1)) else str(known)
        raise DataError(f"Column '{column}' has code {int(codes.iloc[i])}, which is not one of {shown}.",
                        where=f"{path}, line {lines[i]}", fix=fix)
    return labels.astype(object)


def _occupations(raw: pd.DataFrame, path: Path) -> pd.Series:
    """Occupation names: numeric codes decoded with ML-1M's table, names kept as they are."""
    values = raw["occupation"].str.strip()
    numeric = values.str.fullmatch(r"\d+")
    if not numeric.any():
        return values.astype(object)
    lines = [n for n, on in zip(raw.attrs["lines"], numeric) if on]
    decoded = _decode_codes(values[numeric].astype("int64"), lines, "occupation", dict(enumerate(OCCUPATIONS)),
                            path, "occupations are ML-1M's codes 0-20: replace the file with a fresh copy")
    return values.astype(object).where(~numeric, decoded)


def _read_dat_users(path: Path, dataset: str) -> pd.DataFrame:
    raw = _read_table(path, "::", ["user_id", "gender", "age", "occupation", "zip_code"], False, "latin-1")
    age = _to_int(raw, "age", path, False)
    users = pd.DataFrame({
        "user_id": _to_int(raw, "user_id", path, False),
        "age": age.astype("Int64"),
        "gender": raw["gender"].str.strip().astype(object),
        "occupation": _occupations(raw, path),
        "zip_code": raw["zip_code"].str.strip().astype(object),
    })
    if dataset == "ml-1m":
        # ML-1M's age is a range's code: keep the code as the number (its lower bound) and the range as text
        users["age_group"] = _decode_codes(age, raw.attrs["lines"], "age", AGE_GROUPS, path,
                                           "ML-1M ages are codes (1, 18, 25, 35, 45, 50, 56); if the file holds "
                                           "ages in years (ML-100K), set dataset: ml-100k")
    return users


def read_dat(files: DatasetFiles) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """ratings.dat + movies.dat (+ users.dat), ``::``-separated, latin-1 (GroupLens ML-1M, original UR4Rec)."""
    f = files.files
    inter = _interactions(_read_table(f["inter"], "::", INTER_COLUMNS, False, "latin-1"), f["inter"], False)
    raw = _read_table(f["item"], "::", ["item_id", "title", "genres"], False, "latin-1")
    titles = raw["title"].str.strip()
    items = pd.DataFrame({
        "item_id": _to_int(raw, "item_id", f["item"], False),
        "title": titles.str.replace(_YEAR_IN_TITLE, "", regex=True),
        "year": pd.to_numeric(titles.str.extract(_YEAR_IN_TITLE)[0], errors="coerce").astype("Int64"),
        "genres": raw["genres"].apply(_split_genres),
    })
    users = _read_dat_users(f["user"], files.dataset) if "user" in f else unknown_users(inter["user_id"])
    return inter, items, users


# ---------------------------------------------------------------------------- generic CSV/TSV logs
def separator(path: Path, sep: str | None) -> str:
    """``sep``, or by the file's extension: tab for .tsv/.tab, else comma."""
    if sep is not None:
        return sep
    return "\t" if path.suffix.lower() in (".tsv", ".tab") else ","


def _records(text: str, sep: str, path: Path) -> list[tuple[int, list[str]]]:
    """(first line number, stripped fields) of every non-blank record. One-character separators follow
    CSV quoting (a quoted field may hold the separator, quotes, or line breaks)."""
    if len(sep) > 1:
        out = [(n, line.split(sep)) for n, line in enumerate(text.splitlines(), start=1)]
    else:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
        out, start = [], 1
        try:
            for row in reader:
                out.append((start, row))
                start = reader.line_num + 1
        except csv.Error as exc:
            raise DataError(f"Malformed line: {exc}.", where=f"{path}, line {reader.line_num}",
                            fix="quote fields that hold the separator or a quote, and double the quotes inside them "
                                "(CSV rules)") from None
    return [(n, [v.strip() for v in row]) for n, row in out if any(v.strip() for v in row)]


def _read_delimited(path: Path, sep: str, sep_key: str) -> tuple[int, list[str], pd.DataFrame, list[int]]:
    """(header line, header, data rows as strings with columns 0..k-1, their line numbers) of a UTF-8 file."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"File is not valid UTF-8 text ({exc.reason} at byte {exc.start}).", where=str(path),
                        fix="save the file as UTF-8") from None
    if not text.strip():
        raise DataError("File is empty.", where=str(path), fix="give it a header line naming its columns, then rows")
    if not text.endswith(("\n", "\r")):
        n = len(text.splitlines())
        raise DataError(f"File does not end with a newline: its last line ({n}) may have been cut off, the file "
                        "looks truncated.", where=f"{path}, line {n}",
                        fix="if the file is complete, end it with a newline; else replace it with a complete copy")
    records = _records(text, sep, path)
    head_line, header = records[0]
    if len(header) == 1 and (hint := _separator_hint(header[0], sep)):
        raise DataError(f"The header has one column {header[0]!r}: {hint}", where=f"{path}, line {head_line}",
                        fix=f"set {sep_key} to the file's separator (tab: \"\\t\")")
    for n, row in records[1:]:
        if len(row) != len(header):
            hint = _separator_hint(row[0], sep) if len(row) == 1 else ""
            raise DataError(f"Line has {len(row)} fields, expected {len(header)} like the header "
                            f"({', '.join(header)}): " + (hint or "the row looks cut off or corrupt."),
                            where=f"{path}, line {n}",
                            fix=f"set {sep_key} to the file's separator" if hint else
                            "repair or remove that line (a field holding the separator must be quoted)")
    if len(records) < 2:
        raise DataError("File holds a header but no rows.", where=str(path), fix="add the data rows")
    rows = pd.DataFrame([r for _, r in records[1:]], columns=range(len(header)), dtype=object)
    return head_line, header, rows, [n for n, _ in records[1:]]


def _columns(header: list[str], head_line: int, roles: Mapping[str, str], chosen: Mapping[str, str],
             required: set[str], path: Path, key: str) -> dict[str, int]:
    """Column index per role found in the header; a required or explicitly named column that is missing is an error."""
    found = {}
    for role, default in roles.items():
        name = chosen.get(role, default)
        if name in header:
            found[role] = header.index(name)
        elif role in required or role in chosen:
            raise DataError(f"No column '{name}' (the {role} column) in the header {header}.",
                            where=f"{path}, line {head_line}",
                            fix=f"rename the column, or name it in the config: {key}: {{{role}: <column>}}")
    return found


def _ids(values: pd.Series, lines: list[int], column: str, path: Path) -> pd.Series:
    """Raw ids: integers when every id is a plain integer (so they sort as numbers), else strings."""
    empty = (values == "").to_numpy()
    if empty.any():
        i = int(empty.nonzero()[0][0])
        raise DataError(f"Column '{column}' has an empty id.", where=f"{path}, line {lines[i]}",
                        fix="give every row an id, or remove the row")
    if values.str.fullmatch(_INTEGER_ID).all():
        return values.astype("int64")
    return values.astype(object)


def _read_custom_interactions(path: Path, options: CsvOptions) -> tuple[pd.DataFrame, bool, int]:
    """The log's interactions in file order (a repeated user-item pair: its first by time is kept), whether
    it has ratings, and how many repeats were dropped."""
    key = "interactions_columns"
    head_line, header, rows, lines = _read_delimited(path, separator(path, options.interactions_sep),
                                                     "interactions_sep")
    cols = _columns(header, head_line, INTERACTION_ROLES, options.interactions_columns, _REQUIRED["inter"], path, key)
    name = {role: header[i] for role, i in cols.items()}
    ts = _numbers(rows[cols["timestamp"]], lines, name["timestamp"], path,
                  "timestamps must be numbers (e.g. Unix seconds); convert dates before preparing")
    whole = bool((ts == np.floor(ts)).all() and ts.abs().max() < 2**62)
    has_rating = "rating" in cols
    inter = pd.DataFrame({
        "user_id": _ids(rows[cols["user"]], lines, name["user"], path),
        "item_id": _ids(rows[cols["item"]], lines, name["item"], path),
        "rating": (_numbers(rows[cols["rating"]], lines, name["rating"], path, "ratings must be numbers")
                   if has_rating else 1.0),  # implicit feedback: every interaction counts the same
        "timestamp": ts.astype("int64") if whole else ts,
        "row": np.arange(len(rows)),
    })
    by_time = inter.sort_values(["user_id", "timestamp", "row"], kind="stable")
    kept = by_time[~by_time.duplicated(["user_id", "item_id"], keep="first")].sort_values("row")
    return kept.reset_index(drop=True), has_rating, len(inter) - len(kept)


def _years(values: pd.Series, lines: list[int], column: str, path: Path) -> pd.Series:
    """A year per value: "" is unknown, "1995" or "1995-07-01" is 1995; anything else is an error."""
    years = values.str.extract(r"^(\d{4})(?:\D.*)?$")[0]
    bad = ((values != "") & years.isna()).to_numpy()
    if bad.any():
        i = int(bad.nonzero()[0][0])
        raise DataError(f"Column '{column}' has {values.iloc[i]!r}, not a year.", where=f"{path}, line {lines[i]}",
                        fix="write years as four digits (or a date starting with one), or leave the field empty")
    return pd.to_numeric(years, errors="coerce").astype("Int64")


def _read_item_metadata(path: Path, options: CsvOptions) -> pd.DataFrame:
    """The item file: one row per item id string (a repeated id: its first row is kept)."""
    key = "items_columns"
    head_line, header, rows, lines = _read_delimited(path, separator(path, options.items_sep), "items_sep")
    cols = _columns(header, head_line, ITEM_ROLES, options.items_columns, _REQUIRED["item"], path, key)
    empty = pd.Series([""] * len(rows), dtype=object)

    def col(role: str) -> pd.Series:
        return rows[cols[role]].astype(object) if role in cols else empty

    titles = col("title")
    if "year" in cols:
        years = _years(rows[cols["year"]].astype(str), lines, header[cols["year"]], path)
    else:  # MovieLens-style "Title (1995)": the year comes from the title, as for the MovieLens files
        years = pd.to_numeric(titles.str.extract(_YEAR_IN_TITLE)[0], errors="coerce").astype("Int64")
        titles = titles.str.replace(_YEAR_IN_TITLE, "", regex=True)
    ids = rows[cols["item"]].astype(str)
    meta = pd.DataFrame({"key": ids, "title": titles, "year": years, "genres": col("genres").apply(_split_genres),
                         "text": col("text")})
    if (ids == "").any():
        i = int((ids == "").to_numpy().nonzero()[0][0])
        raise DataError(f"Column '{header[cols['item']]}' has an empty id.", where=f"{path}, line {lines[i]}",
                        fix="give every row an item id, or remove the row")
    return meta.drop_duplicates("key", keep="first")


def _custom_items(item_ids: pd.Series, meta: pd.DataFrame | None) -> pd.DataFrame:
    """One row per item of the log, with its metadata where the item file has it (matched on the id's text)."""
    items = pd.DataFrame({"item_id": pd.unique(item_ids.to_numpy())})
    if meta is None:
        n = len(items)
        return items.assign(title="", year=pd.array([pd.NA] * n, dtype="Int64"), genres="", text="")
    joined = items.assign(key=items["item_id"].astype(str)).merge(meta, on="key", how="left")
    return pd.DataFrame({"item_id": joined["item_id"], "title": joined["title"].fillna("").astype(object),
                         "year": joined["year"].astype("Int64"), "genres": joined["genres"].fillna("").astype(object),
                         "text": joined["text"].fillna("").astype(object)})


def read_custom(files: DatasetFiles, options: CsvOptions) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A generic log: interactions file (+ item metadata file); users are ids only (demographics unknown)."""
    f = files.files
    inter, has_rating, dropped = _read_custom_interactions(f["inter"], options)
    meta = _read_item_metadata(f["item"], options) if "item" in f else None
    items = _custom_items(inter["item_id"], meta)
    inter.attrs.update(has_rating=has_rating, duplicates_dropped=int(dropped))
    return inter, items, unknown_users(inter["user_id"])


def read_dataset(files: DatasetFiles, options: CsvOptions | None = None) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                                  pd.DataFrame]:
    """Read any format and check the three tables agree (a truncated item/user file shows here)."""
    if files.format == "csv":
        inter, items, users = read_custom(files, options or CsvOptions())
    else:
        reader = {"grouplens": read_grouplens, "recbole": read_recbole, "dat": read_dat}[files.format]
        inter, items, users = reader(files)
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
