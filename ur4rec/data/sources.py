"""Where each dataset comes from, in order of preference.

MovieLens-100K (``dataset: ml-100k``):

1. an explicit folder (``data_path``),
2. ``<data_dir>/raw/ml-100k/`` (a GroupLens download placed by hand or by step 4),
3. the copy shipped inside the PyPI wheel of ``recbole`` (RecBole atomic files; located without
   importing recbole, whose import has side effects such as enabling autograd anomaly mode),
4. the GroupLens download, checksum-verified (online users only; ``allow_download``).

MovieLens-1M (``dataset: ml-1m``): steps 1, 2 (``<data_dir>/raw/ml-1m/``) and 4; no wheel ships it.

A MovieLens folder holds one of three layouts:

- ``grouplens``: GroupLens ML-100K, ``u.data``, ``u.item``, ``u.user``;
- ``recbole``: RecBole atomic files, ``ml-100k.inter``, ``ml-100k.item``, ``ml-100k.user``;
- ``dat``: ``ratings.dat`` + ``movies.dat`` (``::``-separated), with or without ``users.dat``:
  GroupLens ML-1M's layout, and the original UR4Rec system's for ML-100K and ML-1M alike (its
  multimodal copies name the user file ``user.dat``: taken too).

A generic interaction log (``dataset: custom``) is the file ``interactions_file`` with an optional
``items_file``: nothing is looked for elsewhere, nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ur4rec.errors import DataError
from ur4rec.io import atomic_directory

Format = Literal["grouplens", "recbole", "dat", "csv"]

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
GROUPLENS_MD5 = "0e33842e24a9c977be4e0107933c0723"
ML1M_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
ML1M_MD5 = "c4d9eecfca2ab87c1945afe126590906"

#: The three files each format needs: interactions, items, users.
GROUPLENS_FILES = {"inter": "u.data", "item": "u.item", "user": "u.user"}
RECBOLE_FILES = {"inter": "ml-100k.inter", "item": "ml-100k.item", "user": "ml-100k.user"}
#: The ``dat`` layout: interactions and items are required; the user file is optional (first name found).
DAT_FILES = {"inter": "ratings.dat", "item": "movies.dat"}
DAT_USER_FILES = ("users.dat", "user.dat")

HOW_TO_GET = (
    "put the GroupLens files u.data, u.item, u.user in data/raw/ml-100k/ "
    f"(from {GROUPLENS_URL}), or run `pip install --no-deps recbole==1.2.1` (its wheel ships "
    "ML-100K; `make setup` does this), or set data_path to a folder holding them"
)
HOW_TO_GET_ML1M = (
    f"unzip {ML1M_URL} into data/raw/ml-1m/ (ratings.dat, movies.dat, users.dat), or set data_path "
    "to a folder holding ratings.dat and movies.dat (users.dat optional), or set allow_download: true online"
)


@dataclass(frozen=True)
class MovieLens:
    """What differs between the MovieLens datasets: name, download, and the layouts a folder may hold."""

    label: str
    url: str
    md5: str
    formats: tuple[Format, ...]
    how_to_get: str


MOVIELENS = {
    "ml-100k": MovieLens("MovieLens-100K", GROUPLENS_URL, GROUPLENS_MD5, ("grouplens", "recbole", "dat"), HOW_TO_GET),
    "ml-1m": MovieLens("MovieLens-1M", ML1M_URL, ML1M_MD5, ("dat",), HOW_TO_GET_ML1M),
}


@dataclass(frozen=True)
class DatasetFiles:
    """A located copy of a dataset: its format, folder, where it was found, and its files by role
    (``inter``, ``item``, ``user``; ``paths`` lists them where the format's names do not say it all:
    the ``dat`` layout, whose user file is optional, and ``csv`` files, which are named by the config)."""

    format: Format
    folder: Path
    origin: str  # "path" | "raw_dir" | "recbole_wheel" | "grouplens" | "file"
    dataset: str = "ml-100k"
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def files(self) -> dict[str, Path]:
        if self.paths:
            return dict(self.paths)
        names = GROUPLENS_FILES if self.format == "grouplens" else RECBOLE_FILES
        return {k: self.folder / v for k, v in names.items()}


def dat_files(folder: Path) -> dict[str, Path] | None:
    """The ``dat`` layout's files in ``folder`` (user file only if present), or None without ratings/movies."""
    if not all((folder / f).is_file() for f in DAT_FILES.values()):
        return None
    found = {k: folder / v for k, v in DAT_FILES.items()}
    user = next((folder / n for n in DAT_USER_FILES if (folder / n).is_file()), None)
    return found | ({"user": user} if user is not None else {})


def _has(folder: Path, fmt: Format) -> bool:
    if fmt == "dat":
        return dat_files(folder) is not None
    names = GROUPLENS_FILES if fmt == "grouplens" else RECBOLE_FILES
    return all((folder / f).is_file() for f in names.values())


def detect_format(folder: Path, formats: tuple[Format, ...] = ("grouplens", "recbole", "dat")) -> Format | None:
    """The first of ``formats`` whose files ``folder`` holds."""
    return next((fmt for fmt in formats if _has(folder, fmt)), None)


def recbole_wheel_folder() -> Path | None:
    """The ML-100K folder inside an installed recbole wheel, found without importing recbole."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        folder = Path(loc) / "dataset_example" / "ml-100k"
        if folder.is_dir():
            return folder
    return None


def download_grouplens(raw_dir: Path, url: str = GROUPLENS_URL, md5: str = GROUPLENS_MD5,
                       dataset: str = "ml-100k") -> Path:
    """Download and unpack a GroupLens zip into ``raw_dir/<dataset>`` (checksum-verified, atomic)."""
    ml = MOVIELENS[dataset]
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 (fixed https URL)
            payload = resp.read()
    except OSError as exc:
        raise DataError(f"Could not download {ml.label}: {exc}.", where=url, fix=ml.how_to_get) from None
    digest = hashlib.md5(payload).hexdigest()  # noqa: S324 (GroupLens publishes md5)
    if digest != md5:
        raise DataError(
            f"Downloaded file has md5 {digest}, expected {md5}: corrupt or changed download.",
            where=url,
            fix="retry the download, or " + ml.how_to_get,
        )
    target = raw_dir / dataset
    try:
        archive = zipfile.ZipFile(io.BytesIO(payload))
    except zipfile.BadZipFile:
        raise DataError("Downloaded file is not a zip archive.", where=url, fix=ml.how_to_get) from None
    with atomic_directory(target) as tmp, archive as zf:
        for name in zf.namelist():
            base = os.path.basename(name)
            if base and not name.endswith("/"):
                (tmp / base).write_bytes(zf.read(name))
    return target


def _found(dataset: str, folder: Path, origin: str) -> DatasetFiles | None:
    """The dataset's files in ``folder`` in a layout it may have, or None."""
    fmt = detect_format(folder, MOVIELENS[dataset].formats)
    if fmt is None:
        return None
    return DatasetFiles(fmt, folder, origin, dataset, dat_files(folder) if fmt == "dat" else {})


def _layouts(dataset: str) -> str:
    formats = MOVIELENS[dataset].formats
    names = {"grouplens": "u.data, u.item, u.user (GroupLens)",
             "recbole": "ml-100k.inter, ml-100k.item, ml-100k.user (RecBole atomic files)",
             "dat": "ratings.dat and movies.dat, users.dat optional (GroupLens ML-1M / original UR4Rec layout)"}
    return " or ".join(names[f] for f in formats)


def locate_movielens(
    dataset: str = "ml-100k",
    data_source: str = "auto",
    data_path: str | os.PathLike | None = None,
    data_dir: str | os.PathLike = "data",
    allow_download: bool = True,
) -> DatasetFiles:
    """Find a MovieLens dataset following the order in the module docstring (or only ``data_source``)."""
    ml = MOVIELENS[dataset]
    raw_dir = Path(data_dir) / "raw"
    tried: list[str] = []

    def check(folder: Path | None, origin: str) -> DatasetFiles | None:
        if folder is None:
            tried.append(f"{origin}: not available")
            return None
        found = _found(dataset, folder, origin)
        if found is None:
            tried.append(f"{origin}: {folder} (no {_layouts(dataset)})")
        return found

    if data_source in ("auto", "path") and data_path is not None:
        if found := check(Path(data_path), "path"):
            return found
        # An explicit path that holds nothing is a mistake, not a reason to look elsewhere.
        other = detect_format(Path(data_path))
        hint = f" It holds {other} files, which are not {ml.label}'s." if other else ""
        raise DataError(
            f"No {ml.label} files in data_path '{data_path}'.{hint}",
            where=str(data_path),
            fix=f"point data_path at a folder with {_layouts(dataset)}, or set dataset to the one it holds",
        )
    if data_source == "path" and data_path is None:
        raise DataError("data_source is 'path' but data_path is not set.", where="config", fix="set data_path")
    if data_source in ("auto", "raw_dir"):
        if found := check(raw_dir / dataset, "raw_dir"):
            return found
    if data_source in ("auto", "recbole_wheel") and "recbole" in ml.formats:
        if found := check(recbole_wheel_folder(), "recbole_wheel"):
            return found
    if data_source == "grouplens" or (data_source == "auto" and allow_download):
        folder = download_grouplens(raw_dir, ml.url, ml.md5, dataset)
        if found := check(folder, "grouplens"):
            return found
    raise DataError(
        f"{ml.label} was not found. Looked in: " + "; ".join(tried) + ".",
        where=f"data_source={data_source}",
        fix=ml.how_to_get,
    )


def locate_ml100k(
    data_source: str = "auto",
    data_path: str | os.PathLike | None = None,
    data_dir: str | os.PathLike = "data",
    allow_download: bool = True,
) -> DatasetFiles:
    """Find ML-100K following the order in the module docstring (or only ``data_source``)."""
    return locate_movielens("ml-100k", data_source, data_path, data_dir, allow_download)


def locate_custom(interactions_file: str | os.PathLike, items_file: str | os.PathLike | None = None) -> DatasetFiles:
    """The generic interaction log named by the config (and its optional item metadata file)."""
    paths = {"inter": Path(interactions_file)} | ({"item": Path(items_file)} if items_file is not None else {})
    for role, path in paths.items():
        if not path.is_file():
            key = "interactions_file" if role == "inter" else "items_file"
            raise DataError(f"The file named by {key} does not exist: '{path}'.", where=f"config key {key}",
                            fix=f"set {key} to an existing CSV/TSV file (relative paths start at the repository "
                                "root)")
    return DatasetFiles("csv", paths["inter"].parent, "file", "custom", paths)
