"""``ur4rec texts``: generate (or load) preference texts and their embeddings."""

from __future__ import annotations

import argparse
from typing import Any

from ur4rec.config import load_config
from ur4rec.data import load_prepared
from ur4rec.texts.pipeline import ORIGIN_LABEL, build_texts


def cmd_texts(args: argparse.Namespace) -> tuple[int, dict[str, Any], str]:
    cfg = load_config(args.config, args.overrides)
    data = load_prepared(cfg)
    res = build_texts(cfg, data, limit=args.limit, progress=not args.json)
    payload = res.to_dict()
    cov, fb = payload["coverage"], payload["fallback"]
    lines = [
        f"Source: {payload['source']} ({payload['model']}) - {ORIGIN_LABEL.get(payload['origin'], payload['origin'])}.",
        (f"Texts: {payload['users']} users, {payload['items']} items ({payload['new_texts']} new); from the source: "
        f"{cov['users']} users, {cov['items']} items; template fallback: {fb['users']} users, {fb['items']} items."),
        (f"Embeddings: {payload['encoder']} ({payload['encoder_origin']}), {payload['dim']}-d, "
        f"{payload['new_embeddings']} newly encoded."),
    ]
    if "tokens" in payload["stats"]:
        tok = payload["stats"]["tokens"]
        lines.append(f"Tokens: {tok['prompt']} prompt + {tok['completion']} completion = {tok['total']}.")
    leak = payload.get("leakage")
    if leak is not None:
        rates = "; ".join(f"{k} {100 * v['held_out']['rate']:.2f}% vs cross-user {100 * v['cross_user']:.2f}% "
                          f"(p={v['p_value']:.2g})" for k, v in leak["splits"].items())
        label = "" if leak["verdict"] == "pass" else f" - proceeding because text_leakage is {leak['action']}"
        lines.append(f"Leakage audit: {leak['verdict'].upper()}{label}. Held-out titles named: {rates}; random "
                     f"unseen {100 * leak['random_unseen']['rate']:.3f}%, training {100 * leak['train']['rate']:.2f}%.")
    if not payload["complete"]:
        lines.append("Partial build (--limit): assembled embedding matrices are written only for a complete build.")
    lines.append(f"Folder: {payload['paths']['folder']} ({payload['seconds']:.1f} s)")
    return 0, payload, "\n".join(lines)


def _positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"--limit must be a positive integer, got {value}")
    return n


def register(subparsers, common) -> None:
    p = subparsers.add_parser("texts", help="generate preference texts and sentence embeddings (cached, resumable)")
    common(p)
    p.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                   help="only the first N users and N items (try an LLM source cheaply)")
    p.set_defaults(handler=cmd_texts)
