"""Texts from a local Hugging Face causal LM (``llm_local_model``), generated in batches.

The tokenizer's chat template is used when it has one (plain "system / user / Answer:" text
otherwise); batches are left-padded so every prompt ends where generation starts. Generation is
greedy when ``llm_temperature`` is 0, sampled (seeded) otherwise. Batch size: ``llm_concurrency``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ur4rec.config import Config
from ur4rec.data.dataset import PreparedData
from ur4rec.errors import UR4RecError
from ur4rec.texts.base import Kind, OnResult, PreferenceTextSource
from ur4rec.texts.encoder import hub_offline, limit_threads
from ur4rec.texts.prompts import TrainingView, messages_digest, messages_for, prompt_spec_hash, to_plain_prompt


class TransformersSource(PreferenceTextSource):
    name = "transformers"
    origin = "llm"

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = cfg.llm_local_model or ""
        self._views: dict[int, TrainingView] = {}
        self._lm = None
        self._tok = None

    def prompt_hash(self) -> str:
        c = self.cfg
        seed = f"-seed{c.seed}" if c.llm_temperature > 0 else ""
        return prompt_spec_hash(c.text_history_len, c.llm_temperature, c.llm_max_tokens) + seed

    def _location(self) -> str:
        loc = self.cfg.llm_local_model or ""
        p = self.cfg.path("llm_local_model") if loc else None
        return str(p) if p is not None and p.exists() else loc

    def check_ready(self) -> None:
        if not self.cfg.llm_local_model:
            raise UR4RecError("text_source is 'transformers' but llm_local_model is not set.",
                              where="config key llm_local_model",
                              fix="set llm_local_model to a local Hugging Face causal-LM folder (or a hub name "
                                  "when online)")
        loc = self._location()
        if not Path(loc).is_dir() and hub_offline():
            raise UR4RecError(f"The local LLM {loc!r} is not a folder, and the hub is offline (HF_HUB_OFFLINE).",
                              where="config key llm_local_model",
                              fix="point llm_local_model at a folder with config.json, weights and tokenizer files")

    def view(self, data: PreparedData) -> TrainingView:
        if id(data) not in self._views:
            self._views[id(data)] = TrainingView(data)
        return self._views[id(data)]

    def messages(self, data: PreparedData, kind: Kind, ident: int) -> list[dict[str, str]]:
        return messages_for(self.view(data), kind, ident, self.cfg.text_history_len)

    def prompt_digest(self, data: PreparedData, kind: Kind, ident: int) -> str:
        return messages_digest(self.messages(data, kind, ident))

    def _load(self) -> None:
        if self._lm is not None:
            return
        self.check_ready()
        limit_threads()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        loc = self._location()
        local = Path(loc).is_dir()
        try:
            tok = AutoTokenizer.from_pretrained(loc, local_files_only=local or hub_offline())
            lm = AutoModelForCausalLM.from_pretrained(loc, local_files_only=local or hub_offline())
        except Exception as exc:
            raise UR4RecError(f"Could not load the local LLM: {exc}", where=f"llm_local_model={loc}",
                              fix="the folder needs config.json, model weights and tokenizer files") from exc
        tok.padding_side = "left"
        if tok.pad_token is None:
            if tok.eos_token is None:
                raise UR4RecError("The local LLM's tokenizer has neither a pad nor an eos token.",
                                  where=f"llm_local_model={loc}", fix="add a pad_token to the tokenizer")
            tok.pad_token = tok.eos_token
        lm.eval()
        self._tok, self._lm = tok, lm

    def render(self, messages: list[dict[str, str]]) -> str:
        tok = self._tok
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return to_plain_prompt(messages)

    def generate(self, data: PreparedData, kind: Kind, ids: Sequence[int], on_result: OnResult,
                 progress: bool = True) -> None:
        if not ids:
            return
        self._load()
        import torch
        from tqdm.auto import tqdm

        tok, lm, c = self._tok, self._lm, self.cfg
        batch = max(1, c.llm_concurrency)
        sample = c.llm_temperature > 0
        gen_kwargs = {"max_new_tokens": c.llm_max_tokens, "do_sample": sample, "pad_token_id": tok.pad_token_id}
        if sample:
            gen_kwargs["temperature"] = c.llm_temperature
            torch.manual_seed(c.seed)
        bar = tqdm(total=len(ids), desc=f"{kind} texts ({self.model})", unit="text", disable=not progress)
        try:
            for start in range(0, len(ids), batch):
                chunk = [int(i) for i in ids[start:start + batch]]
                msgs = [self.messages(data, kind, i) for i in chunk]
                prompts = [self.render(m) for m in msgs]
                enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
                with torch.inference_mode():
                    out = lm.generate(**enc, **gen_kwargs)
                new = out[:, enc["input_ids"].shape[1]:]
                texts = tok.batch_decode(new, skip_special_tokens=True)
                self.stats.requests += 1
                for i, m, text in zip(chunk, msgs, texts):
                    text = " ".join(text.split())
                    on_result(i, text, {"prompt_sha": messages_digest(m)})
                bar.update(len(chunk))
        finally:
            bar.close()
