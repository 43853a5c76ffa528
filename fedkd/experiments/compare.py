"""Are two runs the same run? ``python -m fedkd.experiments.compare RUN_DIR_A RUN_DIR_B``.

Two runs of one preset with the same seed and overrides must write the same ``metrics.jsonl``,
except for the wall-clock times: the same sampled clients, the same bytes, the same accuracies,
bit for bit (clients are sampled by client id, never by Flower's random node ids; every random
generator is seeded). This compares the rows with the times left out and prints the first
differences; the exit code is 0 when they are identical, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedkd.results import read_metrics

#: Row keys that measure time, not the computation (left out of the comparison).
TIME_KEYS = frozenset({"wall-time-s"})


def without_times(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` without its time keys (:data:`TIME_KEYS`), at any depth."""
    return {k: without_times(v) if isinstance(v, Mapping) else v
            for k, v in row.items() if k not in TIME_KEYS}


def differences(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]],
                limit: int = 10) -> list[str]:
    """Where two runs' metrics rows differ, times left out (at most ``limit`` lines)."""
    out: list[str] = []
    if len(a) != len(b):
        out.append(f"{len(a)} rows against {len(b)}")

    def walk(x: Any, y: Any, path: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(x, Mapping) and isinstance(y, Mapping):
            for key in sorted(set(x) | set(y), key=str):
                if key not in x or key not in y:
                    out.append(f"{path}.{key}: only in {'the first' if key in x else 'the second'}")
                else:
                    walk(x[key], y[key], f"{path}.{key}")
        elif x != y:
            out.append(f"{path}: {x!r} != {y!r}")

    for i, (x, y) in enumerate(zip(a, b)):
        walk(without_times(x), without_times(y), f"row {i + 1}")
    return out[:limit]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedkd.experiments.compare",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args(argv)
    diffs = differences(read_metrics(args.first), read_metrics(args.second))
    if diffs:
        print("the runs differ:\n  " + "\n  ".join(diffs))
        return 1
    print(f"identical metrics.jsonl except times ({args.first} and {args.second})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
