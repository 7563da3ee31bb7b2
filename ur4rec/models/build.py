"""Build ``UR4RecV2MoE`` from a config and the frozen text embeddings."""

from __future__ import annotations

from typing import Any

import torch

from ur4rec.errors import UR4RecError
from ur4rec.models.moe_retriever import TextPreferenceRetrieverMoE
from ur4rec.models.sasrec import SASRec
from ur4rec.models.ur4rec_v2 import UR4RecV2MoE


def build_model(cfg: Any, num_users: int, num_items: int, user_text_emb: torch.Tensor,
                item_text_emb: torch.Tensor) -> UR4RecV2MoE:
    """``cfg`` is any object with the original flat keys (``ur4rec.config.Config``)."""
    expected = {"user text embeddings": ((num_users, cfg.text_embedding_dim), tuple(user_text_emb.shape)),
                "item text embeddings": ((num_items + 1, cfg.text_embedding_dim), tuple(item_text_emb.shape))}
    for what, (want, got) in expected.items():
        if want != got:
            raise UR4RecError(
                f"The {what} have shape {list(got)}, expected {list(want)} "
                f"(users={num_users}, items+padding={num_items + 1}, text_embedding_dim={cfg.text_embedding_dim}).",
                where="build_model", fix="rebuild the texts for this prepared dataset (`ur4rec texts`) or set "
                "text_embedding_dim to the encoder's dimension")
    sasrec = SASRec(num_items, cfg.sasrec_hidden_dim, cfg.sasrec_num_blocks, cfg.sasrec_num_heads,
                    cfg.sasrec_dropout, cfg.max_seq_len, positions=cfg.sasrec_positions,
                    upper_window=cfg.sasrec_upper_window,
                    item_text=cfg.sasrec_item_text, item_text_emb=item_text_emb,
                    text_components=cfg.sasrec_text_components, user_text_emb=user_text_emb,
                    user_text_weight=cfg.sasrec_user_text_weight)
    retriever = TextPreferenceRetrieverMoE(user_text_emb, item_text_emb, cfg.retriever_output_dim, cfg.moe_num_heads,
                                           cfg.moe_dropout, cfg.moe_num_proxies, max_memory_size=0)
    model = UR4RecV2MoE(sasrec, retriever, cfg.fusion_method, cfg.sasrec_weight, cfg.retriever_weight)
    if cfg.max_memory_size > 0:
        # created last: memory on or off leaves every other initial weight (fusion MLP included) unchanged
        retriever.attach_memory(cfg.max_memory_size, cfg.update_trigger, cfg.interaction_threshold,
                                cfg.drift_threshold, cfg.decay_factor)
    return model
