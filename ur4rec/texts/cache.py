"""On-disk caches: generated texts (append-only JSONL) and embeddings (per-text, atomic shards).

Texts: one JSON object per line, flushed and fsynced as each text arrives, so a crash loses at most
the texts in flight. A torn last line (the process died mid-write) is ignored on reading and
truncated away before the next append. Later records for the same id win.

Embeddings: keyed by (encoder id, sha256 of the text), stored in ``.npz`` shards each written
atomically. One changed text re-encodes one text; a crash loses at most the batch being encoded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import uuid
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Self

import numpy as np

from ur4rec.io import atomic_write_bytes


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class TextCache:
    """Append-only JSONL of text records ``{"id", "text", "origin", ...}`` for one kind."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._fh = None
        self.torn_lines = 0

    def load(self) -> dict[int, dict[str, Any]]:
        """Every complete record by id (a torn or corrupt line is skipped and counted)."""
        out: dict[int, dict[str, Any]] = {}
        self.torn_lines = 0
        if not self.path.is_file():
            return out
        with open(self.path, "rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    self.torn_lines += 1  # torn last line: the writer died mid-record
                    continue
                try:
                    rec = json.loads(raw)
                    out[int(rec["id"])] = rec
                except (ValueError, KeyError, TypeError):
                    self.torn_lines += 1
        return out

    def _repair_tail(self) -> None:
        """Cut a torn last line so that the next record starts on its own line."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 1))
            if fh.read(1) == b"\n":
                return
            # find the last newline and truncate after it
            pos, chunk = size, 4096
            while pos > 0:
                start = max(0, pos - chunk)
                fh.seek(start)
                block = fh.read(pos - start)
                idx = block.rfind(b"\n")
                if idx >= 0:
                    fh.truncate(start + idx + 1)
                    break
                pos = start
            else:
                fh.truncate(0)
            fh.flush()
            os.fsync(fh.fileno())

    def append(self, record: dict[str, Any]) -> None:
        """Write one record durably (flush + fsync). Thread-safe."""
        line = (json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
        with self._lock:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._repair_tail()
                self._fh = open(self.path, "ab")  # noqa: SIM115 (kept open across appends)
            self._fh.write(line)
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class EmbeddingCache:
    """Vectors by text hash for one encoder, in atomically written ``.npz`` shards."""

    MAX_SHARDS = 32

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._vectors: dict[str, np.ndarray] | None = None

    def _shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard-*.npz")) if self.folder.is_dir() else []

    def load(self) -> dict[str, np.ndarray]:
        if self._vectors is None:
            vectors: dict[str, np.ndarray] = {}
            for shard in self._shards():
                try:
                    with np.load(shard, allow_pickle=False) as z:
                        keys, vecs = z["keys"], z["vecs"]
                except Exception as exc:  # noqa: BLE001 - an unreadable shard only costs re-encoding its texts
                    warnings.warn(f"ignoring unreadable embedding shard {shard}: {exc}", stacklevel=2)
                    continue
                vectors.update(zip(keys.tolist(), vecs))
            self._vectors = vectors
        return self._vectors

    def missing(self, hashes: Iterable[str]) -> list[str]:
        have = self.load()
        return [h for h in dict.fromkeys(hashes) if h not in have]

    @staticmethod
    def _npz_bytes(keys: list[str], vecs: np.ndarray) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, keys=np.asarray(keys, dtype="U64"), vecs=np.asarray(vecs, dtype=np.float32))
        return buf.getvalue()

    def add(self, keys: list[str], vecs: np.ndarray) -> None:
        """Store one batch durably (one atomic shard)."""
        if not keys:
            return
        name = f"shard-{uuid.uuid4().hex}.npz"
        atomic_write_bytes(self.folder / name, self._npz_bytes(keys, vecs))
        self.load().update(zip(keys, np.asarray(vecs, dtype=np.float32)))

    def compact(self) -> None:
        """Merge shards into one when there are many (new file first, then old ones removed)."""
        shards = self._shards()
        if len(shards) <= self.MAX_SHARDS:
            return
        vectors = self.load()
        keys = list(vectors)
        merged = f"shard-{uuid.uuid4().hex}.npz"
        atomic_write_bytes(self.folder / merged,
                           self._npz_bytes(keys, np.stack([vectors[k] for k in keys]) if keys else
                                           np.zeros((0, 0), np.float32)))
        for shard in shards:
            shard.unlink(missing_ok=True)

    def get(self, hashes: list[str], dim: int) -> np.ndarray:
        have = self.load()
        out = np.zeros((len(hashes), dim), dtype=np.float32)
        for row, h in enumerate(hashes):
            if h is not None:
                out[row] = have[h]
        return out
