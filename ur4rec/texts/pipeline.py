"""Texts -> cache -> embeddings: what the CLI and the trainer call.

On-disk layout (under ``cfg.path("data_dir")``)::

    texts/<dataset>/<prepared fingerprint[:12]>/
        <source>-<key>/            key = hash(source, model, prompt hash); one folder per text source
            manifest.json          source, model, origin, prompt hash (never an API key)
            users.jsonl            append-only text records {"id", "text", "origin", ...}
            items.jsonl
            <encoder key>/user.npy, item.npy, meta.json   assembled matrices (complete builds only)
        embeddings/<encoder key>/shard-*.npz              per-text vectors keyed by sha256(text)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ur4rec.config import Config
from ur4rec.data.dataset import PreparedData
from ur4rec.devices import resolve_device
from ur4rec.errors import UR4RecError
from ur4rec.io import atomic_write_bytes, atomic_write_json, sha256_json
from ur4rec.texts.base import KINDS, Kind, PreferenceTextSource
from ur4rec.texts.cache import EmbeddingCache, TextCache, text_sha
from ur4rec.texts.encoder import EncoderSpec, load_encoder, resolve_encoder
from ur4rec.texts.files import FilesSource
from ur4rec.texts.leakage import LeakageAudit, audit_user_texts, enforce
from ur4rec.texts.local_llm import TransformersSource
from ur4rec.texts.openai_source import OpenAISource
from ur4rec.texts.template import TemplateSource

if TYPE_CHECKING:
    import torch

ORIGIN_LABEL = {"template": "template text (not LLM-written)", "llm": "LLM-generated text",
                "file": "user-supplied text"}


def make_source(cfg: Config, **kwargs: Any) -> PreferenceTextSource:
    """The text source ``cfg.text_source`` names (``kwargs`` go to its constructor, e.g. backoff_base)."""
    if cfg.text_source == "template":
        return TemplateSource(demographics=cfg.template_demographics)
    if cfg.text_source == "openai":
        return OpenAISource(cfg, **kwargs)
    if cfg.text_source == "transformers":
        return TransformersSource(cfg)
    if cfg.text_source == "files":
        return FilesSource(cfg)
    raise UR4RecError(f"Unknown text_source {cfg.text_source!r}.", where="config key text_source",
                      fix="use template, openai, transformers or files")  # pragma: no cover


def texts_root(cfg: Config, data: PreparedData) -> Path:
    dataset = data.meta.get("params", {}).get("dataset", cfg.dataset)
    return cfg.path("data_dir") / "texts" / dataset / data.fingerprint[:12]


def source_folder(root: Path, source: PreferenceTextSource) -> Path:
    key = sha256_json({"source": source.name, "model": source.model, "prompt": source.prompt_hash()})[:12]
    return root / f"{source.name}-{key}"


def all_ids(data: PreparedData, kind: Kind) -> list[int]:
    return list(range(data.num_users)) if kind == "user" else list(range(1, data.num_items + 1))


@dataclass
class TextSet:
    """Texts of one source. ``items``/``item_origins`` have index 0 = padding ("")."""

    source: str
    model: str
    origin: str
    folder: Path
    users: list[str | None]
    items: list[str | None]
    user_origins: list[str | None]
    item_origins: list[str | None]
    new_texts: int
    stats: dict[str, Any]
    torn_lines: int = 0

    @property
    def complete(self) -> bool:
        return all(t is not None for t in self.users) and all(t is not None for t in self.items[1:])

    def coverage(self) -> dict[str, int]:
        """Texts that came from the source itself (template fallbacks of other sources excluded)."""
        return {"users": sum(o == self.origin for o in self.user_origins),
                "items": sum(o == self.origin for o in self.item_origins[1:])}

    def fallback(self) -> dict[str, int]:
        return {"users": sum(o is not None and o != self.origin for o in self.user_origins),
                "items": sum(o is not None and o != self.origin for o in self.item_origins[1:])}

    def paths(self) -> dict[str, str]:
        return {"folder": str(self.folder), "users_jsonl": str(self.folder / "users.jsonl"),
                "items_jsonl": str(self.folder / "items.jsonl")}


def generate_texts(cfg: Config, data: PreparedData, limit: int | None = None, progress: bool = True,
                   source: PreferenceTextSource | None = None) -> TextSet:
    """Texts for every user and item (the first ``limit`` of each if given), cached and resumable."""
    source = source or make_source(cfg)
    root = texts_root(cfg, data)
    folder = source_folder(root, source)
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        atomic_write_json(manifest, {"source": source.name, "model": source.model, "origin": source.origin,
                                     "prompt_hash": source.prompt_hash(), "dataset_fingerprint": data.fingerprint})
    caches = {k: TextCache(folder / f"{k}s.jsonl") for k in KINDS}
    records: dict[str, dict[int, dict]] = {}
    missing: dict[str, list[int]] = {}
    torn = 0
    for kind in KINDS:
        ids = all_ids(data, kind)
        if limit is not None:
            ids = ids[:limit]
        recs = caches[kind].load()
        torn += caches[kind].torn_lines
        todo = []
        for i in ids:
            rec = recs.get(i)
            if rec is None:
                todo.append(i)
            elif "prompt_sha" in rec and rec["prompt_sha"] != source.prompt_digest(data, kind, i):
                todo.append(i)  # the prompt for this id changed: its cached text is stale
        records[kind], missing[kind] = recs, todo

    new = 0
    if any(missing.values()):
        source.check_ready()  # e.g. a missing API key fails here, before any request
        for kind in KINDS:
            recs = records[kind]

            def on_result(i: int, text: str, extra: dict[str, Any], kind: Kind = kind, recs=recs) -> None:
                nonlocal new
                rec = {"id": int(i), "kind": kind, "text": text, "origin": source.origin, "source": source.name,
                       "model": source.model} | extra
                caches[kind].append(rec)
                recs[int(i)] = rec
                new += 1

            try:
                source.generate(data, kind, missing[kind], on_result, progress=progress)
            finally:
                caches[kind].close()

    def column(kind: Kind, field_: str) -> list:
        recs = records[kind]
        ids = all_ids(data, kind)
        if limit is not None:
            ids = ids[:limit]
        wanted = set(ids)
        col = [recs[i][field_] if i in recs and i in wanted else None for i in all_ids(data, kind)]
        return col if kind == "user" else ["", *col]

    return TextSet(source.name, source.model, source.origin, folder, column("user", "text"), column("item", "text"),
                   column("user", "origin"), column("item", "origin"), new, source.stats.to_dict(), torn)


def embed(cfg: Config, texts: list[str | None], root: Path, spec: EncoderSpec | None = None,
          progress: bool = True) -> tuple[np.ndarray, int, EncoderSpec]:
    """Embeddings of ``texts`` (rows of zeros for None/""), encoding only texts not cached yet.

    Returns (matrix float32 [len(texts), dim], number of texts newly encoded, encoder spec).
    """
    spec = spec or resolve_encoder(cfg)
    cache = EmbeddingCache(root / "embeddings" / spec.key)
    hashes = [text_sha(t) if t else None for t in texts]
    todo = cache.missing(h for h in hashes if h is not None)
    if todo:
        # the encoder runs where the model will (a GPU if there is one); the cache keeps the vectors
        encoder = load_encoder(spec, str(resolve_device(cfg.device)))
        if encoder.dim != cfg.text_embedding_dim:
            raise UR4RecError(f"The sentence encoder gives {encoder.dim}-d vectors but text_embedding_dim is "
                              f"{cfg.text_embedding_dim}.", where=f"config key text_embedding_dim ({spec.location})",
                              fix=f"set text_embedding_dim: {encoder.dim}")
        by_hash = {}
        for t, h in zip(texts, hashes):
            if h is not None:
                by_hash.setdefault(h, t)
        from tqdm.auto import tqdm

        chunk = cfg.text_batch_size * 8  # one durable shard per chunk
        with tqdm(total=len(todo), desc=f"embedding ({spec.name})", unit="text", disable=not progress) as bar:
            for start in range(0, len(todo), chunk):
                keys = todo[start:start + chunk]
                vecs = encoder.encode([by_hash[k] for k in keys], batch_size=cfg.text_batch_size)
                cache.add(keys, vecs)
                bar.update(len(keys))
        cache.compact()
    have = cache.load()
    dim = next(iter(have.values())).shape[0] if have else cfg.text_embedding_dim
    if dim != cfg.text_embedding_dim:
        raise UR4RecError(f"Cached embeddings are {dim}-d but text_embedding_dim is {cfg.text_embedding_dim}.",
                          where=str(cache.folder), fix=f"set text_embedding_dim: {dim}")
    return cache.get(hashes, dim), len(todo), spec


@dataclass
class TextEmbeddings:
    """What the trainer gets: texts and their L2-normalised sentence embeddings.

    ``user`` is float32 [num_users, dim]; ``item`` float32 [num_items + 1, dim] with row 0 = zeros
    (padding). Tensors are ordinary (not inference-mode) tensors, safe to feed trainable layers.
    """

    user: torch.Tensor
    item: torch.Tensor
    user_texts: list[str]
    item_texts: list[str]
    source: str
    encoder: str
    model: str = ""
    origin: str = ""
    encoder_key: str = ""
    coverage: dict[str, int] = field(default_factory=dict)
    user_origins: list[str] = field(default_factory=list)
    item_origins: list[str] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return int(self.user.shape[1])


@dataclass
class BuildResult:
    texts: TextSet
    user: np.ndarray
    item: np.ndarray
    encoder: EncoderSpec
    new_embeddings: int
    seconds: float
    outputs: dict[str, str] = field(default_factory=dict)
    leakage: LeakageAudit | None = None

    def to_dict(self) -> dict[str, Any]:
        t = self.texts
        return {
            "source": t.source, "model": t.model, "origin": t.origin,
            "origin_label": ORIGIN_LABEL.get(t.origin, t.origin),
            "users": sum(x is not None for x in t.users), "items": sum(x is not None for x in t.items[1:]),
            "dim": int(self.user.shape[1]), "encoder": self.encoder.name, "encoder_key": self.encoder.key,
            "encoder_origin": self.encoder.origin, "new_texts": t.new_texts, "new_embeddings": self.new_embeddings,
            "coverage": t.coverage(), "fallback": t.fallback(), "complete": t.complete, "stats": t.stats,
            "torn_lines_skipped": t.torn_lines, "seconds": round(self.seconds, 3), "paths": t.paths() | self.outputs,
            "leakage": self.leakage.to_dict() if self.leakage is not None else None,
        }


def build_texts(cfg: Config, data: PreparedData, limit: int | None = None, progress: bool = True,
                source: PreferenceTextSource | None = None) -> BuildResult:
    """Generate (or load) texts and embed them; write the assembled matrices when complete."""
    t0 = time.perf_counter()
    ts = generate_texts(cfg, data, limit=limit, progress=progress, source=source)
    leakage = audit_texts(cfg, data, ts)
    root = texts_root(cfg, data)
    spec = resolve_encoder(cfg)
    user, n_user, spec = embed(cfg, ts.users, root, spec, progress)
    item, n_item, spec = embed(cfg, ts.items, root, spec, progress)
    item[0] = 0.0
    outputs: dict[str, str] = {}
    if ts.complete:
        out = ts.folder / spec.key
        text_hash = sha256_json({"users": ts.users, "items": ts.items})
        meta_path = out / "meta.json"
        old = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        if old.get("text_hash") != text_hash or n_user or n_item:
            for name, mat in (("user.npy", user), ("item.npy", item)):
                import io

                buf = io.BytesIO()
                np.save(buf, mat)
                atomic_write_bytes(out / name, buf.getvalue())
            atomic_write_json(meta_path, {"text_hash": text_hash, "encoder": spec.name, "encoder_key": spec.key,
                                          "dim": int(user.shape[1]), "users": len(ts.users),
                                          "items": len(ts.items) - 1})
        outputs = {"user_embeddings": str(out / "user.npy"), "item_embeddings": str(out / "item.npy")}
    return BuildResult(ts, user, item, spec, n_user + n_item, time.perf_counter() - t0, outputs, leakage)


def audit_path(folder: Path) -> Path:
    """Where :func:`build_texts` records the leakage audit of a source folder's user texts."""
    return folder / "leakage.json"


def audit_texts(cfg: Config, data: PreparedData, ts: TextSet) -> LeakageAudit:
    """Audit ``ts``'s user texts for held-out titles, record it, and apply ``cfg.text_leakage``.

    Runs before anything is embedded, so leaky texts cost no encoding; the audit is written even when
    it then raises, so the report shows why.
    """
    where = (str(cfg.path("user_text_file")) if ts.source == "files" and cfg.user_text_file
             else str(ts.folder / "users.jsonl"))
    audit = audit_user_texts(data, ts.users, where=where)
    audit.action = cfg.text_leakage
    atomic_write_json(audit_path(ts.folder), audit.to_dict() | {"source": ts.source, "model": ts.model})
    return enforce(audit, cfg.text_leakage, ts.source)


def load_text_embeddings(cfg: Config, data: PreparedData, progress: bool = True) -> TextEmbeddings:
    """Texts and embeddings for every user and item; builds and caches whatever is missing."""
    import torch

    res = build_texts(cfg, data, progress=progress)
    ts = res.texts
    return TextEmbeddings(
        user=torch.from_numpy(np.ascontiguousarray(res.user, dtype=np.float32)),
        item=torch.from_numpy(np.ascontiguousarray(res.item, dtype=np.float32)),
        user_texts=[t or "" for t in ts.users], item_texts=[t or "" for t in ts.items],
        source=ts.source, encoder=res.encoder.name, model=ts.model, origin=ts.origin, encoder_key=res.encoder.key,
        coverage=ts.coverage(), user_origins=[o or "" for o in ts.user_origins],
        item_origins=[o or "" for o in ts.item_origins],
    )


def coverage_by_source(cfg: Config, data: PreparedData) -> list[dict[str, Any]]:
    """One row per text source cached for this prepared dataset: how many texts it wrote itself."""
    root = texts_root(cfg, data)
    rows = []
    for manifest in sorted(root.glob("*/manifest.json")):
        m = json.loads(manifest.read_text())
        row = {"source": m["source"], "model": m["model"], "origin": m["origin"], "folder": manifest.parent.name}
        for kind, total in (("user", data.num_users), ("item", data.num_items)):
            recs = TextCache(manifest.parent / f"{kind}s.jsonl").load()
            row[f"{kind}s_from_source"] = sum(r.get("origin") == m["origin"] for r in recs.values())
            row[f"{kind}s_fallback"] = sum(r.get("origin") != m["origin"] for r in recs.values())
            row[f"{kind}s_total"] = total
        rows.append(row)
    return rows
