"""SASRec changes that are not config keys, tried as patches on ``ur4rec train`` (experiments only).

    python bench/sasrec_patches.py PATCH [ur4rec train arguments ...]

PATCH is one of:

- ``recbole_arch``: RecBole 1.2.1's SASRec layout inside the workbench model — LayerNorm on item +
  position embedding (no √H scaling of the item embedding), positions counted from the first real
  item of the input, post-LN blocks, no dropout inside the feed-forward, no final LayerNorm (the
  model's ``final_ln`` serves as the embedding LayerNorm).
- ``positions_from_start``: only RecBole's position ids (from the first real item), the rest the
  workbench's.
- ``ema``: validation and checkpoints use an exponential moving average of the weights (decay 0.999
  per optimizer step, about 7 epochs of windows sampling's 151 steps) instead of the raw weights; meant
  for ``stages=[pretrain_sasrec]`` runs (after a stage the next one starts from the best checkpoint,
  while the average carries on).

bench/sasrec_variants.py runs them on windows sampling (the default when they were tried) beside it.
The package never imports this file: each was measured no better on validation
(bench/results/sasrec_variants.md).
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _sasrec_module(module: ModuleType | None) -> ModuleType:
    """ur4rec.models.sasrec, or the given copy of it (bench/recbole_equivalence.py loads the file alone
    in the benchmark venv, which lacks the package's other dependencies)."""
    if module is None:
        import ur4rec.models.sasrec as module
    return module


def positions_from_start(sasrec: ModuleType | None = None) -> None:
    sasrec = _sasrec_module(sasrec)

    def position_ids(self, input_seq):
        return ((input_seq != 0).long().cumsum(1) - 1).clamp(min=0)  # [B, L]: 0 at the first real item

    sasrec.SASRec.position_ids = position_ids


def recbole_arch(sasrec: ModuleType | None = None) -> None:
    sasrec = _sasrec_module(sasrec)
    positions_from_start(sasrec)

    def block_forward(self, x, attn_mask, last_k=None):  # every position: last_k is not used
        b, length, h = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.num_heads, h // self.num_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = self.ln_attn(x + self.drop(self.out(a.transpose(1, 2).reshape(b, length, h))))
        linear_in, gelu, _, linear_out = self.ffn  # skip the dropout between them
        return self.ln_ffn(x + self.drop(linear_out(gelu(linear_in(x)))))

    def forward(self, input_seq, last_only=False, last_k=None, item_vectors=None):
        k = 1 if last_only else last_k
        vectors = self.item_vectors() if item_vectors is None else item_vectors
        keep = (input_seq != 0).unsqueeze(-1).to(vectors.dtype)
        x = self.final_ln(F.embedding(input_seq, vectors) + self.position_embedding(self.position_ids(input_seq)))
        x = self.emb_dropout(x) * keep
        mask = sasrec.attention_mask(input_seq)
        for block in self.blocks:
            x = block(x, mask) * keep
        # post-LN blocks: every position is computed; last_k only slices (same values, no saving)
        return (x * keep)[:, -k:] if k else x * keep

    sasrec.SASRecBlock.forward = block_forward
    sasrec.SASRec.forward = forward


def ema(decay: float = 0.999) -> None:
    import ur4rec.training.trainer as trainer

    init, epoch = trainer.JointTrainer.__init__, trainer.JointTrainer._epoch

    def patched_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self._ema = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        self._raw = None

        def update(_opt, _args, _kwargs):
            with torch.no_grad():
                for n, p in self.model.named_parameters():
                    if p.requires_grad:
                        self._ema[n].lerp_(p.detach(), 1 - decay)

        for opt in (self.sasrec_opt, self.retriever_opt):
            opt.register_step_post_hook(update)
        evaluate = self.evaluate

        def evaluate_ema(model, stage):
            # the EMA weights stay in place for the checkpoint written next; _epoch swaps them back
            self._raw = {n: p.detach().clone() for n, p in model.named_parameters()}
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(self._ema[n])
            return evaluate(model, stage)

        self.evaluate = evaluate_ema

    def patched_epoch(self, *args, **kwargs):
        if self._raw is not None:
            with torch.no_grad():
                for n, p in self.model.named_parameters():
                    p.copy_(self._raw[n])
            self._raw = None
        return epoch(self, *args, **kwargs)

    trainer.JointTrainer.__init__, trainer.JointTrainer._epoch = patched_init, patched_epoch


PATCHES = {"recbole_arch": recbole_arch, "positions_from_start": positions_from_start, "ema": ema}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in PATCHES:
        raise SystemExit(f"usage: python bench/sasrec_patches.py {{{','.join(PATCHES)}}} [ur4rec train args]")
    PATCHES[sys.argv[1]]()
    from ur4rec.cli import main

    sys.exit(main(["train", *sys.argv[2:]]))
