"""Texts supplied by the user: JSON objects mapping raw dataset id -> text.

``user_text_file`` maps raw user ids (u.user's first column), ``item_text_file`` raw item ids
(u.item's first column); a custom log's ids may be strings ("A1B2C3"), matched as written (integer
ids also match with leading zeros or spaces: "042" is 42). Ids with no entry fall back to the
template text and are counted; a file that is not a JSON object, a key that is not an integer when
the dataset's ids are, or a value that is not a non-empty string is an error naming the file and the id.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from ur4rec.config import Config
from ur4rec.data.dataset import PreparedData
from ur4rec.errors import UR4RecError
from ur4rec.io import sha256_file, sha256_json
from ur4rec.texts.base import Kind, OnResult, PreferenceTextSource
from ur4rec.texts.template import TemplateSource, item_text, user_text

KEYS = {"user": "user_text_file", "item": "item_text_file"}


def a_type(value: object) -> str:
    """The value's type name with its indefinite article: "an int", "a float", "a NoneType"."""
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def normalise_id(raw: object) -> str:
    """A raw id as text: integers without leading zeros or spaces ("042" -> "42"), others stripped."""
    text = str(raw).strip()
    return str(int(text)) if re.fullmatch(r"\d+", text) else text


def read_text_file(path: Path, kind: Kind) -> dict[str, str]:
    """Parse and validate one text file (normalised raw id -> text)."""
    key = KEYS[kind]
    if not path.is_file():
        raise UR4RecError(f"The {kind} text file does not exist.", where=f"{path} (config key {key})",
                          fix=f"set {key} to a JSON file mapping raw {kind} id -> text")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UR4RecError(f"The {kind} text file is not UTF-8 text.", where=str(path),
                          fix="save it as UTF-8 JSON") from exc
    except json.JSONDecodeError as exc:
        raise UR4RecError(f"The {kind} text file is not valid JSON: {exc.msg}.",
                          where=f"{path}, line {exc.lineno} column {exc.colno}",
                          fix='write one JSON object, e.g. {"1": "likes 90s comedies", "2": "..."}') from exc
    if not isinstance(obj, dict):
        raise UR4RecError(f"The {kind} text file must hold one JSON object (raw id -> text), not "
                          f"{a_type(obj)}.", where=str(path),
                          fix='write {"<raw id>": "<text>", ...}')
    out: dict[str, str] = {}
    for raw, text in obj.items():
        rid = normalise_id(raw)
        if not rid:
            raise UR4RecError(f"The {kind} text file has an empty {kind} id.", where=f"{path}, id {raw!r}",
                              fix=f"keys must be the dataset's raw {kind} ids, e.g. \"42\"")
        if not isinstance(text, str) or not text.strip():
            what = "an empty text" if isinstance(text, str) else f"{a_type(text)}, not a string"
            raise UR4RecError(f"The {kind} text file has {what} for {kind} {raw!r}.",
                              where=f"{path}, id {raw!r}",
                              fix="give every id a non-empty string, or leave the id out (it then gets the "
                                  "template text)")
        if rid in out:
            raise UR4RecError(f"The {kind} text file has {kind} id {rid!r} twice.", where=f"{path}, id {raw!r}",
                              fix="keep one entry per id")
        out[rid] = text.strip()
    return out


class FilesSource(PreferenceTextSource):
    name = "files"
    model = "files"
    origin = "file"

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self._template = TemplateSource()
        self._texts: dict[str, dict[str, str]] = {}

    def _path(self, kind: Kind) -> Path | None:
        key = KEYS[kind]
        return self.cfg.path(key) if getattr(self.cfg, key) else None

    def check_ready(self) -> None:
        if self._path("user") is None and self._path("item") is None:
            raise UR4RecError("text_source is 'files' but neither user_text_file nor item_text_file is set.",
                              where="config keys user_text_file / item_text_file",
                              fix="set at least one of them to a JSON file mapping raw id -> text")
        for kind in KEYS:
            self.texts(kind)  # validate both files before anything is cached

    def texts(self, kind: Kind) -> dict[str, str]:
        if kind not in self._texts:
            path = self._path(kind)
            self._texts[kind] = read_text_file(path, kind) if path is not None else {}
        return self._texts[kind]

    def prompt_hash(self) -> str:
        files = {k: (sha256_file(p) if (p := self._path(k)) is not None and p.is_file() else None) for k in KEYS}
        return sha256_json({"files": files, "fallback": self._template.prompt_hash()})[:16]

    def generate(self, data: PreparedData, kind: Kind, ids: Sequence[int], on_result: OnResult,
                 progress: bool = True) -> None:
        texts = self.texts(kind)
        frame = data.users if kind == "user" else data.items
        raw_of = {int(i): normalise_id(r) for i, r in zip(frame[kind], frame["raw_id"])}
        known = set(raw_of.values())
        if all(r.isdigit() for r in known):  # integer ids (MovieLens): a non-integer key is a mistake
            bad = next((r for r in texts if not r.isdigit()), None)
            if bad is not None:
                raise UR4RecError(f"The {kind} text file has a key that is not an integer {kind} id: {bad!r}.",
                                  where=f"{self._path(kind)}, id {bad!r}",
                                  fix=f"keys must be the dataset's raw {kind} ids, e.g. \"42\"")
        self.stats.extra.setdefault("unknown_ids", {})[kind] = sum(1 for r in texts if r not in known)
        view = self._template.view(data)
        fallback = user_text if kind == "user" else item_text
        for i in ids:
            raw = raw_of.get(int(i))
            if raw is not None and raw in texts:
                on_result(int(i), texts[raw], {"raw_id": raw})
            else:
                self.stats.fallback[kind] += 1
                on_result(int(i), fallback(view, int(i)), {"raw_id": raw, "origin": "template", "fallback": True})
