"""Why each row of the text ablation scores what it does: measurements on its trained runs.

    python bench/text_ablation_reasons.py [--root runs/text-ablation] [--seeds 2020 ...] [--json]

Reads the finished runs of ``bench/text_ablation.py`` (nothing is trained; validation only, on the
CPU, one thread) and measures, per seed, what each integration did with its text:

- every SASRec-family row: its best checkpoint's validation NDCG@10 (full ranking, known items
  excluded; the difference from the same seed's ``sasrec`` run), and how much of the learned item
  space the item texts explain: the 5-fold cross-validated R² of a linear map from the item texts'
  whitened principal components (as many as SASRec's hidden dimensions) to the item vectors SASRec
  scores with. ID-only SASRec never saw the texts, so its R² is what text could have told it.
- ``item-init``: the cosine between each item's ID vector at the start (its text components) and
  after training: how much of the starting point survives.
- ``item-add``: the text path's share of the item vectors (‖A t‖² over ‖e + A t‖², mean over items),
  for all items and for rare ones (≤ 10 training interactions).
- ``item-alphafuse``: the frozen text dimensions' share of the item vectors (learned scale included).
- every SASRec-family row: how much of each user's gender and age its user representation holds
  (cross-validated ridge probes): what demographics in the user text (``user-distill-demo``) can add.
- ``user-distill`` / ``user-distill-demo``: how well the distillation head recovers each user's text
  from SASRec's representation of the user's training history (mean cosine), against another user's
  text (chance), and how alike two users' texts are to begin with.
- ``feature-fusion``: the ``end_to_end`` checkpoint's SASRec branch alone (full ranking) beside the
  fused scorer (two-stage, from its ``eval.json``), the ``joint_finetune`` checkpoint and the
  ``sasrec`` run: whether the learned feature or SASRec's own drift costs validation. Then sampled
  diagnostics (``sampled_scores``): NDCG@10 of a target among itself and 100 sampled items for the
  validation item and for each user's last training item, SASRec's branch against the fused score,
  and the feature term's score spread relative to SASRec's.
- ``late-fusion``: the same sampled diagnostics for the retriever of its ``pretrain_retriever``
  checkpoint (trained on top of the fixed SASRec), beside SASRec's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.publish import RESULTS, publish  # noqa: E402
from ur4rec.config import load_config  # noqa: E402
from ur4rec.data.batching import pad_left  # noqa: E402
from ur4rec.evaluation.evaluate import sampled_negatives  # noqa: E402
from ur4rec.evaluation.metrics import metrics_from_ranks  # noqa: E402
from ur4rec.evaluation.protocol import evaluate_full_ranking  # noqa: E402
from ur4rec.evaluation.scoring import sasrec_scorer  # noqa: E402
from ur4rec.models.item_text import whitened_components  # noqa: E402
from ur4rec.texts.leakage import build_title_index, find_mentions  # noqa: E402
from ur4rec.training.checkpoint import load_checkpoint, run_fingerprint  # noqa: E402
from ur4rec.training.run import build_workspace  # noqa: E402

SEEDS = (2020, 2021, 2022, 2023, 2024)
SASREC_ROWS = ("sasrec", "item-init", "item-add", "item-alphafuse", "user-distill", "user-distill-demo")
RARE_MAX_COUNT = 10


def cv_r2(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Out-of-fold R² of a least-squares map x -> y (with intercept), pooled over y's columns."""
    order = np.random.default_rng(seed).permutation(len(x))
    xb = np.hstack([x, np.ones((len(x), 1))])
    residual = 0.0
    for part in np.array_split(order, folds):
        train = np.setdiff1d(order, part)
        coef, *_ = np.linalg.lstsq(xb[train], y[train], rcond=None)
        residual += float(((xb[part] @ coef - y[part]) ** 2).sum())
    return 1.0 - residual / float(((y - y.mean(0)) ** 2).sum())


RIDGE_GRID = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def ridge_fit(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge on standardised x (intercept unpenalised): (coef, mean, scale)."""
    mu, sd = x.mean(0), x.std(0) + 1e-12
    z = (x - mu) / sd
    coef = np.linalg.solve(z.T @ z + lam * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    return np.append(coef, y.mean()), mu, sd


def ridge_cv_predict(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold ridge predictions, the penalty chosen per outer fold by an inner cross-validation on
    that fold's training users only (a probe that cannot fit noise into its score)."""
    def oof(x: np.ndarray, y: np.ndarray, lam: float | None, rng_seed: int) -> np.ndarray:
        order = np.random.default_rng(rng_seed).permutation(len(x))
        pred = np.empty(len(x))
        for part in np.array_split(order, folds):
            train = np.setdiff1d(order, part)
            best = lam
            if best is None:
                errors = [((oof(x[train], y[train], g, rng_seed + 1) - y[train]) ** 2).mean() for g in RIDGE_GRID]
                best = RIDGE_GRID[int(np.argmin(errors))]
            coef, mu, sd = ridge_fit(x[train], y[train], best)
            pred[part] = ((x[part] - mu) / sd) @ coef[:-1] + coef[-1]
        return pred
    return oof(x, y, None, seed)


def demographics_probe(users: pd.DataFrame, num_users: int, h: np.ndarray) -> dict[str, float]:
    """How much of a user's gender and age SASRec's user representation ``h`` already holds (5-fold
    cross-validated ridge probes, ``ridge_cv_predict``; users without the attribute left out): what
    demographics in the user text could add to it. Gender: accuracy beside the majority rate; age: R²."""
    table = users.set_index("user").reindex(range(num_users))
    out: dict[str, float] = {}
    if "gender" in table and table["gender"].notna().any():
        known = table["gender"].isin(["M", "F"]).to_numpy()
        female = (table["gender"][known] == "F").to_numpy(float)
        out["gender_accuracy"] = float(((ridge_cv_predict(h[known], female) > 0.5) == (female > 0.5)).mean())
        out["gender_majority"] = float(max(female.mean(), 1 - female.mean()))
    if "age" in table and table["age"].notna().any():
        known = table["age"].notna().to_numpy()
        age = table["age"][known].to_numpy(float)
        residual = ((ridge_cv_predict(h[known], age) - age) ** 2).sum()
        out["age_r2"] = float(1 - residual / ((age - age.mean()) ** 2).sum())
    return out


def load_run(run_dir: Path, checkpoint: str):
    """The run's workspace on the CPU with ``checkpoint`` loaded, refused if the data or texts changed."""
    cfg = load_config(run_dir / "config.yaml", ["device=cpu"])
    ws = build_workspace(cfg)
    expected = run_fingerprint(cfg, ws.data.fingerprint, ws.text_fingerprint)
    ws.model.load_state_dict(load_checkpoint(run_dir / checkpoint, expected)["model"])
    ws.model.eval()
    return ws


def valid_ndcg(ws) -> float:
    res = evaluate_full_ranking(sasrec_scorer(ws.model), ws.data, "valid", ws.cfg.max_seq_len, ks=[10])
    return float(res.summary["ndcg@10"])


@torch.no_grad()
def sasrec_row(run_dir: Path, row: str) -> dict[str, Any]:
    ws = load_run(run_dir, "best-pretrain_sasrec.pt")
    sasrec = ws.model.sasrec
    vectors = sasrec.item_vectors()[1:].double().numpy()
    text = whitened_components(ws.texts.item, sasrec.hidden_dim)[1:].double().numpy()
    out: dict[str, Any] = {"valid_ndcg@10": valid_ndcg(ws), "text_r2": cv_r2(text, vectors)}
    rare = ws.data.item_popularity()[1:] <= RARE_MAX_COUNT
    if row == "item-init":
        start = whitened_components(ws.texts.item, sasrec.hidden_dim)[1:] * sasrec.init_std
        out["init_cosine"] = float(F.cosine_similarity(sasrec.item_embedding.weight[1:], start, dim=1).mean())
    if row == "item-add":
        text_part = sasrec.item_text.adapter(sasrec.item_text.text)[1:]
        share = (text_part.pow(2).sum(1) / sasrec.item_vectors()[1:].pow(2).sum(1)).numpy()
        out["text_share"] = float(share.mean())
        out["text_share_rare"] = float(share[rare].mean())
    if row == "item-alphafuse":
        s = sasrec.item_text.text.shape[1]
        v = sasrec.item_vectors()[1:]
        share = (v[:, :s].pow(2).sum(1) / v.pow(2).sum(1)).numpy()
        out["text_share"] = float(share.mean())
        out["text_share_rare"] = float(share[rare].mean())
        out["text_scale"] = float(sasrec.item_text.text_scale)
    seq = pad_left(ws.data.history("valid"), ws.cfg.max_seq_len)
    h = sasrec.user_representation(seq)
    out.update(demographics_probe(ws.data.users, ws.data.num_users, h.double().numpy()))
    if sasrec.user_text is not None:
        pred = F.normalize(sasrec.user_text.head(h), dim=-1)
        target = sasrec.user_text.target
        users = torch.arange(len(seq))
        out["distill_cosine"] = float((pred * target[users]).sum(-1).mean())
        other = torch.roll(users, 1)  # another user's text: the chance level
        out["distill_cosine_other_user"] = float((pred * target[other]).sum(-1).mean())
        # how alike the users' texts are to begin with: what "another user's" can share with one's own
        out["text_cosine_between_users"] = float((target[users] * target[other]).sum(-1).mean())
    out["rare_items"] = int(rare.sum())
    return out


def sampled_ndcg10(scores: torch.Tensor) -> torch.Tensor:
    """Per-row NDCG@10 of column 0 (the target) among the row's candidates (ties count against it)."""
    rank = 1 + (scores[:, 1:] >= scores[:, :1]).sum(1)
    return torch.as_tensor(metrics_from_ranks(rank, ks=[10])["ndcg@10"])


@torch.no_grad()
def sampled_scores(ws) -> dict[str, dict[str, float]]:
    """Per case, mean NDCG@10 of the target among itself and 100 sampled items (a diagnostic only) for
    each score the fused model computes, and the spread of the part text adds to the score relative to
    SASRec's part. The 100 items are the project's sampled negatives of validation (never a known or
    held-out item of the user; the same for every case, so the cases are paired). Cases: "valid", the
    held-out item after the training history; "train", each user's last training item after the items
    before it, for users whose preference text does not name it; "train_named", those whose text
    names it (the template's best-rated titles include it for some users: then the text part reads its
    target). A text part that helps on training targets and hurts on held-out ones learned something
    true of training targets only."""
    model, data, max_len = ws.model, ws.data, ws.cfg.max_seq_len
    train, valid = data.train_sequences(), data.held_out("valid")
    negatives = sampled_negatives(data, "valid", 100, "uniform", ws.cfg.seed)
    index = build_title_index(data.items, data.num_items)
    users = np.array([u for u in range(data.num_users) if len(train[u]) >= 2 and len(valid[u])])
    named = np.array([int(train[u][-1]) in find_mentions(ws.texts.user_texts[u] or "", index) for u in users])
    cases = {"valid": (users, [train[u] for u in users], [int(valid[u][0]) for u in users])}
    for case, keep in (("train", ~named), ("train_named", named)):
        chosen = users[keep]
        cases[case] = (chosen, [train[u][:-1] for u in chosen], [int(train[u][-1]) for u in chosen])
    out: dict[str, dict[str, float]] = {}
    for case, (who, hist, target) in cases.items():
        who_t = torch.as_tensor(who)
        seq = pad_left(hist, max_len)
        cands = torch.cat([torch.tensor(target)[:, None], negatives[who_t]], 1)
        parts: dict[str, list[torch.Tensor]] = {"scores": [], "sasrec_scores": [], "retriever_scores": [],
                                                "added_spread": []}
        for start in range(0, len(who), 128):
            part = slice(start, start + 128)
            o = model(who_t[part], seq[part], cands[part], return_components=True)
            for key in ("scores", "sasrec_scores", "retriever_scores"):
                parts[key].append(sampled_ndcg10(o[key]))
            if model.feature is not None:  # score = SASRec's + the feature's
                base = o["sasrec_scores"]
            else:  # score = w_s * SASRec / spread_s + w_r * retriever / spread_r
                base = o["fusion_weights"][:, :1] * o["sasrec_scores"] / model.scale.spread[0]
            parts["added_spread"].append((o["scores"] - base).std(1) / base.std(1))
        # a case without users (e.g. no text names a training item) gives NaN, shown as such
        out[case] = {key: float(torch.cat(v).mean()) if v else float("nan") for key, v in parts.items()}
        out[case]["users"] = len(who)
    return out


def feature_row(run_dir: Path, sasrec_dir: Path) -> dict[str, Any]:
    """``feature-fusion``: the end_to_end checkpoint's SASRec branch alone against the fused scorer."""
    table = json.loads((run_dir / "eval.json").read_text())["final_selection"]["table"]
    out: dict[str, Any] = {"fused_valid_end_to_end": table["end_to_end"]["None"],
                           "fused_valid_joint_finetune": table["joint_finetune"]["None"]}
    for stage in ("joint_finetune", "end_to_end"):
        ws = load_run(run_dir, f"best-{stage}.pt")
        out[f"sasrec_branch_valid_{stage}"] = valid_ndcg(ws)
    out["sampled_end_to_end"] = sampled_scores(ws)
    out["sasrec_run_valid"] = valid_ndcg(load_run(sasrec_dir, "best-pretrain_sasrec.pt"))
    return out


def late_fusion_row(run_dir: Path) -> dict[str, Any]:
    """``late-fusion``: the retriever trained on top of the fixed SASRec (pretrain_retriever): its
    sampled ranking of training targets against held-out ones, beside SASRec's."""
    return {"sampled_pretrain_retriever": sampled_scores(load_run(run_dir, "best-pretrain_retriever.pt"))}


def collect(root: Path, seeds: list[int]) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for row in (*SASREC_ROWS, "late-fusion", "feature-fusion"):
        for seed in seeds:
            run_dir = root / f"{row}-{seed}"
            if not (run_dir / "ablation.json").is_file():
                continue
            print(f"{row}, seed {seed}", file=sys.stderr, flush=True)
            if row == "feature-fusion":
                rec = feature_row(run_dir, root / f"sasrec-{seed}")
            else:
                rec = late_fusion_row(run_dir) if row == "late-fusion" else sasrec_row(run_dir, row)
            rows.setdefault(row, {})[str(seed)] = rec
    return rows


def mean(values: list[float]) -> str:
    return f"{np.mean(values):.3f}" if values else "—"


def markdown(result: dict[str, Any]) -> list[str]:
    rows = {name: result["rows"][name] for name in result["row_order"]}
    base = rows.get("sasrec", {})
    md = ["# Text ablation: what each row did with its text (validation, trained runs of bench/text_ablation.py)", "",
          f"Runs in `{result['root']}`; nothing trained; means over the seeds each row has (Δ: against the "
          "same seeds' `sasrec` runs).", "",
          "Demographics: 5-fold cross-validated ridge probes (penalty chosen inside each training fold) of each "
          "user's gender (accuracy; the majority "
          "rate in brackets) and age (R²) from SASRec's representation of the user's training history: what "
          "the demographics a template text can add (`user-distill-demo`) are already worth to SASRec.", "",
          "| row | seeds | valid NDCG@10 (full ranking) | Δ vs sasrec | text R² of item vectors "
          "| demographics in the user vector | row's own measure |",
          "|---|---:|---:|---:|---:|---|---|"]
    for row in SASREC_ROWS:
        per = rows.get(row, {})
        if not per:
            continue
        values = list(per.values())
        delta = [p["valid_ndcg@10"] - base[s]["valid_ndcg@10"] for s, p in per.items() if s in base]
        own = ""
        if row == "item-init":
            own = f"cosine to the text start {mean([p['init_cosine'] for p in values])}"
        elif row in ("item-add", "item-alphafuse"):
            own = (f"text share of item vectors {mean([p['text_share'] for p in values])} "
                   f"(rare items {mean([p['text_share_rare'] for p in values])})")
        elif row.startswith("user-distill"):
            own = (f"head→own text cosine {mean([p['distill_cosine'] for p in values])} "
                   f"(another user's {mean([p['distill_cosine_other_user'] for p in values])}; two users' texts "
                   f"{mean([p['text_cosine_between_users'] for p in values])})")
        probe = (f"gender {mean([p['gender_accuracy'] for p in values])} "
                 f"({mean([p['gender_majority'] for p in values])}), age R² {mean([p['age_r2'] for p in values])}"
                 if all("age_r2" in p and "gender_accuracy" in p for p in values) else "—")
        md.append(f"| {row} | {len(values)} | {np.mean([p['valid_ndcg@10'] for p in values]):.4f} | "
                  f"{'' if row == 'sasrec' or not delta else f'{np.mean(delta):+.4f}'} | "
                  f"{mean([p['text_r2'] for p in values])} | {probe} | {own} |")
    sampled_note = ("Sampled (a diagnostic): NDCG@10 of the target among itself and the user's 100 sampled "
                    "validation negatives (never a known or held-out item), for the validation item and for each "
                    "user's last training item after the items before it; *named*: users whose preference text "
                    "names that training item (the text part reads its target), *not named*: the others.")
    per_seed = rows.get("feature-fusion", {})
    if per_seed:
        md += ["", "## Feature fusion: the learned feature or SASRec's drift? (validation NDCG@10)", "",
               "Columns 2–4: full ranking of SASRec alone; column 5: the fused scorer, two-stage (its `eval.json`). "
               + sampled_note, "",
               "| seed | sasrec run | joint_finetune: SASRec branch | end_to_end: SASRec branch | end_to_end: fused "
               "| feature / SASRec score spread (sampled) | sampled, validation item: branch → fused "
               "| sampled, last training item not named: branch → fused | named: branch → fused |",
               "|---|---:|---:|---:|---:|---:|---|---|---|"]
        for seed, p in per_seed.items():
            c = p["sampled_end_to_end"]
            sampled = [f"{c[k]['sasrec_scores']:.4f} → {c[k]['scores']:.4f}" for k in ("valid", "train", "train_named")]
            md.append(f"| {seed} | {p['sasrec_run_valid']:.4f} | {p['sasrec_branch_valid_joint_finetune']:.4f} | "
                      f"{p['sasrec_branch_valid_end_to_end']:.4f} | {p['fused_valid_end_to_end']:.4f} | "
                      f"{c['valid']['added_spread']:.2f} | " + " | ".join(sampled) + " |")
    per_seed = rows.get("late-fusion", {})
    if per_seed:
        md += ["", "## Late fusion: the retriever (pretrain_retriever) on training targets and held-out ones", "",
               sampled_note, "",
               "| seed | validation item: SASRec → retriever | last training item not named: SASRec → retriever "
               "| named: SASRec → retriever | users named |", "|---|---|---|---|---:|"]
        for seed, p in per_seed.items():
            c = p["sampled_pretrain_retriever"]
            md.append(f"| {seed} | " + " | ".join(f"{c[k]['sasrec_scores']:.4f} → {c[k]['retriever_scores']:.4f}"
                                                  for k in ("valid", "train", "train_named"))
                      + f" | {c['train_named']['users']} of {c['valid']['users']} |")
    md.append("")
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT / "runs" / "text-ablation"))
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = collect(Path(args.root), args.seeds)
    result = {"root": args.root, "seeds": args.seeds, "threads": 1, "row_order": list(rows), "rows": rows}
    publish("text_ablation_reasons", result, markdown(result), args.json, Path(args.results))


if __name__ == "__main__":
    main()
