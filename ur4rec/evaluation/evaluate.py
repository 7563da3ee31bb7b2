"""``ur4rec evaluate``: every model, every user, full ranking first.

Models on the same split and the same metric code: ``ur4rec`` (fused, two-stage), ``sasrec``,
``retriever`` (two-stage), ``mostpop``, ``itemknn``, on validation and test. Each metric mean comes
with a 95% bootstrap CI over users; the fused model is compared with SASRec alone by a paired
permutation test. The sampled protocol (100 negatives per user, drawn once with a fixed seed,
identical for every model) is reported as a labelled extra, never instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ur4rec.config import Config
from ur4rec.data.batching import pad_left
from ur4rec.data.dataset import PreparedData, Split
from ur4rec.devices import describe_device, module_device
from ur4rec.errors import ConfigError
from ur4rec.evaluation.baselines import ItemKNN, MostPop
from ur4rec.evaluation.metrics import REPORTED, metrics_from_ranks
from ur4rec.evaluation.protocol import EvalResult, Scorer, evaluate_full_ranking, known_items_mask
from ur4rec.evaluation.results import (
    RunEvaluation,
    breakdowns,
    leaderboard,
    metric_entry,
    to_markdown,
    two_stage_vs_exact,
)
from ur4rec.evaluation.scoring import candidate_scores, catalogue_scorer
from ur4rec.evaluation.statistics import paired_permutation_test
from ur4rec.training.opened_run import OpenedRun, open_run
from ur4rec.training.run import Workspace
from ur4rec.training.seeding import generator

#: The evaluated models: fused UR4Rec, its two branches (as trained alone), two non-neural baselines.
MODELS = ["ur4rec", "sasrec", "retriever", "mostpop", "itemknn"]


def sampled_negatives(data: PreparedData, split: Split, n: int, strategy: str, seed: int) -> torch.Tensor:
    """``n`` negatives per user, drawn once (fixed seed), never a known or held-out item: [U, n]."""
    g = generator(seed, "sampled-eval", split, strategy)
    hist, held = data.history(split), data.held_out(split)
    weights = torch.ones(data.num_items + 1)
    if strategy == "popularity":
        weights = torch.as_tensor(data.item_popularity(), dtype=torch.float32) + 1.0
    weights[0] = 0.0
    out = torch.zeros(data.num_users, n, dtype=torch.long)
    for u in range(data.num_users):
        w = weights.clone()
        w[torch.as_tensor(hist[u], dtype=torch.long)] = 0.0
        w[torch.as_tensor(held[u], dtype=torch.long)] = 0.0
        available = int((w > 0).sum())
        if available < n:
            raise ConfigError(f"Cannot draw {n} sampled negatives for user {u} on {split}: only {available} items "
                              "are neither known nor held out.", where="sampled_negatives",
                              fix=f"set sampled_negatives to at most {available} for this dataset")
        out[u] = torch.multinomial(w, n, replacement=False, generator=g)
    return out


def exact_affordable(cfg: Config, data: PreparedData, model: torch.nn.Module | None = None) -> bool:
    """Whether the exact catalogue ranking of the per-pair models is run (``exact_catalogue``): with
    ``auto``, when the model runs on a GPU or the catalogue × users × dimension is small enough (what
    counts is where the model is, not whether the machine has a GPU)."""
    if cfg.exact_catalogue != "auto":
        return cfg.exact_catalogue == "always"
    on_gpu = model is not None and module_device(model).type == "cuda"
    return on_gpu or data.num_users * data.num_items * cfg.retriever_output_dim <= 2e8


def exact_scorers(model: torch.nn.Module, alone: torch.nn.Module | None = None) -> dict[str, Scorer]:
    """Every item through the per-pair networks (no first stage): the reference two-stage approximates."""
    alone = alone or model
    model.eval()
    alone.eval()
    dev, dev_alone = module_device(model), module_device(alone)
    return {"ur4rec": lambda users, seq: model.full_sort_predict(users.to(dev), seq.to(dev)).to(seq.device),
            "retriever": lambda users, seq: alone.retriever.full_catalogue_scores(users.to(dev_alone)).to(seq.device)}


def scorers(model: torch.nn.Module | None, data: PreparedData, split: Split, cfg: Config,
            alone: torch.nn.Module | None = None) -> dict[str, Scorer]:
    """Catalogue scorers of every model. ``alone`` holds the branches as trained alone (the model at
    the end of pretrain_retriever: SASRec from pretrain_sasrec, frozen since, and the retriever
    trained on top); without it, the final model's branches stand in for them."""
    out: dict[str, Scorer] = {}
    if model is not None:
        alone = alone or model
        model.eval()
        alone.eval()
        out["ur4rec"] = catalogue_scorer(model, cfg, "fused")
        out["sasrec"] = catalogue_scorer(alone, cfg, "sasrec")
        out["retriever"] = catalogue_scorer(alone, cfg, "retriever")
    pop, knn = MostPop(data, split), ItemKNN(data, split)
    out["mostpop"] = lambda users, seq: pop.score(users)
    out["itemknn"] = lambda users, seq: knn.score(users)
    return out


@torch.no_grad()
def sampled_result(name: str, model: torch.nn.Module | None, full_score: Callable, data: PreparedData, split: Split,
                   cfg: Config, negatives: torch.Tensor, alone: torch.nn.Module | None = None) -> EvalResult:
    """Rank the target among its fixed sampled negatives; per-pair models score the candidates directly
    (the retriever as in ``scorers``: the one trained alone when ``alone`` is given)."""
    users = np.arange(data.num_users)
    hist = data.history(split)
    targets = torch.as_tensor([data.held_out(split)[u][0] for u in users])
    ranks = np.zeros(len(users), dtype=np.int64)
    for start in range(0, len(users), 256):
        b = users[start:start + 256]
        u = torch.as_tensor(b)
        seq = pad_left([hist[i] for i in b], cfg.max_seq_len)
        cands = torch.cat([targets[b].unsqueeze(1), negatives[b]], dim=1)
        if name == "ur4rec":
            s = candidate_scores(model, "fused", u, seq, cands)
        elif name == "retriever":
            s = candidate_scores(alone or model, "retriever", u, seq, cands)
        else:
            s = full_score(u, seq).gather(1, cands)
        # ties count against the target, as in full ranking
        ranks[start:start + len(b)] = (1 + (s[:, 1:] >= s[:, :1]).sum(dim=1)).numpy()
    return EvalResult(split, users, ranks, metrics_from_ranks(ranks, cfg.eval_ks))


def describe_fused(model: torch.nn.Module | None, cfg: Config, selection: dict[str, Any] | None = None) -> str:
    """What the ``ur4rec`` entry is: which checkpoint, and the fusion weights it ranked with."""
    if selection:
        best, test = selection.get("best_on_validation", {}), selection.get("paired_test_vs_baseline")
        kept = test is not None and (best.get("stage"), best.get("retriever_weight")) != (
            selection["stage"], selection["retriever_weight"])
        if kept:
            alone = ("at retriever weight 0" if selection["retriever_weight"] is not None
                     else "whose feature projection is still zero")
            text = (f"the final model: the {selection['stage']} checkpoint {alone} (SASRec's ranking), "
                    f"kept because the best pair on validation ({best['stage']}, "
                    + (f"retriever weight {best['retriever_weight']}, " if best.get("retriever_weight") is not None
                       else "") +
                    f"{test['mean_difference']:+.4f}) was not significantly better (paired test p = "
                    f"{test['p_value']:.3f}, alpha {test['alpha']})")
        else:
            text = (f"the final model: the {selection['stage']} checkpoint with its retriever weight, the best pair "
                    "on validation (final_model_selection)")
    else:
        text = "the final model (the last stage's best checkpoint)"
    if getattr(model, "fusion_method", None) == "feature":
        return f"{text}; feature fusion: the retriever's candidate-conditioned vectors inside SASRec's scorer"
    if model is None or getattr(model, "fusion_method", None) != "weighted":
        return text
    s, r = (float(x) for x in model.fixed_weights)
    return f"{text}; weighted fusion, SASRec {s:.2f} / retriever {r:.2f}"


def describe_sasrec_text(cfg: Config) -> str:
    """What text SASRec itself uses ("" for ID-only SASRec), for the model's label."""
    parts = []
    if cfg.sasrec_item_text != "none":
        parts.append(f"item text inside ({cfg.sasrec_item_text})")
    if cfg.sasrec_user_text_weight > 0:
        parts.append(f"user-text distillation (weight {cfg.sasrec_user_text_weight:g})")
    return (", with " + " and ".join(parts)) if parts else ", ID only"


def evaluate_models(cfg: Config, data: PreparedData, model: torch.nn.Module | None,
                    splits: tuple[Split, ...] = ("valid", "test"),
                    alone: torch.nn.Module | None = None,
                    selection: dict[str, Any] | None = None) -> RunEvaluation:
    """Every model on ``splits`` (full ranking, sampled, exact where affordable, the paired test)."""
    out: dict[str, Any] = {"users_evaluated": data.num_users, "full": {}, "sampled": {},
                           "protocol": {"full": "full ranking over the catalogue, known items excluded, ties count "
                                                "against the target; ur4rec/retriever two-stage (SASRec top-"
                                                f"{cfg.rerank_top_r} re-ranked)",
                                        "sampled": f"{cfg.sampled_negatives} {cfg.sampled_strategy} negatives per "
                                                   "user drawn once (fixed seed), identical for all models"},
                           "seconds": {}, "paired_test": {},
                           "final_selection": selection,
                           "models": {"ur4rec": describe_fused(model, cfg, selection),
                                      "sasrec": ("SASRec trained alone (best pretrain_sasrec checkpoint)" if alone
                                                 is not None else "the final model's SASRec branch")
                                      + describe_sasrec_text(cfg),
                                      "retriever": "the retriever trained alone on frozen SASRec (best "
                                      "pretrain_retriever checkpoint)" if alone is not None
                                      else "the final model's retriever branch",
                                      "mostpop": "training popularity", "itemknn": "item-item cosine, training"}}
    per_user: dict[tuple[str, str], EvalResult] = {}
    for split in splits:
        out["full"][split], out["sampled"][split] = {}, {}
        negatives = sampled_negatives(data, split, cfg.sampled_negatives, cfg.sampled_strategy, cfg.seed)
        for name, fn in scorers(model, data, split, cfg, alone).items():
            t0 = time.perf_counter()
            res = evaluate_full_ranking(fn, data, split, cfg.max_seq_len, ks=cfg.eval_ks)
            out["seconds"][f"{split}/{name}"] = round(time.perf_counter() - t0, 3)
            per_user[(split, name)] = res
            out["full"][split][name] = metric_entry(res, cfg.seed)
            sampled = sampled_result(name, model, fn, data, split, cfg, negatives, alone)
            out["sampled"][split][name] = metric_entry(sampled, cfg.seed)
        if model is not None and exact_affordable(cfg, data, model):
            out.setdefault("exact", {})[split] = {}
            out.setdefault("two_stage_vs_exact", {})[split] = {}
            for name, fn in exact_scorers(model, alone).items():
                t0 = time.perf_counter()
                res = evaluate_full_ranking(fn, data, split, cfg.max_seq_len, ks=cfg.eval_ks, batch_size=64)
                out["seconds"][f"{split}/{name}/exact"] = round(time.perf_counter() - t0, 3)
                out["exact"][split][name] = metric_entry(res, cfg.seed)
                two = per_user[(split, name)]
                out["two_stage_vs_exact"][split][name] = {
                    "ndcg@10_two_stage": two.summary["ndcg@10"], "ndcg@10_exact": res.summary["ndcg@10"],
                    "difference": two.summary["ndcg@10"] - res.summary["ndcg@10"],
                    "users_with_same_target_rank": float(np.mean(two.ranks == res.ranks)),
                    "users_target_in_top_r_both": float(np.mean((two.ranks <= cfg.rerank_top_r)
                                                                & (res.ranks <= cfg.rerank_top_r)))}
        if model is not None:
            out["paired_test"][split] = {"ur4rec_vs_sasrec_ndcg@10": paired_permutation_test(
                per_user[(split, "ur4rec")].per_user["ndcg@10"], per_user[(split, "sasrec")].per_user["ndcg@10"],
                seed=cfg.seed)}
    return RunEvaluation(out, per_user, alone)


def evaluate_opened_run(run: OpenedRun) -> RunEvaluation:
    """Evaluate an opened run (its final model, and the branches trained alone) and write ``eval.json``
    and ``eval.md`` into its folder."""
    t0 = time.perf_counter()
    evaluation = evaluate_models(run.cfg, run.workspace.data, run.model, alone=run.alone,
                                 selection=run.result.get("final_selection"))
    evaluation.results["seconds"]["total"] = round(time.perf_counter() - t0, 3)
    evaluation.results["trained_with"] = run.result.get("environment")  # torch version, threads, device
    evaluation.results["evaluated_on"] = {"device": describe_device(module_device(run.model))}
    evaluation.write(run.run_dir)
    return evaluation


def evaluate_run(run_dir: str | Path, allow_mismatch: bool = False,
                 workspace: Workspace | None = None) -> RunEvaluation:
    """Open a finished run (``open_run``: fingerprint-checked) and evaluate it (``evaluate_opened_run``).
    ``workspace``: one already built from the run's config (saves rebuilding it)."""
    return evaluate_opened_run(open_run(run_dir, allow_mismatch=allow_mismatch, workspace=workspace))


__all__ = ["MODELS", "REPORTED", "RunEvaluation", "breakdowns", "evaluate_models", "evaluate_opened_run",
           "evaluate_run", "exact_scorers", "known_items_mask", "leaderboard", "scorers", "to_markdown",
           "two_stage_vs_exact"]
