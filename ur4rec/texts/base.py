"""The interface every preference-text source implements, and the records they produce.

A source turns the prepared data into one text per user ("what this viewer likes") and one per item
("what this film is"). Sources differ only in *how* (templates, an OpenAI-compatible endpoint, a local
Hugging Face model, user-supplied files); the pipeline caches, resumes and embeds them the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ur4rec.data.dataset import PreparedData

Kind = Literal["user", "item"]
KINDS: tuple[Kind, Kind] = ("user", "item")

#: Called once per finished text: (internal id, text, extra fields for the cache record).
OnResult = Callable[[int, str, dict[str, Any]], None]


@dataclass
class SourceStats:
    """What a source did during one run (reported by the CLI; never contains secrets)."""

    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_reported: int = 0
    fallback: dict[str, int] = field(default_factory=lambda: {"user": 0, "item": 0})
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {"requests": self.requests, "retries": self.retries, "fallback": dict(self.fallback)}
        if self.usage_reported:
            out["tokens"] = {"prompt": self.prompt_tokens, "completion": self.completion_tokens,
                             "total": self.prompt_tokens + self.completion_tokens}
        return out | self.extra


class PreferenceTextSource(ABC):
    """Produces user preference texts and item descriptions.

    Attributes
    ----------
    name:   the ``text_source`` value ("template", "openai", "transformers", "files").
    model:  which model wrote the texts ("template" for the template source).
    origin: what the texts are ("template", "llm", "file"); stored in every cache record.
    """

    name: str = ""
    model: str = ""
    origin: str = ""

    def __init__(self) -> None:
        self.stats = SourceStats()

    @abstractmethod
    def prompt_hash(self) -> str:
        """Hash of everything besides (source, model) that changes the texts (prompts, settings)."""

    def check_ready(self) -> None:
        """Raise a clear :class:`UR4RecError` if the source cannot run (before any request)."""

    def prompt_digest(self, data: PreparedData, kind: Kind, ident: int) -> str | None:
        """Hash of the exact prompt for one id (LLM sources), to detect stale cache records."""
        return None

    @abstractmethod
    def generate(self, data: PreparedData, kind: Kind, ids: Sequence[int], on_result: OnResult,
                 progress: bool = True) -> None:
        """Produce texts for ``ids`` of ``kind``, calling ``on_result`` as each one is ready.

        Results must be reported as soon as they exist, so that an interrupted run loses at most
        the texts in flight.
        """
