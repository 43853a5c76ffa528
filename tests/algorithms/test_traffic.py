"""Traffic metrics count what a participant of a round sends and receives."""

from __future__ import annotations

from pathlib import Path

from tests.algorithms.inprocess import run_inprocess

MLP_BYTES = 55_210 * 4  # the digits MLP's float32 parameters


def test_bytes_per_client_are_per_sampled_client(tmp_path: Path) -> None:
    rows, _, _ = run_inprocess({"algorithm": "fedavg", "federation.fraction-train": 0.5,
                                "federation.min-replies": 1, "num-server-rounds": 1}, 4, tmp_path)
    row = rows[-1]
    assert row["sampled"] == 2
    # Each of the 2 participants uploads its model once (plus record headers and the small
    # metrics of the evaluation reply that all 4 nodes send).
    assert MLP_BYTES <= row["bytes-up-per-client"] < MLP_BYTES + 8_192
    # Bug B: every one of the 4 nodes gets the global model to evaluate, but only the 2
    # participants' own traffic counts per client: the fit weights and the evaluation weights,
    # 2x the model (the old formula divided all 4 nodes' traffic by 2: 3x).
    assert 2 * MLP_BYTES <= row["bytes-down-per-client"] < 2 * MLP_BYTES + 8_192
    per_node = row["clients"]
    assert len(per_node) == 4
    assert sum(c["bytes-down"] for c in per_node.values()) == row["bytes-down"]
    participants = sorted(per_node.values(), key=lambda c: -c["bytes-down"])[:2]
    assert row["bytes-down-per-client"] == sum(c["bytes-down"] for c in participants) / 2
    assert row["bytes-up-per-client"] == sum(c["bytes-up"] for c in participants) / 2
