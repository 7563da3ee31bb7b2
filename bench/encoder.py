"""Sentence-encoder throughput: all-MiniLM-L6-v2 on ~500 real template texts from ML-100K.

    python bench/encoder.py [--json] [--texts N]

Encodes the same texts (half user profiles, half film descriptions) at batch sizes 32, 64 and
128 after one warm-up pass, on the CPU threads this machine has, and reports texts per second.
Writes bench/results/encoder.json and encoder.md (atomically); with --json the last stdout line is
the same JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ur4rec.config import load_config  # noqa: E402
from ur4rec.data import load_prepared  # noqa: E402
from ur4rec.io import atomic_write_json, atomic_write_text  # noqa: E402
from ur4rec.texts.encoder import load_encoder, resolve_encoder  # noqa: E402
from ur4rec.texts.template import template_texts  # noqa: E402

BATCH_SIZES = (32, 64, 128)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    ap.add_argument("--texts", type=int, default=500, help="how many texts (default 500)")
    args = ap.parse_args(argv)

    import torch

    cfg = load_config(None, {"allow_download": False})
    data = load_prepared(cfg)
    n_user = args.texts // 2
    texts = template_texts(data, "user", range(min(n_user, data.num_users)))
    texts += template_texts(data, "item", range(1, min(args.texts - len(texts), data.num_items) + 1))
    spec = resolve_encoder(cfg)
    t0 = time.perf_counter()
    enc = load_encoder(spec)
    load_s = time.perf_counter() - t0
    tokens = [len(enc.model.tokenizer(t)["input_ids"]) for t in texts]
    enc.encode(texts[:64], batch_size=32)  # warm-up
    results = []
    for bs in BATCH_SIZES:
        t0 = time.perf_counter()
        vecs = enc.encode(texts, batch_size=bs)
        dt = time.perf_counter() - t0
        results.append({"batch_size": bs, "seconds": round(dt, 3), "texts_per_s": round(len(texts) / dt, 1)})
        assert vecs.shape == (len(texts), enc.dim)
    best = max(results, key=lambda r: r["texts_per_s"])
    out = {
        "bench": "encoder", "encoder": spec.name, "encoder_origin": spec.origin, "dim": enc.dim,
        "texts": len(texts), "mean_tokens": round(sum(tokens) / len(tokens), 1), "load_seconds": round(load_s, 2),
        "results": results, "best_batch_size": best["batch_size"], "best_texts_per_s": best["texts_per_s"],
        "device": "cpu", "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__, "python": platform.python_version(),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    results_dir = ROOT / "bench" / "results"
    atomic_write_json(results_dir / "encoder.json", out)
    lines = [
        f"# Encoder throughput: {spec.name} ({enc.dim}-d, {spec.origin})", "",
        (f"{len(texts)} ML-100K template texts (mean {out['mean_tokens']} tokens), CPU, "
        f"{out['torch_threads']} torch threads, 1-min load average {out['load_average_1m']} at the end."), "",
        "| batch size | seconds | texts/s |", "|---:|---:|---:|",
        *[f"| {r['batch_size']} | {r['seconds']:.2f} | {r['texts_per_s']:.1f} |" for r in results], "",
        f"Model load: {out['load_seconds']:.1f} s. Created {out['created_utc']}.", "",
    ]
    atomic_write_text(results_dir / "encoder.md", "\n".join(lines))
    if args.json:
        print(json.dumps(out))
    else:
        print("\n".join(lines))
    return out


if __name__ == "__main__":
    main()
