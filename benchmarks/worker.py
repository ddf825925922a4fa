"""Subprocess entry point: ``python -m benchmarks.worker MODULE:FUNCTION KWARGS_JSON OUT``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import call_worker, plain


def main(argv: list[str]) -> None:
    target, kwargs, out = argv
    Path(out).write_text(json.dumps(plain(call_worker(target, json.loads(kwargs)))))


if __name__ == "__main__":
    main(sys.argv[1:])
