"""Bytes a client uploads per round: model weights (FedAvg) against logit payloads.

Every number is measured by encoding a real payload with ``fedkd.protocol.encode`` and counting
it with ``content_nbytes`` (the array data plus keys, as Flower counts records), so it is what the
server's ``bytes-up`` metric would record for one client.

Run::

    .venv/bin/python -m benchmarks.bytes_per_round [--classes 10] [--public-batch 256]

Prints one row per model of the zoo: the FedAvg upload (all weights), the FD upload (per-class
mean logits [C, C] and counts [C]) and a FedMD / FedGen-logits upload (logits on N shared
inputs, [N, C]), with the ratio of weights to each.
"""

from __future__ import annotations

import argparse

import numpy as np

from fedkd.models import MODELS, build_model
from fedkd.protocol import Payload, content_nbytes, encode
from fedkd.training import state_to_numpy


def upload_bytes(arrays: dict[str, np.ndarray]) -> int:
    """Encoded size of a reply carrying ``arrays`` and the usual metrics."""
    metrics = {"num-examples": 1000, "loss": 0.5, "accuracy": 0.9}
    return content_nbytes(encode(Payload(arrays=arrays, metrics=metrics)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--public-batch", type=int, default=256, help="N shared inputs per round")
    parser.add_argument("--input-shape", default="1,28,28")
    args = parser.parse_args(argv)
    shape = tuple(int(v) for v in args.input_shape.split(","))
    c, n = args.classes, args.public_batch

    fd = upload_bytes({"class-logits": np.zeros((c, c), np.float32),
                       "class-counts": np.zeros(c, np.int64)})
    shared = upload_bytes({"logits": np.zeros((n, c), np.float32)})
    print(f"input {shape}, {c} classes, {n} shared inputs per round")
    print(f"{'model':<12}{'params':>11}{'weights B':>12}{'FD B':>8}{'x FD':>9}"
          f"{'logits B':>10}{'x logits':>10}")
    for name in MODELS.names():
        model = build_model(name, shape, c)  # type: ignore[arg-type]
        params = sum(p.numel() for p in model.parameters())
        weights = upload_bytes(state_to_numpy(model))
        print(f"{name:<12}{params:>11,}{weights:>12,}{fd:>8,}{weights / fd:>9.0f}"
              f"{shared:>10,}{weights / shared:>10.1f}")


if __name__ == "__main__":
    main()
