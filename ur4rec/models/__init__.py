"""Models: SASRec, the MoE text-preference retriever with its user memory, and their fusion (original public names)."""

from ur4rec.models.build import build_model
from ur4rec.models.moe_retriever import TextPreferenceRetrieverMoE
from ur4rec.models.sasrec import SASRec
from ur4rec.models.ur4rec_v2 import UR4RecV2MoE
from ur4rec.models.user_memory import UserMemory

__all__ = ["SASRec", "TextPreferenceRetrieverMoE", "UR4RecV2MoE", "UserMemory", "build_model"]
