from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client.app import client_context
from fedkd.algorithms.fedmd import FedMD
from fedkd.compose import build_config
from fedkd.config import ConfigError, RunConfig
from fedkd.protocol import Payload
from tests.algorithms.inprocess import run_inprocess

FAST = {"algorithm": "fedmd", "distill.public-batch": 100, "distill.server-steps": 30,
        "distill.steps": 5}


def test_fedmd_mixed_architectures_share_only_logits(tmp_path: Path) -> None:
    overrides = {**FAST, "train.client-models": "mlp,fedgen-cnn,resnet", "num-server-rounds": 2}
    rows, audit, _ = run_inprocess(overrides, 3, tmp_path)
    assert rows[-1]["num-failures"] == 0 and rows[-1]["teachers"] == 3
    assert rows[-1]["global-accuracy"] is not None  # the server's student
    for a in audit:
        if a["phase"] == "logits":
            assert a["arrays"] == {"arrays/logits": {"shape": [100, 10], "dtype": "float32",
                                                     "bytes": 4000 + 128}}  # .npy header
        else:  # digest and evaluate replies carry metrics only
            assert a["arrays"] == {}, a


def test_client_models_cycle_and_node_choice_wins() -> None:
    cfg = build_config({"train.client-models": "mlp,fedgen-cnn,resnet"})
    assert [cfg.train.model_for(p) for p in range(4)] == ["mlp", "fedgen-cnn", "resnet", "mlp"]
    assert cfg.train.model_for(1, node_model="cnn") == "cnn"
    assert RunConfig().train.model_for(5) == "cnn"
    with pytest.raises(ConfigError, match=r"train.client-models: unknown model 'vgg'"):
        build_config({"train.client-models": "mlp,vgg"})


def test_node_config_model_must_exist() -> None:
    cfg = build_config({"data.dataset": "digits", "data.num-partitions": 2})
    with pytest.raises(ValueError, match=r"model='vgg' is not a model of the zoo; valid names"):
        client_context(cfg, 1, {"partition-id": 0, "num-partitions": 2, "model": "vgg"}, {})


def test_fedmd_learns_a_useful_global_student(tmp_path: Path) -> None:
    overrides = {**FAST, "num-server-rounds": 3, "train.local-steps": 30,
                 "distill.pretrain-public-steps": 30, "distill.server-steps": 100}
    rows, _, _ = run_inprocess(overrides, 3, tmp_path)
    assert rows[-1]["consensus-accuracy"] > 0.5  # consensus argmax vs the public labels
    assert rows[-1]["global-accuracy"] > 0.5  # student on the official test set; chance 0.1


def test_client_rejects_public_indices_out_of_range() -> None:
    cfg = build_config({"algorithm": "fedmd", "data.dataset": "digits",
                               "data.num-partitions": 2, "train.model": "mlp"})
    client = client_context(cfg, 1, {"partition-id": 0, "num-partitions": 2}, {})
    fedmd = FedMD(cfg, client.num_classes, client.input_shape)
    request = Payload(config={"round": 1, "indices": [0, len(client.public)]})
    with pytest.raises(ValueError, match="public indices outside"):
        fedmd.client_phase("logits", request, client)
    logits = fedmd.client_phase("logits", Payload(config={"round": 1, "indices": [0, 1, 2]}), client)
    assert logits.arrays["logits"].shape == (3, 10)
    assert np.isfinite(logits.arrays["logits"]).all()


def test_fedmd_as_in_the_paper_logit_mean_and_l1_from_configuration(tmp_path: Path) -> None:
    # The paper's consensus (mean logit) and its L1 loss on logits, chosen by name.
    kl, _, _ = run_inprocess({**FAST, "num-server-rounds": 1}, 3, tmp_path / "kl")
    l1, _, _ = run_inprocess({**FAST, "num-server-rounds": 1, "aggregation.rule": "logit-mean",
                              "distill.loss": "l1-logits"}, 3, tmp_path / "l1")
    assert l1[-1]["num-failures"] == 0 and l1[-1]["global-accuracy"] is not None
    # same data and seeds: only the rule and the loss differ, and they change the student
    assert l1[-1]["student-distill-loss"] != kl[-1]["student-distill-loss"]
    assert l1[-1]["global-accuracy"] != kl[-1]["global-accuracy"]
