"""Scoring speed of the MoE retriever and the fused model: naive per-candidate loop vs vectorised.

    python bench/scoring.py [--json] [--repeats N] [--loop-repeats N] [--skip-full]

Original dims: retriever_output_dim 512, 8 MoE heads, 8 proxies, text dim 384, 943 users and
1682 items (ML-100K's sizes), memory of 4 slots, SASRec 64/2 blocks/2 heads/length 50. The frozen
text embeddings are **random** (unit-normalised Gaussians) and all weights are random: speed does
not depend on their values, and the benchmark needs no prepared data or sentence encoder.

Measured (CPU, ``torch.set_num_threads(2)``, eval mode, no_grad, one warm-up, median of repeats):

- ``loop_s``: 64 users x 100 candidates scored one candidate at a time with full attention calls
  (``score_loop``, the original system's structure); ``vectorised_s``: the same scores in one
  batched ``score`` call; ``speedup`` = loop / vectorised (goal >= 50); the two must agree (1e-5).
- ``gflops_achieved``: the vectorised path's analytic matmul FLOPs / its time; ``gflops_sgemm``: a
  large fp32 matmul timed in the same run (the machine's practical ceiling).
- ``rerank_s``: two-stage scoring of all 943 users: SASRec ranks the catalogue, the fused model
  re-ranks each user's top-100 (history excluded) (goal <= 10 s).
- ``full_catalogue_s``: exact fused scores for 943 x 1682 (``full_sort_predict``).

The last stdout line is one JSON object; results also go to bench/results/scoring.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ur4rec.evaluation.scoring import two_stage_scores  # noqa: E402
from ur4rec.io import atomic_write_json, atomic_write_text  # noqa: E402
from ur4rec.models import UR4RecV2MoE, build_model  # noqa: E402

THREADS = 2
DIMS = dict(num_users=943, num_items=1682, text_dim=384, output_dim=512, heads=8, proxies=8, memory=4,
            sasrec_hidden=64, sasrec_blocks=2, sasrec_heads=2, max_seq_len=50)
LOOP_USERS, LOOP_CANDS, TOP_R = 64, 100, 100


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls after ``warmup`` calls, and the last result."""
    for _ in range(warmup):
        fn()
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def build() -> tuple[UR4RecV2MoE, torch.Tensor]:
    d = DIMS
    cfg = SimpleNamespace(
        max_seq_len=d["max_seq_len"], sasrec_hidden_dim=d["sasrec_hidden"], sasrec_num_blocks=d["sasrec_blocks"],
        sasrec_num_heads=d["sasrec_heads"], sasrec_dropout=0.2, sasrec_positions="from_end",
        text_embedding_dim=d["text_dim"],
        retriever_output_dim=d["output_dim"], moe_num_heads=d["heads"], moe_dropout=0.1,
        moe_num_proxies=d["proxies"], max_memory_size=d["memory"], update_trigger="INTERACTION_COUNT",
        interaction_threshold=10, drift_threshold=0.3, decay_factor=0.95, fusion_method="weighted",
        sasrec_weight=0.5, retriever_weight=0.5, sasrec_item_text="none",
        sasrec_text_components=4, sasrec_user_text_weight=0.0)
    g = torch.Generator().manual_seed(0)
    user = torch.nn.functional.normalize(torch.randn(d["num_users"], d["text_dim"], generator=g), dim=-1)
    item = torch.nn.functional.normalize(torch.randn(d["num_items"] + 1, d["text_dim"], generator=g), dim=-1)
    item[0] = 0
    torch.manual_seed(0)
    model = build_model(cfg, d["num_users"], d["num_items"], user, item).eval()
    # random histories of 1..max_seq_len items, left-padded
    lengths = torch.randint(1, d["max_seq_len"] + 1, (d["num_users"],), generator=g)
    seq = torch.randint(1, d["num_items"] + 1, (d["num_users"], d["max_seq_len"]), generator=g)
    seq[torch.arange(d["max_seq_len"]).unsqueeze(0) < (d["max_seq_len"] - lengths).unsqueeze(1)] = 0
    return model, seq


def vectorised_flops(n_users: int, n_items: int, n_pairs: int) -> float:
    """Analytic matmul FLOPs (2 per multiply-add) of ``TextPreferenceRetrieverMoE.forward``, counted
    where the factorisation computes them: per user, per distinct item, per pair (elementwise work,
    softmaxes and LayerNorms excluded)."""
    d, t, k = DIMS["output_dim"], DIMS["text_dim"], DIMS["proxies"]
    ffn = 2 * (d * 2 * d + 2 * d * d)  # d -> 2d -> d
    per_user = 2 * t * d + 2 * 2 * d * d + 2 * d * d  # projection, expert W_v and W_o, router user term
    if DIMS["memory"]:
        per_user += 2 * 2 * d * d  # memory gate over [pref; read]
    per_item = (2 * t * d  # description projection
                + 2 * (2 * 2 * d * d + ffn)  # two item experts: W_v, W_o and FFN
                + 3 * 2 * d * d)  # router terms of query, description and ID
    per_pair = (ffn  # the user-preference expert's FFN
                + 2 * d * 3  # router output layer
                + 2 * d * d + 2 * 2 * d * k + 2 * d * d)  # proxy attention: W_q, scores and values, W_o
    return n_users * per_user + n_items * per_item + n_pairs * per_pair


def sgemm_gflops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    secs, _ = timed(lambda: a @ b, repeats, warmup=2)
    return 2 * size**3 / secs / 1e9


def rerank_all(model: UR4RecV2MoE, users: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
    """Two-stage: SASRec's top-R per user (history excluded), re-ranked by the fused model."""
    first = model.sasrec.full_sort_predict(seq)
    exclude = torch.zeros_like(first, dtype=torch.bool).scatter_(1, seq, True)  # history and padding
    return two_stage_scores(first, lambda c: model(users, seq, c, return_components=False)["scores"], TOP_R,
                            exclude)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of the fast paths (median)")
    parser.add_argument("--loop-repeats", type=int, default=1, help="timed repeats of the slow loop (median)")
    parser.add_argument("--skip-full", action="store_true", help="skip the full-catalogue timing")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    model, seq = build()
    users = torch.arange(DIMS["num_users"])
    g = torch.Generator().manual_seed(1)
    loop_users = users[:LOOP_USERS]
    loop_cands = torch.randint(1, DIMS["num_items"] + 1, (LOOP_USERS, LOOP_CANDS), generator=g)
    result: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "dims": DIMS,
                    "python": platform.python_version(), "machine": platform.processor() or platform.machine(),
                    "embeddings": "random unit-normalised (not real text), random weights",
                    "work": f"{LOOP_USERS} users x {LOOP_CANDS} candidates"}
    with torch.no_grad():
        r = model.retriever
        loop_s, loop_scores = timed(lambda: r.score_loop(loop_users, loop_cands), args.loop_repeats, warmup=0)
        vec_s, vec_scores = timed(lambda: r.score(loop_users, loop_cands), args.repeats)
        max_diff = float((loop_scores - vec_scores).abs().max())
        n_items = len(loop_cands.unique())
        flops = vectorised_flops(LOOP_USERS, n_items, LOOP_USERS * LOOP_CANDS)
        result |= {"loop_s": round(loop_s, 4), "vectorised_s": round(vec_s, 5),
                   "speedup": round(loop_s / vec_s, 1), "max_abs_diff_loop_vs_vectorised": max_diff,
                   "gflops_achieved": round(flops / vec_s / 1e9, 2), "gflops_sgemm": round(sgemm_gflops(), 2)}
        rerank_s, reranked = timed(lambda: rerank_all(model, users, seq), args.repeats)
        assert torch.isfinite(reranked[~torch.isinf(reranked)]).all(), "non-finite re-ranking scores"
        result["rerank_s"] = round(rerank_s, 3)
        result["rerank_work"] = f"{DIMS['num_users']} users x top-{TOP_R} of SASRec, fused"
        if not args.skip_full:
            full_s, full = timed(lambda: model.full_sort_predict(users, seq), max(1, args.repeats - 2))
            assert torch.isfinite(full[:, 1:]).all(), "non-finite catalogue scores"
            result["full_catalogue_s"] = round(full_s, 3)
            result["full_catalogue_work"] = f"{DIMS['num_users']} x {DIMS['num_items']} exact fused scores"
    result["gflops_fraction_of_sgemm"] = round(result["gflops_achieved"] / result["gflops_sgemm"], 3)
    result["goals"] = {"speedup>=50": result["speedup"] >= 50, "rerank_s<=10": result["rerank_s"] <= 10,
                       "gflops>=40%_of_sgemm": result["gflops_fraction_of_sgemm"] >= 0.4}
    out_dir = ROOT / "bench" / "results"
    atomic_write_json(out_dir / "scoring.json", result)
    atomic_write_text(out_dir / "scoring.md", markdown(result))
    if not args.json:
        print(markdown(result))
    print(json.dumps(result, sort_keys=True))


def markdown(r: dict) -> str:
    rows = [("naive loop (one candidate at a time)", f"{r['loop_s']:.2f} s", r["work"]),
            ("vectorised", f"{r['vectorised_s']:.4f} s", r["work"]),
            ("speedup", f"{r['speedup']}x", "goal >= 50"),
            ("achieved / sgemm", f"{r['gflops_achieved']} / {r['gflops_sgemm']} GFLOP/s", "analytic matmul FLOPs"),
            ("re-rank (two-stage)", f"{r['rerank_s']:.2f} s", r["rerank_work"] + "; goal <= 10 s")]
    if "full_catalogue_s" in r:
        rows.append(("full catalogue", f"{r['full_catalogue_s']:.2f} s", r["full_catalogue_work"]))
    lines = ["# Scoring benchmark", "",
             f"torch {r['torch']}, {r['threads']} threads, {r['machine']}; dims {r['dims']}; "
             f"embeddings: {r['embeddings']}. "
             f"Loop vs vectorised max |diff| = {r['max_abs_diff_loop_vs_vectorised']:.2e}.",
             "", "| what | time | work |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
