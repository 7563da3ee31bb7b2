"""Texts from any OpenAI-compatible chat-completions endpoint (OpenAI, DashScope/Qwen, vLLM, Ollama).

The API key is read only from the environment variable named by ``llm_api_key_env``; it is never
written to a cache, log or report. Requests run ``llm_concurrency`` at a time, each with a timeout,
retried with exponential backoff on 429, 5xx, timeouts and connection errors.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from ur4rec.config import Config
from ur4rec.data.dataset import PreparedData
from ur4rec.errors import UR4RecError
from ur4rec.texts.base import Kind, OnResult, PreferenceTextSource
from ur4rec.texts.prompts import TrainingView, messages_digest, messages_for, prompt_spec_hash


class LLMResponseError(UR4RecError):
    """The endpoint answered, but not with a usable chat completion."""


class OpenAISource(PreferenceTextSource):
    name = "openai"
    origin = "llm"

    def __init__(self, cfg: Config, backoff_base: float = 1.0, backoff_max: float = 60.0) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = cfg.llm_model
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._views: dict[int, TrainingView] = {}
        self._lock = threading.Lock()
        self._client = None

    # ---- identity -------------------------------------------------------------------------------
    def prompt_hash(self) -> str:
        c = self.cfg
        return prompt_spec_hash(c.text_history_len, c.llm_temperature, c.llm_max_tokens)

    def view(self, data: PreparedData) -> TrainingView:
        if id(data) not in self._views:
            self._views[id(data)] = TrainingView(data)
        return self._views[id(data)]

    def messages(self, data: PreparedData, kind: Kind, ident: int) -> list[dict[str, str]]:
        return messages_for(self.view(data), kind, ident, self.cfg.text_history_len)

    def prompt_digest(self, data: PreparedData, kind: Kind, ident: int) -> str:
        return messages_digest(self.messages(data, kind, ident))

    # ---- client ---------------------------------------------------------------------------------
    def _api_key(self) -> str:
        env = self.cfg.llm_api_key_env
        key = os.environ.get(env, "").strip()
        if not key:
            raise UR4RecError(
                f"text_source is 'openai' but the environment variable {env} is not set (no request was sent).",
                where=f"environment variable {env} (config key llm_api_key_env)",
                fix=f"export {env}=<your key> (the key is read only from the environment, never from a file), "
                    "or use text_source: template")
        return key

    def check_ready(self) -> None:
        self._api_key()
        try:
            import openai  # noqa: F401
        except ImportError as exc:  # pragma: no cover - openai is a dependency
            raise UR4RecError("The openai package is not installed.", fix="pip install openai") from exc

    def client(self):
        if self._client is None:
            from openai import OpenAI

            self._client = OpenAI(api_key=self._api_key(), base_url=self.cfg.llm_base_url,
                                  timeout=self.cfg.llm_timeout_s, max_retries=0)
        return self._client

    # ---- one request ----------------------------------------------------------------------------
    @staticmethod
    def _retryable(exc: BaseException) -> bool:
        import openai

        if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError,
                            openai.InternalServerError)):
            return True
        status = getattr(exc, "status_code", None)
        return isinstance(exc, openai.APIStatusError) and (status == 429 or (status or 0) >= 500)

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff_max, self.backoff_base * (2 ** attempt))

    def complete(self, messages: list[dict[str, str]], what: str) -> tuple[str, dict]:
        """One chat completion with retries; returns (text, usage dict or {})."""
        import openai

        retries = self.cfg.llm_max_retries
        for attempt in range(retries + 1):
            with self._lock:
                self.stats.requests += 1
            try:
                resp = self.client().chat.completions.create(
                    model=self.cfg.llm_model, messages=messages, temperature=self.cfg.llm_temperature,
                    max_tokens=self.cfg.llm_max_tokens)
            except openai.AuthenticationError as exc:
                raise UR4RecError(f"The endpoint rejected the API key (HTTP {exc.status_code}).",
                                  where=f"llm_base_url={self.cfg.llm_base_url or 'https://api.openai.com/v1'}",
                                  fix=f"check the key in ${self.cfg.llm_api_key_env}") from None
            except Exception as exc:
                if isinstance(exc, openai.OpenAIError) and self._retryable(exc) and attempt < retries:
                    with self._lock:
                        self.stats.retries += 1
                    time.sleep(self._backoff(attempt))
                    continue
                if isinstance(exc, openai.OpenAIError):
                    kind = type(exc).__name__
                    status = getattr(exc, "status_code", None)
                    detail = f"HTTP {status}" if status else kind
                    tried = f" after {attempt + 1} attempt(s)" if self._retryable(exc) else ""
                    raise UR4RecError(
                        f"LLM request for {what} failed{tried}: {detail}.",
                        where=f"llm_base_url={self.cfg.llm_base_url or 'https://api.openai.com/v1'}, "
                              f"llm_model={self.cfg.llm_model}",
                        fix="check the endpoint and model; raise llm_timeout_s / llm_max_retries for a slow or "
                            "rate-limited server; finished texts are cached, so rerunning resumes") from None
                if isinstance(exc, ValueError):  # e.g. a body that is not JSON at all
                    raise LLMResponseError(
                        f"The endpoint's answer for {what} is not a chat completion (unreadable body: {exc}).",
                        where=f"llm_base_url={self.cfg.llm_base_url or 'https://api.openai.com/v1'}",
                        fix="check that llm_base_url points at an OpenAI-compatible /v1 endpoint") from None
                raise
            return self._parse(resp, what)
        raise AssertionError("unreachable")  # pragma: no cover

    def _parse(self, resp, what: str) -> tuple[str, dict]:
        try:
            content = resp.choices[0].message.content
        except (AttributeError, IndexError, TypeError, KeyError):
            content = None
        if not isinstance(content, str) or not content.strip():
            raise LLMResponseError(
                f"The endpoint's answer for {what} is not a chat completion with text (no choices[0].message.content).",
                where=f"llm_base_url={self.cfg.llm_base_url or 'https://api.openai.com/v1'}",
                fix="check that llm_base_url points at an OpenAI-compatible /v1 endpoint and llm_model exists")
        usage = {}
        u = getattr(resp, "usage", None)
        if u is not None and getattr(u, "prompt_tokens", None) is not None:
            usage = {"prompt_tokens": int(u.prompt_tokens or 0), "completion_tokens": int(u.completion_tokens or 0)}
            with self._lock:
                self.stats.prompt_tokens += usage["prompt_tokens"]
                self.stats.completion_tokens += usage["completion_tokens"]
                self.stats.usage_reported += 1
        return content.strip(), usage

    # ---- many requests --------------------------------------------------------------------------
    def generate(self, data: PreparedData, kind: Kind, ids: Sequence[int], on_result: OnResult,
                 progress: bool = True) -> None:
        if not ids:
            return
        self.check_ready()
        from tqdm.auto import tqdm

        stop = threading.Event()  # after a failure, queued work is dropped, not sent
        results_lock = threading.Lock()  # on_result appends to the cache and counts: one writer at a time

        def work(i: int) -> None:
            if stop.is_set():
                return
            messages = self.messages(data, kind, i)
            try:
                text, usage = self.complete(messages, f"{kind} {i}")
            except BaseException:
                stop.set()
                raise
            extra = {"prompt_sha": messages_digest(messages)}
            if usage:
                extra["usage"] = usage
            with results_lock:
                on_result(int(i), text, extra)

        bar = tqdm(total=len(ids), desc=f"{kind} texts ({self.model})", unit="text", disable=not progress)
        pool = ThreadPoolExecutor(max_workers=self.cfg.llm_concurrency, thread_name_prefix="ur4rec-llm")
        try:
            futures = [pool.submit(work, int(i)) for i in ids]
            for f in futures:
                f.add_done_callback(lambda _f: bar.update(1))
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for f in pending:
                f.cancel()
            for f in done:
                if f.exception() is not None:
                    raise f.exception()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
