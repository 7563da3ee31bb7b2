"""Where every benchmark's results go: bench/results/<name>.json and .md, written atomically."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ur4rec.io import atomic_write_json, atomic_write_text  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def publish(name: str, result: dict[str, Any], markdown: list[str], print_json: bool,
            results: Path = RESULTS) -> None:
    """Write ``<name>.json`` and ``<name>.md`` into ``results``; show the markdown on stderr and, if
    asked, the JSON as the last stdout line."""
    atomic_write_json(results / f"{name}.json", result)
    atomic_write_text(results / f"{name}.md", "\n".join(markdown))
    print("\n".join(markdown), file=sys.stderr)
    if print_json:
        print(json.dumps(result))
