"""MovieLens-1M and the original UR4Rec layout (ratings.dat + movies.dat [+ users.dat]): reading,
locating, downloading (faked: nothing touches the network), preparing, and every malformed file."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest

from tests.conftest import synthetic_ml, write_grouplens
from ur4rec.cli import main
from ur4rec.config import CONFIG_DIR, load_config
from ur4rec.data import PreparedData, prepare
from ur4rec.data import sources as sources_mod
from ur4rec.data.readers import AGE_GROUPS, OCCUPATIONS
from ur4rec.data.sources import ML1M_MD5, ML1M_URL, locate_movielens, recbole_wheel_folder
from ur4rec.errors import ConfigError, DataError
from ur4rec.plots.data import split_sanity_checks
from ur4rec.texts.leakage import audit_user_texts
from ur4rec.texts.prompts import TrainingView
from ur4rec.texts.template import demographics_text, template_texts

AGE_CODES = sorted(AGE_GROUPS)


def ml1m_users(n_users: int) -> list[tuple]:
    """ML-1M users.dat rows: (id, gender, age code, occupation code, zip)."""
    return [(u, "MF"[u % 2], AGE_CODES[u % len(AGE_CODES)], u % len(OCCUPATIONS), f"{55000 + u}")
            for u in range(1, n_users + 1)]


def write_dat(folder: Path, ds: dict, users: list[tuple] | None = None, user_file: str = "users.dat") -> Path:
    """The ``dat`` layout: ratings.dat, movies.dat and (unless ``users`` is None) the user file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in ds["inter"]))
    (folder / "movies.dat").write_text(
        "".join(f"{i}::{title} ({year})::{'|'.join(g)}\n" for i, title, year, g in ds["items"]), encoding="latin-1")
    if users is not None:
        (folder / user_file).write_text("".join("::".join(map(str, row)) + "\n" for row in users),
                                        encoding="latin-1")
    return folder


@pytest.fixture
def ml1m_dir(tmp_path: Path, synthetic: dict) -> Path:
    return write_dat(tmp_path / "ml-1m", synthetic, ml1m_users(len(synthetic["users"])))


def _no_processed_output(cfg) -> None:
    """Nothing half-written: no processed folder (nor a temporary one) is left after a failure."""
    root = cfg.path("data_dir") / "processed"
    assert not root.exists() or not any(root.rglob("*")), sorted(root.rglob("*"))


# ---------------------------------------------------------------------------- reading and preparing
def test_ml1m_prepare_gives_counts_splits_and_decoded_users(tmp_cfg, ml1m_dir: Path, synthetic: dict) -> None:
    res = prepare(tmp_cfg(dataset="ml-1m", data_path=str(ml1m_dir)))
    n_users, n_inter = len(synthetic["users"]), len(synthetic["inter"])
    assert (res.users, res.interactions, res.valid, res.test) == (n_users, n_inter, n_users, n_users)
    assert res.train == n_inter - 2 * n_users
    assert res.items == len({i for _, i, _, _ in synthetic["inter"]})
    assert (res.source, res.source_format) == ("path", "dat")
    assert Path(res.path).parent.name == "ml-1m"
    data = PreparedData.load(res.path)
    assert split_sanity_checks(data)["passed"].all()
    users = data.users.set_index("raw_id")
    # user 2: age code AGE_CODES[2] = 25, occupation 2 = artist; user 7: code 1 = under 18
    assert (users.loc[2, "age"], users.loc[2, "age_group"], users.loc[2, "occupation"]) == (25, "25-34", "artist")
    assert (users.loc[7, "age"], users.loc[7, "age_group"]) == (1, "Under 18")
    items = data.items.set_index("raw_id")
    first = synthetic["items"][0]  # (1, "Film 1", 1971, [...])
    assert (items.loc[1, "title"], items.loc[1, "year"]) == ("Film 1", first[2])
    assert set(items.loc[1, "genres"].split("|")) == set(first[3])


def test_ml1m_demographics_read_as_age_ranges(tmp_cfg, ml1m_dir: Path) -> None:
    data = PreparedData.load(prepare(tmp_cfg(dataset="ml-1m", data_path=str(ml1m_dir))).path)
    view = TrainingView(data)
    by_raw = dict(zip(data.users["raw_id"], data.users["user"]))
    assert demographics_text(view, by_raw[2]) == "Age 25-34, male, artist."
    assert demographics_text(view, by_raw[7]) == "Age under 18, female, executive/managerial."
    assert demographics_text(view, by_raw[6]) == "Age 56+, male, doctor/health care."
    texts = template_texts(data, "user", demographics=True)
    assert "Age 25-34, male, artist." in texts[by_raw[2]]
    assert audit_user_texts(data, texts).verdict == "pass"


def test_ml1m_from_raw_dir_and_the_cli(tmp_cfg, tmp_path: Path, synthetic: dict, capsys) -> None:
    cfg = tmp_cfg(dataset="ml-1m")
    write_dat(cfg.path("data_dir") / "raw" / "ml-1m", synthetic, ml1m_users(len(synthetic["users"])))
    assert main(["prepare", "--json", "--set", "dataset=ml-1m", "--set", f"data_dir={cfg.data_dir}",
                 "--set", "allow_download=false"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["source"], out["source_format"], out["users"]) == ("raw_dir", "dat", len(synthetic["users"]))
    assert prepare(cfg).fingerprint == out["fingerprint"]  # the same data, found again: nothing to do
    assert not prepare(cfg).created


def test_ml1m_quick_profile_loads_and_prepares(tmp_cfg, tmp_path: Path) -> None:
    ds = synthetic_ml(n_users=150, n_items=60, per_user=20, seed=3)
    folder = write_dat(tmp_path / "big", ds, ml1m_users(150))
    cfg = load_config(CONFIG_DIR / "ml1m_quick.yaml", {"data_path": str(folder), "data_dir": str(tmp_path / "d"),
                                                       "allow_download": False})
    assert (cfg.dataset, cfg.profile, cfg.max_users) == ("ml-1m", "quick", 120)
    res = prepare(cfg)
    assert (res.users, res.valid, res.test) == (120, 120, 120)
    assert res.interactions == sum(1 for u, *_ in ds["inter"] if u <= 120)


# ---------------------------------------------------------------------------- the original UR4Rec layout
def test_original_layout_for_ml100k_matches_the_grouplens_files(tmp_cfg, tmp_path: Path, synthetic: dict) -> None:
    """ratings.dat + movies.dat + user.dat (the original's multimodal name; ages in years, ML-1M's
    occupation codes) prepare to the same sequences, splits and items as u.data/u.item/u.user."""
    users = [(u, g, a, 17, z) for u, a, g, _, z in synthetic["users"]]
    dat = write_dat(tmp_path / "M_ML-100K", synthetic, users, user_file="user.dat")
    gl = write_grouplens(tmp_path / "gl", synthetic)
    a = PreparedData.load(prepare(tmp_cfg(data_path=str(dat))).path)
    b = PreparedData.load(prepare(tmp_cfg(data_path=str(gl), data_dir=str(tmp_path / "d2"))).path)
    assert a.meta["source"]["format"] == "dat" and Path(a.path).parent.name == "ml-100k"
    assert a.interactions.equals(b.interactions)
    cols = ["item", "raw_id", "title", "genres"]
    assert a.items[cols].equals(b.items[cols]) and list(a.items["year"]) == list(b.items["year"])
    assert list(a.users["age"]) == list(b.users["age"])  # years, not ML-1M codes
    assert set(a.users["occupation"]) == {"technician/engineer"} and "age_group" not in a.users.columns


@pytest.mark.parametrize("dataset", ["ml-100k", "ml-1m"])
def test_original_layout_without_users_has_unknown_demographics(tmp_cfg, tmp_path: Path, synthetic: dict,
                                                                 dataset: str) -> None:
    folder = write_dat(tmp_path / "orig", synthetic, users=None)
    res = prepare(tmp_cfg(dataset=dataset, data_path=str(folder)))
    n_users = len(synthetic["users"])
    assert (res.users, res.valid, res.test) == (n_users, n_users, n_users)
    data = PreparedData.load(res.path)
    assert len(data.users) == n_users and data.users[["age", "gender", "occupation"]].isna().all().all()
    view = TrainingView(data)
    assert all(demographics_text(view, u) == "" for u in range(n_users))
    texts = template_texts(data, "user", demographics=True)
    assert texts == template_texts(data, "user")  # nothing known, nothing added
    assert audit_user_texts(data, texts).verdict == "pass"


# ---------------------------------------------------------------------------- locating and downloading
def _fake_zip(ds: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ml-1m/ratings.dat", "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in ds["inter"]))
        zf.writestr("ml-1m/movies.dat", "".join(f"{i}::{t} ({y})::{'|'.join(g)}\n" for i, t, y, g in ds["items"]))
        zf.writestr("ml-1m/users.dat", "".join("::".join(map(str, r)) + "\n" for r in ml1m_users(len(ds["users"]))))
        zf.writestr("ml-1m/README", "fake\n")
    return buf.getvalue()


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def test_ml1m_download_is_the_grouplens_zip_checksum_verified(tmp_cfg, synthetic: dict, monkeypatch) -> None:
    payload = _fake_zip(synthetic)
    asked: list[str] = []

    def fake_urlopen(url, timeout=None):
        asked.append(url)
        return _Response(payload)

    monkeypatch.setattr(sources_mod.urllib.request, "urlopen", fake_urlopen)
    assert (ML1M_URL, ML1M_MD5) == ("https://files.grouplens.org/datasets/movielens/ml-1m.zip",
                                    "c4d9eecfca2ab87c1945afe126590906")
    cfg = tmp_cfg(dataset="ml-1m", data_source="grouplens")
    with pytest.raises(DataError, match="md5") as err:  # the fake is not GroupLens' file
        prepare(cfg)
    assert asked == [ML1M_URL] and ML1M_MD5 in str(err.value)
    assert not (cfg.path("data_dir") / "raw" / "ml-1m").exists()
    _no_processed_output(cfg)
    # with the fake's own checksum it unpacks into data/raw/ml-1m/ and prepares
    real = sources_mod.MOVIELENS["ml-1m"]
    monkeypatch.setitem(sources_mod.MOVIELENS, "ml-1m",
                        dataclasses.replace(real, md5=hashlib.md5(payload).hexdigest()))
    res = prepare(cfg)
    assert (res.source, res.users) == ("grouplens", len(synthetic["users"]))
    raw = cfg.path("data_dir") / "raw" / "ml-1m"
    assert sorted(p.name for p in raw.iterdir()) == ["README", "movies.dat", "ratings.dat", "users.dat"]


def test_ml1m_not_found_says_how_to_get_it(tmp_cfg, monkeypatch) -> None:
    monkeypatch.setattr(sources_mod.urllib.request, "urlopen", lambda *a, **k: pytest.fail("network"))
    cfg = tmp_cfg(dataset="ml-1m", allow_download=False)
    with pytest.raises(DataError) as err:
        prepare(cfg)
    msg = str(err.value)
    assert "MovieLens-1M was not found" in msg and "ml-1m.zip" in msg and "data/raw/ml-1m" in msg
    assert "recbole_wheel" not in msg  # the wheel ships ML-100K only: not looked in
    _no_processed_output(cfg)


def test_ml1m_folder_holding_ml100k_files_is_refused(tmp_path: Path, grouplens_dir: Path) -> None:
    with pytest.raises(DataError, match="No MovieLens-1M files") as err:
        locate_movielens("ml-1m", "auto", grouplens_dir, tmp_path / "data", allow_download=False)
    assert "grouplens files" in str(err.value) and "ratings.dat" in err.value.fix


def test_ml1m_config_errors(tmp_cfg) -> None:
    with pytest.raises(ConfigError, match="recbole_wheel ships only ML-100K"):
        tmp_cfg(dataset="ml-1m", data_source="recbole_wheel")
    with pytest.raises(ConfigError, match="ml-100k', 'ml-1m' or 'custom'"):
        tmp_cfg(dataset="ml-20m")


@pytest.mark.skipif(recbole_wheel_folder() is None, reason="make setup installs recbole==1.2.1 --no-deps")
def test_ml100k_fingerprint_is_unchanged(tmp_cfg) -> None:
    """Existing caches under data/processed/ml-100k/ are still found: ML-100K's fingerprints did not move."""
    assert prepare(tmp_cfg()).fingerprint.startswith("04c278e2c373")
    assert prepare(load_config(CONFIG_DIR / "quick.yaml", {"data_dir": tmp_cfg().data_dir})).fingerprint.startswith(
        "8fe5e981c16e")


# ---------------------------------------------------------------------------- malformed files
def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="latin-1").splitlines(keepends=True)


def _tabs(folder: Path) -> None:
    (folder / "ratings.dat").write_text((folder / "ratings.dat").read_text().replace("::", "\t"))


def _missing_column(folder: Path) -> None:
    lines = [line.rsplit("::", 1)[0] + "\n" for line in _lines(folder / "ratings.dat")]
    (folder / "ratings.dat").write_text("".join(lines))


def _text_timestamp(folder: Path) -> None:
    lines = _lines(folder / "ratings.dat")
    lines[2] = lines[2].rsplit("::", 1)[0] + "::yesterday\n"
    (folder / "ratings.dat").write_text("".join(lines))


def _no_final_newline(folder: Path) -> None:
    raw = (folder / "ratings.dat").read_bytes()
    (folder / "ratings.dat").write_bytes(raw[:-4])


def _cut_row(folder: Path) -> None:
    lines = _lines(folder / "ratings.dat")
    lines[4] = "::".join(lines[4].split("::")[:2]) + "\n"
    (folder / "ratings.dat").write_text("".join(lines))


def _bad_age_code(folder: Path) -> None:
    lines = _lines(folder / "users.dat")
    parts = lines[1].split("::")
    lines[1] = "::".join([parts[0], parts[1], "24", *parts[3:]])
    (folder / "users.dat").write_text("".join(lines), encoding="latin-1")


def _bad_occupation_code(folder: Path) -> None:
    lines = _lines(folder / "users.dat")
    parts = lines[5].split("::")
    lines[5] = "::".join([*parts[:3], "21", *parts[4:]])
    (folder / "users.dat").write_text("".join(lines), encoding="latin-1")


def _movies_cut_short(folder: Path) -> None:
    (folder / "movies.dat").write_text("".join(_lines(folder / "movies.dat")[:5]), encoding="latin-1")


def _users_cut_short(folder: Path) -> None:
    (folder / "users.dat").write_text("".join(_lines(folder / "users.dat")[:5]), encoding="latin-1")


MALFORMED = {
    # name: (break the folder, file named in `where`, line named in `where` or None, words of the message)
    "wrong separator": (_tabs, "ratings.dat", 1, "not '::'-separated"),
    "missing column": (_missing_column, "ratings.dat", 1, "3 fields, expected 4"),
    "non-numeric timestamp": (_text_timestamp, "ratings.dat", 3, "non-numeric value 'yesterday'"),
    "no final newline": (_no_final_newline, "ratings.dat", None, "truncated"),
    "cut row": (_cut_row, "ratings.dat", 5, "2 fields, expected 4"),
    "age code": (_bad_age_code, "users.dat", 2, "code 24, which is not one of [1, 18, 25"),
    "occupation code": (_bad_occupation_code, "users.dat", 6, "code 21"),
    "movies cut short": (_movies_cut_short, "movies.dat", None, "item file looks truncated"),
    "users cut short": (_users_cut_short, "users.dat", None, "user file looks truncated"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_ml1m_files_are_clear_errors_and_write_nothing(tmp_cfg, ml1m_dir: Path, case: str) -> None:
    breaker, name, line, words = MALFORMED[case]
    breaker(ml1m_dir)
    cfg = tmp_cfg(dataset="ml-1m", data_path=str(ml1m_dir))
    with pytest.raises(DataError) as err:
        prepare(cfg)
    e = err.value
    assert words in e.what and e.fix, str(e)
    assert e.where.startswith(str(ml1m_dir / name)), e.where
    if line is not None:
        assert e.where == f"{ml1m_dir / name}, line {line}"
    elif "truncated" in words and "file looks" not in words:
        assert e.where.startswith(f"{ml1m_dir / name}, line ")
    _no_processed_output(cfg)
