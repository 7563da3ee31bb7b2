"""One seed controls everything.

Every source of randomness is derived from ``(seed, *keys)``: python's and numpy's global RNGs,
torch's (dropout), and each sampler's own ``torch.Generator``. Deriving per (stage, epoch) rather
than carrying RNG state forward makes a resumed run identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derive_seed(seed: int, *keys: object) -> int:
    digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63 - 1)


def seed_everything(seed: int, *keys: object) -> int:
    s = derive_seed(seed, *keys)
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)
    return s


def generator(seed: int, *keys: object) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, *keys))
    return g
