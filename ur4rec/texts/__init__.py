"""Preference texts (users) and descriptions (items), and their sentence embeddings.

Sources (``text_source``): ``template`` (offline, deterministic; the default), ``openai`` (any
OpenAI-compatible endpoint), ``transformers`` (a local Hugging Face causal LM) and ``files``
(user-supplied JSON). Texts are cached on disk and resumable; embeddings (all-MiniLM-L6-v2, 384-d,
L2-normalised) are cached per text.

The trainer calls :func:`load_text_embeddings`; the CLI calls :func:`build_texts`.
"""

from ur4rec.texts.base import PreferenceTextSource
from ur4rec.texts.pipeline import (
    BuildResult,
    TextEmbeddings,
    TextSet,
    build_texts,
    coverage_by_source,
    generate_texts,
    load_text_embeddings,
    make_source,
    texts_root,
)

__all__ = ["BuildResult", "PreferenceTextSource", "TextEmbeddings", "TextSet", "build_texts", "coverage_by_source",
           "generate_texts", "load_text_embeddings", "make_source", "texts_root"]
