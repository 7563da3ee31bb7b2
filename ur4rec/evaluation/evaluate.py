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
import pandas as pd
import torch

from ur4rec.config import Config, config_from_dict, read_yaml
from ur4rec.data.batching import pad_left
from ur4rec.data.dataset import PreparedData, Split
from ur4rec.errors import ConfigError
from ur4rec.evaluation.baselines import ItemKNN, MostPop
from ur4rec.evaluation.metrics import metrics_from_ranks, summarise
from ur4rec.evaluation.protocol import EvalResult, evaluate_full_ranking, known_items_mask
from ur4rec.evaluation.scoring import per_pair_scorer, sasrec_scorer
from ur4rec.evaluation.statistics import bootstrap_ci, paired_permutation_test
from ur4rec.io import atomic_write_json, atomic_write_text
from ur4rec.training.seeding import generator

MODELS = ["ur4rec", "sasrec", "retriever", "mostpop", "itemknn"]
REPORTED = ["hit@5", "ndcg@5", "hit@10", "ndcg@10", "mrr@10", "hit@20", "ndcg@20", "mrr", "mean_rank"]


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


def exact_affordable(cfg: Config, data: PreparedData) -> bool:
    """Whether the exact catalogue ranking of the per-pair models is run (``exact_catalogue``)."""
    if cfg.exact_catalogue != "auto":
        return cfg.exact_catalogue == "always"
    return torch.cuda.is_available() or data.num_users * data.num_items * cfg.retriever_output_dim <= 2e8


def exact_scorers(model: torch.nn.Module, alone: torch.nn.Module | None = None) -> dict[str, Callable]:
    """Every item through the per-pair networks (no first stage): the reference two-stage approximates."""
    alone = alone or model
    model.eval()
    alone.eval()
    return {"ur4rec": lambda users, seq: model.full_sort_predict(users, seq),
            "retriever": lambda users, seq: alone.retriever.full_catalogue_scores(users)}


def scorers(model: torch.nn.Module | None, data: PreparedData, split: Split, cfg: Config,
            alone: torch.nn.Module | None = None) -> dict[str, Callable]:
    """Catalogue scorers of every model. ``alone`` holds the branches as trained alone (the model at
    the end of pretrain_retriever: SASRec from pretrain_sasrec, frozen since, and the retriever
    trained on top); without it, the final model's branches stand in for them."""
    out: dict[str, Callable] = {}
    if model is not None:
        alone = alone or model
        model.eval()
        alone.eval()
        out["ur4rec"] = per_pair_scorer(model, "fused", cfg.rerank_top_r)
        out["sasrec"] = sasrec_scorer(alone)
        out["retriever"] = per_pair_scorer(alone, "retriever", cfg.rerank_top_r)
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
            s = model(u, seq, cands)["scores"]
        elif name == "retriever":
            s = (alone or model).retriever(u, cands)["scores"]
        else:
            s = full_score(u, seq).gather(1, cands)
        # ties count against the target, as in full ranking
        ranks[start:start + len(b)] = (1 + (s[:, 1:] >= s[:, :1]).sum(dim=1)).numpy()
    return EvalResult(split, users, ranks, metrics_from_ranks(ranks, cfg.eval_ks))


def _entry(result: EvalResult, seed: int) -> dict[str, Any]:
    summary = summarise(result.per_user)
    ci = {}
    for k, v in result.per_user.items():
        key = "mean_rank" if k == "rank" else k
        ci[key] = bootstrap_ci(v, seed=seed)
    return {"metrics": summary, "ci95": ci}


def breakdowns(result: EvalResult, data: PreparedData, split: Split, metric: str = "ndcg@10") -> pd.DataFrame:
    """Per-user metric grouped by history length, target popularity and target genre."""
    hist_len = np.array([len(h) for h in data.history(split)])[result.users]
    targets = np.array([data.held_out(split)[u][0] for u in result.users])
    pop = data.item_popularity()[targets]
    genres = data.item_genres()
    rows = []
    len_bins = pd.cut(hist_len, [0, 20, 50, 100, 200, 10_000], right=False)
    pop_bins = pd.qcut(pop, 4, duplicates="drop")
    values = result.per_user[metric]
    for by, bins in (("history length", len_bins), ("target popularity", pop_bins)):
        df = pd.DataFrame({"group": bins.astype(str), "value": values})
        for g, part in df.groupby("group", sort=False):
            rows.append((by, g, len(part), float(part["value"].mean())))
    genre_rows: dict[str, list[float]] = {}
    for v, t in zip(values, targets):
        for g in genres[t] or ["(none)"]:
            genre_rows.setdefault(g, []).append(v)
    for g, vals in sorted(genre_rows.items()):
        rows.append(("target genre", g, len(vals), float(np.mean(vals))))
    return pd.DataFrame(rows, columns=["breakdown", "group", "users", metric])


def describe_fused(model: torch.nn.Module | None, cfg: Config, selection: dict[str, Any] | None = None) -> str:
    """What the ``ur4rec`` entry is: which checkpoint, and the fusion weights it ranked with."""
    if selection:
        best, test = selection.get("best_on_validation", {}), selection.get("paired_test_vs_baseline")
        kept = test is not None and (best.get("stage"), best.get("retriever_weight")) != (
            selection["stage"], selection["retriever_weight"])
        if kept:
            text = (f"the final model: the {selection['stage']} checkpoint at retriever weight 0 (SASRec's ranking), "
                    f"kept because the best pair on validation ({best['stage']}, retriever weight "
                    f"{best['retriever_weight']}, "
                    f"{test['mean_difference']:+.4f}) was not significantly better (paired test p = "
                    f"{test['p_value']:.3f}, alpha {test['alpha']})")
        else:
            text = (f"the final model: the {selection['stage']} checkpoint with its retriever weight, the best pair "
                    "on validation (final_model_selection)")
    else:
        text = "the final model (the last stage's best checkpoint)"
    if model is None or getattr(model, "fusion_method", None) != "weighted":
        return text
    s, r = (float(x) for x in model.fixed_weights)
    return f"{text}; weighted fusion, SASRec {s:.2f} / retriever {r:.2f}"


def evaluate_models(cfg: Config, data: PreparedData, model: torch.nn.Module | None,
                    splits: tuple[Split, ...] = ("valid", "test"),
                    alone: torch.nn.Module | None = None, selection: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"users_evaluated": data.num_users, "full": {}, "sampled": {},
                           "protocol": {"full": "full ranking over the catalogue, known items excluded, ties count "
                                                "against the target; ur4rec/retriever two-stage (SASRec top-"
                                                f"{cfg.rerank_top_r} re-ranked)",
                                        "sampled": f"{cfg.sampled_negatives} {cfg.sampled_strategy} negatives per "
                                                   "user drawn once (fixed seed), identical for all models"},
                           "seconds": {}, "paired_test": {},
                           "final_selection": selection,
                           "models": {"ur4rec": describe_fused(model, cfg, selection),
                                      "sasrec": "SASRec trained alone (best pretrain_sasrec checkpoint)" if alone
                                      is not None else "the final model's SASRec branch",
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
            out["full"][split][name] = _entry(res, cfg.seed)
            out["sampled"][split][name] = _entry(sampled_result(name, model, fn, data, split, cfg, negatives, alone),
                                                 cfg.seed)
        if model is not None and exact_affordable(cfg, data):
            out.setdefault("exact", {})[split] = {}
            out.setdefault("two_stage_vs_exact", {})[split] = {}
            for name, fn in exact_scorers(model, alone).items():
                t0 = time.perf_counter()
                res = evaluate_full_ranking(fn, data, split, cfg.max_seq_len, ks=cfg.eval_ks, batch_size=64)
                out["seconds"][f"{split}/{name}/exact"] = round(time.perf_counter() - t0, 3)
                out["exact"][split][name] = _entry(res, cfg.seed)
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
    out["_per_user"] = per_user  # for notebooks; dropped before writing JSON
    return out


def leaderboard(results: dict[str, Any], protocol: str = "full", split: str = "test") -> pd.DataFrame:
    rows = []
    for name, entry in results[protocol][split].items():
        row = {"model": name}
        for m in REPORTED:
            if m in entry["metrics"]:
                row[m] = entry["metrics"][m]
                lo, hi = entry["ci95"][m]
                row[f"{m} ci95"] = f"[{lo:.4f}, {hi:.4f}]"
        rows.append(row)
    df = pd.DataFrame(rows).set_index("model")
    return df.sort_values("ndcg@10", ascending=False) if "ndcg@10" in df else df


def two_stage_vs_exact(results: dict[str, Any]) -> pd.DataFrame:
    """NDCG@10 of the per-pair models under two-stage and exact catalogue ranking, per split."""
    rows = [{"split": split, "model": name, **cmp} for split, models in results.get("two_stage_vs_exact", {}).items()
            for name, cmp in models.items()]
    if not rows:
        return pd.DataFrame({"note": ["exact catalogue ranking was not run (exact_catalogue: never, or too large "
                                      "for this machine under 'auto')"]})
    return pd.DataFrame(rows).set_index(["split", "model"])


def to_markdown(results: dict[str, Any]) -> str:
    lines = ["# Evaluation", "", f"Users evaluated: {results['users_evaluated']} (every user).", ""]
    lines += [f"- `{name}`: {what}" for name, what in results.get("models", {}).items()] + [""]
    if env := results.get("trained_with"):
        lines += [f"Trained with torch {env['torch']} on {env['torch_threads']} threads (the same seed gives the "
                  "same numbers on the same thread count).", ""]
    for protocol in ("full", "sampled"):
        label = "Full ranking (primary)" if protocol == "full" else "Sampled (labelled extra, not comparable)"
        for split in results[protocol]:
            lines += [f"## {label} — {split}", "", results["protocol"][protocol], ""]
            df = leaderboard(results, protocol, split)
            cols = [c for c in ("hit@10", "ndcg@10", "ndcg@10 ci95", "mrr@10", "hit@20", "ndcg@20", "mean_rank")
                    if c in df]
            lines.append("| model | " + " | ".join(cols) + " |")
            lines.append("|---" * (len(cols) + 1) + "|")
            for name, row in df[cols].iterrows():
                cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
    for split, models in results.get("two_stage_vs_exact", {}).items():
        lines += [f"## Two-stage vs exact catalogue ranking — {split}", "",
                  "| model | NDCG@10 two-stage | NDCG@10 exact | difference | users with the same target rank |",
                  "|---|---|---|---|---|"]
        lines += [f"| {name} | {c['ndcg@10_two_stage']:.4f} | {c['ndcg@10_exact']:.4f} | {c['difference']:+.4f} | "
                  f"{c['users_with_same_target_rank']:.1%} |" for name, c in models.items()]
        lines.append("")
    for split, tests in results.get("paired_test", {}).items():
        for name, t in tests.items():
            lines.append(f"Paired permutation test ({split}, {name}): mean difference {t['mean_difference']:+.4f}, "
                         f"p = {t['p_value']:.4f} over {t['users']} users.")
    return "\n".join(lines) + "\n"


def evaluate_run(run_dir: str | Path, allow_mismatch: bool = False, workspace: Any = None) -> dict[str, Any]:
    """Evaluate a finished run (its ``final.pt``) and write ``eval.json`` and ``eval.md`` into it.

    The returned dict also holds ``_per_user`` (EvalResult per (split, model)) for notebooks.
    """
    from ur4rec.training.checkpoint import load_checkpoint, run_fingerprint
    from ur4rec.training.run import build_workspace

    run_dir = Path(run_dir)
    cfg = config_from_dict(read_yaml(run_dir / "config.yaml"), str(run_dir / "config.yaml"))
    ws = workspace or build_workspace(cfg)
    expected = run_fingerprint(cfg, ws.data.fingerprint, ws.text_fingerprint)
    ck = load_checkpoint(run_dir / "final.pt", expected, allow_mismatch=allow_mismatch)
    ws.model.load_state_dict(ck["model"])
    alone = load_alone_model(run_dir, ws.model, expected, allow_mismatch)
    t0 = time.perf_counter()
    selection = (ck.get("result") or {}).get("final_selection")
    results = evaluate_models(cfg, ws.data, ws.model, alone=alone, selection=selection)
    results["seconds"]["total"] = round(time.perf_counter() - t0, 3)
    results["trained_with"] = (ck.get("result") or {}).get("environment")  # torch version and threads
    write_results(run_dir, results)
    results["_alone"] = alone  # for notebooks (the explorer's SASRec and retriever); never written
    return results


def load_alone_model(run_dir: Path, model: torch.nn.Module, expected: dict[str, Any],
                     allow_mismatch: bool = False) -> torch.nn.Module | None:
    """The model as it stood after pretrain_retriever (each branch trained alone), if the run has it."""
    import copy

    from ur4rec.training.checkpoint import load_checkpoint

    path = Path(run_dir) / "best-pretrain_retriever.pt"
    if not path.is_file():
        return None
    alone = copy.deepcopy(model)
    alone.load_state_dict(load_checkpoint(path, expected, allow_mismatch=allow_mismatch)["model"])
    return alone.eval()


def write_results(run_dir: str | Path, results: dict[str, Any]) -> None:
    """``eval.json`` (without the in-memory per-user arrays) and ``eval.md``, atomically."""
    public = {k: v for k, v in results.items() if not k.startswith("_")}
    atomic_write_json(Path(run_dir) / "eval.json", public)
    atomic_write_text(Path(run_dir) / "eval.md", to_markdown(public))


__all__ = ["MODELS", "breakdown_table", "breakdowns", "evaluate_models", "evaluate_run", "known_items_mask",
           "leaderboard",
           "two_stage_vs_exact"]


def breakdown_table(results: dict[str, Any], data: PreparedData, split: Split = "test",
                    metric: str = "ndcg@10") -> pd.DataFrame:
    """``breakdowns`` of every evaluated model, stacked with a ``model`` column."""
    parts = [breakdowns(res, data, split, metric).assign(model=name)
             for (s, name), res in results["_per_user"].items() if s == split]
    return pd.concat(parts, ignore_index=True)
