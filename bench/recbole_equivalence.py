"""Is RecBole 1.2.1's SASRec the same function as ours with bench/sasrec_patches.py's ``recbole_arch``?

    .bench-venv/bin/python bench/recbole_equivalence.py [--json]

The first step of bisecting the gap to RecBole's SASRec (README "Against RecBole"): separate the
model from its training. RecBole's SASRec is built with the accuracy bench's settings (hidden 64,
inner 256, 2 layers, 2 heads, gelu, max length 50) and its initial weights copied into the
workbench's SASRec — as it ships, and with the ``recbole_arch`` patch. In eval mode (no dropout) both
read random histories of every length 1–50 (RecBole's right-padded, ours left-padded) and we compare
the user representations, the catalogue scores, the CE loss and its gradient. RecBole's LayerNorms
use eps 1e-12, PyTorch's default 1e-5; we report both ours-as-built and with eps set to 1e-12.

Runs in the benchmark venv (RecBole's own dependencies); our model file is loaded on its own
(``ur4rec/models/sasrec.py`` needs only torch), as the package needs dependencies that venv lacks.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.publish import publish  # noqa: E402
from bench.sasrec_patches import recbole_arch  # noqa: E402

N_ITEMS, HIDDEN, MAX_LEN, USERS = 1682, 64, 50, 200


def load_our_sasrec() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ur4rec_sasrec_alone", ROOT / "ur4rec" / "models" / "sasrec.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recbole_sasrec(seed: int) -> torch.nn.Module:
    from recbole.model.sequential_recommender import SASRec

    class Config(dict):  # RecBole reads its config with [] and expects None for unset keys
        def __getitem__(self, key):
            return dict.get(self, key)

    cfg = Config(n_layers=2, n_heads=2, hidden_size=HIDDEN, inner_size=4 * HIDDEN, hidden_dropout_prob=0.2,
                 attn_dropout_prob=0.2, hidden_act="gelu", layer_norm_eps=1e-12, initializer_range=0.02,
                 loss_type="CE", MAX_ITEM_LIST_LENGTH=MAX_LEN, USER_ID_FIELD="user_id", ITEM_ID_FIELD="item_id",
                 LIST_SUFFIX="_list", ITEM_LIST_LENGTH_FIELD="item_length", NEG_PREFIX="neg_", device="cpu")
    torch.manual_seed(seed)
    return SASRec(cfg, SimpleNamespace(num=lambda field: N_ITEMS + 1)).eval()


def copy_weights(rb: torch.nn.Module, ours: torch.nn.Module) -> None:
    """RecBole's parameters into ours (separate q/k/v become one qkv; its embedding LayerNorm is the
    slot our ``final_ln`` fills under the patch)."""
    sd = rb.state_dict()
    pairs = {"item_embedding.weight": "item_embedding.weight", "position_embedding.weight": "position_embedding.weight",
             "final_ln.weight": "LayerNorm.weight", "final_ln.bias": "LayerNorm.bias"}
    for i in range(len(ours.blocks)):
        a, f, o = f"trm_encoder.layer.{i}.multi_head_attention.", f"trm_encoder.layer.{i}.feed_forward.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            pairs |= {o + f"out.{kind}": a + f"dense.{kind}", o + f"ln_attn.{kind}": a + f"LayerNorm.{kind}",
                      o + f"ffn.0.{kind}": f + f"dense_1.{kind}", o + f"ffn.3.{kind}": f + f"dense_2.{kind}",
                      o + f"ln_ffn.{kind}": f + f"LayerNorm.{kind}"}
            sd[a + f"qkv.{kind}"] = torch.cat([sd[a + f"{x}.{kind}"] for x in ("query", "key", "value")])
            pairs[o + f"qkv.{kind}"] = a + f"qkv.{kind}"
    mine = ours.state_dict()
    if set(mine) != set(pairs):
        raise SystemExit(f"parameter names changed: unmapped {sorted(set(mine) ^ set(pairs))}")
    ours.load_state_dict({k: sd[v] for k, v in pairs.items()})


def histories(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """USERS random histories of lengths 1..MAX_LEN: right-padded (RecBole), left-padded (ours), lengths,
    next items."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.arange(USERS) % MAX_LEN + 1
    right = torch.zeros(USERS, MAX_LEN, dtype=torch.long)
    left = torch.zeros_like(right)
    for u, n in enumerate(lengths.tolist()):
        items = torch.randint(1, N_ITEMS + 1, (n,), generator=g)
        right[u, :n], left[u, MAX_LEN - n:] = items, items
    return right, left, lengths, torch.randint(1, N_ITEMS + 1, (USERS,), generator=g)


def compare(rb: torch.nn.Module, ours: torch.nn.Module, seed: int) -> dict[str, float]:
    right, left, lengths, target = histories(seed)
    rep_rb = rb.forward(right, lengths)
    rep_ours = ours.forward(left)[:, -1]
    logits_rb, logits_ours = rep_rb @ rb.item_embedding.weight.T, rep_ours @ ours.item_embedding.weight.T
    loss_rb = F.cross_entropy(logits_rb, target)  # RecBole's CE: the padding column is a class
    loss_ours = F.cross_entropy(logits_ours, target)  # the same loss, on our forward
    loss_ours_masked = F.cross_entropy(logits_ours.index_fill(1, torch.tensor([0]), float("-inf")), target)
    g_rb = torch.autograd.grad(loss_rb, rb.item_embedding.weight)[0]
    g_ours = torch.autograd.grad(loss_ours, ours.item_embedding.weight)[0]
    rep_rb, rep_ours, logits_rb, logits_ours = (t.detach() for t in (rep_rb, rep_ours, logits_rb, logits_ours))
    loss_rb, loss_ours, loss_ours_masked = (t.detach() for t in (loss_rb, loss_ours, loss_ours_masked))
    return {"max_abs_diff_user_representation": float((rep_rb - rep_ours).abs().max()),
            "mean_abs_user_representation": float(rep_rb.abs().mean()),
            "max_abs_diff_catalogue_scores": float((logits_rb - logits_ours).abs().max()),
            "ce_loss_recbole": float(loss_rb), "ce_loss_ours_same_loss": float(loss_ours),
            "ce_loss_ours_padding_excluded": float(loss_ours_masked),
            "max_abs_diff_item_embedding_gradient": float((g_rb - g_ours).abs().max()),
            "max_abs_item_embedding_gradient": float(g_rb.abs().max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sasrec = load_our_sasrec()
    rows = {}
    for label, patched, eps in (("ours as shipped", False, None), ("ours + recbole_arch", True, None),
                                ("ours + recbole_arch, LayerNorm eps 1e-12", True, 1e-12)):
        if patched:
            recbole_arch(sasrec)
        per_seed = []
        for seed in (0, 1, 2):
            rb = recbole_sasrec(seed)
            ours = sasrec.SASRec(N_ITEMS, HIDDEN, 2, 2, 0.2, MAX_LEN).eval()
            copy_weights(rb, ours)
            for m in ours.modules():
                if eps is not None and isinstance(m, torch.nn.LayerNorm):
                    m.eps = eps
            per_seed.append(compare(rb, ours, seed))
        rows[label] = {k: max(r[k] for r in per_seed) if k.startswith("max") else sum(r[k] for r in per_seed) / 3
                       for k in per_seed[0]}
    result = {"benchmark": "RecBole 1.2.1 SASRec vs the workbench's, same weights, eval mode",
              "histories": f"{USERS} random, lengths 1-{MAX_LEN}, catalogue {N_ITEMS}; 3 weight seeds",
              "torch": torch.__version__, "rows": rows}
    md = ["# RecBole's SASRec vs ours, same weights (eval mode)", "",
          f"RecBole 1.2.1's SASRec initial weights (3 seeds) copied into ours; {USERS} random histories of "
          f"lengths 1–{MAX_LEN}; worst case over seeds (`bench/recbole_equivalence.py`, torch {torch.__version__}).",
          "", "| our model | max \\|Δ\\| user repr. (mean \\|repr.\\|) | max \\|Δ\\| catalogue scores | CE loss "
          "RecBole / ours (/ ours without the padding class) | max \\|Δ\\| item-embedding gradient (max \\|grad\\|) |",
          "|---|---:|---:|---:|---:|"]
    for label, r in rows.items():
        md.append(f"| {label} | {r['max_abs_diff_user_representation']:.1e} ({r['mean_abs_user_representation']:.3f})"
                  f" | {r['max_abs_diff_catalogue_scores']:.1e} | {r['ce_loss_recbole']:.5f} / "
                  f"{r['ce_loss_ours_same_loss']:.5f} / {r['ce_loss_ours_padding_excluded']:.5f} | "
                  f"{r['max_abs_diff_item_embedding_gradient']:.1e} ({r['max_abs_item_embedding_gradient']:.1e}) |")
    md.append("")
    publish("recbole_equivalence", result, md, args.json)

if __name__ == "__main__":
    main()
