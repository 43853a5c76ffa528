"""Learning tests that can fail: every algorithm learns, to a pinned accuracy, and the federated
ones beat training alone (``local``) on the same split and seed.

One seeded run per algorithm through the real round loop and client app (in-process): digits,
the MLP, 5 clients on a Dirichlet(0.3) label split (non-IID: most clients hold 6-8 of the 10
classes, a few samples of several), 10 rounds of 20 local steps, every client also scored on the
whole official test set (``federation.client-global-test``, 359 images) in the last round.

Each case pins one metric (the server's global model on the official test set where there is
one, else the clients' personalised accuracy) at its value for seed 0 (``seed`` = ``data.seed`` =
0), with a tolerance of three standard deviations (sample std, rounded up to 0.01, at least 0.03)
of the same metric over seeds 0-4 (``seed`` = ``data.seed`` = s: a new split, initialisation
and shuffling each). The run is deterministic on one machine; the tolerance covers another
platform's floating point, which moves a chaotic training run about as much as another seed.

``beats_local`` lists the comparisons with the module's one ``local`` run (same split and seed,
same rounds and local steps) that held at every one of the 5 seeds: this run's metric must be
strictly above local's. ``global-accuracy`` is compared with local's ``client-global-accuracy``
(the mean of the isolated clients' own models on the same official test set), so "the
federation's model generalises beyond what a client learns alone". Where a comparison is left
out it did not hold at every seed (see each case's comment).

Torch runs on one thread here (restored after the module): the pins were measured that way, and
thread count changes float reductions enough to move a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from fedkd.algorithms import ALGORITHMS
from tests.algorithms.inprocess import run_inprocess

NUM_CLIENTS = 5
#: The shared split and schedule: every case runs on it, local included.
SPLIT: dict[str, Any] = {
    "seed": 0, "data.seed": 0, "data.partitioner": "dirichlet", "data.alpha": 0.3,
    "num-server-rounds": 10, "train.local-steps": 20,
    "federation.evaluate-every": 10,  # only the last round (evaluation changes no training)
    "federation.client-global-test": 359,  # the whole digits test set
}
#: Public-set algorithms: every round all 144 public samples (200 > 144), 100 student steps.
PUBLIC = {"distill.public-batch": 200, "distill.server-steps": 100, "distill.steps": 10}

GLOBAL, PERSONAL, CLIENT_GLOBAL = ("global-accuracy", "personalized-accuracy",
                                   "client-global-accuracy")


@dataclass(frozen=True)
class Case:
    overrides: dict[str, Any]
    metric: str  #: the pinned metric of the last round
    pinned: float  #: its value at seed 0
    tolerance: float  #: 3 std over seeds 0-4, rounded up to 0.01, at least 0.03
    seeds: tuple[float, ...]  #: the metric measured at seeds 0-4 (seed = data.seed)
    #: (this run's metric, local's metric): this run's must be strictly higher
    beats_local: tuple[tuple[str, str], ...] = field(default=())


# Measured per seed 0-4, and local's figures on the same splits:
#   local  personalized-accuracy   0.9354 0.9470 0.9321 0.9536 0.9558
#   local  client-global-accuracy  0.5861 0.5304 0.4685 0.4613 0.4953
CASES: dict[str, Case] = {
    # Training alone: the baseline. std 0.0106.
    "local": Case({"algorithm": "local"}, PERSONAL, 0.9354, 0.04,
                  (0.9354, 0.9470, 0.9321, 0.9536, 0.9558)),
    # std 0.0165. Beats local's models on the test set by 0.32-0.40 at every seed; its
    # personalised accuracy (the global model on each local test split) is below local's at
    # every seed (0.9009 0.8914 0.8652 0.8789 0.8833): not asserted.
    "fedavg": Case({"algorithm": "fedavg"}, GLOBAL, 0.9025, 0.05,
                   (0.9025, 0.8747, 0.8635, 0.8635, 0.8663), ((GLOBAL, CLIENT_GLOBAL),)),
    # No server model: personalised accuracy. std 0.0082. Above local's by +0.0103 +0.0073
    # +0.0111 +0.0014 +0.0079: small but at every seed. Its clients on the test set (0.6011
    # 0.5421 0.4674 0.4841 0.5153) fall below local's at seed 2: not asserted.
    "fd": Case({"algorithm": "fd"}, PERSONAL, 0.9457, 0.03,
               (0.9457, 0.9543, 0.9432, 0.9550, 0.9637), ((PERSONAL, PERSONAL),)),
    # std 0.0382. Clients on the test set 0.6156 0.5677 0.4802 0.4880 0.5248 (above local's by
    # 0.012-0.037 at every seed); personalised 0.9415 0.9464 0.9430 0.9436 0.9568 (below local's
    # at seeds 1 and 3: not asserted).
    "fedmd": Case({"algorithm": "fedmd", **PUBLIC}, GLOBAL, 0.8719, 0.12,
                  (0.8719, 0.7855, 0.8301, 0.7911, 0.8552),
                  ((GLOBAL, CLIENT_GLOBAL), (CLIENT_GLOBAL, CLIENT_GLOBAL))),
    # std 0.0294. Clients on the test set 0.8011 0.6847 0.7237 0.6546 0.7577; personalised
    # 0.9517 0.9346 0.9067 0.9310 0.9599 (below local's at seeds 1-3: not asserted).
    "dsfl": Case({"algorithm": "dsfl", **PUBLIC}, GLOBAL, 0.8719, 0.09,
                 (0.8719, 0.7967, 0.8329, 0.8301, 0.8607),
                 ((GLOBAL, CLIENT_GLOBAL), (CLIENT_GLOBAL, CLIENT_GLOBAL))),
    # Logits up, the student down, at the best measured round (logit-mean of prior-calibrated
    # logits, MSE on logits). std 0.0608: with 144 proxy samples and 10 rounds the student is
    # far from its Fashion-MNIST level. Clients on the test set 0.5682 0.4891 0.4384 0.4652
    # 0.4897 (below local's at seed 0); personalised 0.8502 0.8689 0.8785 0.8712 0.8979 (below
    # local's at every seed: each client's model is the student plus one round of local steps).
    "student-down": Case({"algorithm": "student-down", **PUBLIC, "aggregation.rule": "logit-mean",
                          "student-down.calibrate": "prior", "distill.loss": "mse-logits",
                          "student-down.local-loss": "none", "distill.replay-rounds": 1},
                         GLOBAL, 0.7047, 0.19, (0.7047, 0.5487, 0.5905, 0.5738, 0.6295),
                         ((GLOBAL, CLIENT_GLOBAL),)),
    # Student-down's case on the clients' synthetic images instead of a public set. std 0.0595.
    # Its global model beats local's clients on the test set at seeds 2 and 4 only (local's
    # 0.5861 0.5304 0.4685 0.4613 0.4953): not asserted. Clients on the test set 0.4557 0.4128
    # 0.3905 0.2652 0.3482; personalised 0.8017 0.8386 0.8685 0.7301 0.8290.
    "synthetic-student-down": Case({"algorithm": "synthetic-student-down", "synthesis.steps": 30,
                                    "synthesis.per-class": 5, **PUBLIC,
                                    "aggregation.rule": "logit-mean",
                                    "student-down.calibrate": "prior", "distill.loss": "mse-logits",
                                    "student-down.local-loss": "none", "distill.replay-rounds": 1},
                                   GLOBAL, 0.5404, 0.18, (0.5404, 0.4540, 0.5209, 0.3928, 0.5042)),
    # std 0.0457. Clients on the test set (the paper's metric) 0.8240 0.7632 0.7967 0.8390
    # 0.7181; personalised 0.9513 0.9485 0.9003 0.9410 0.9063 (below local's at seeds 2-4).
    "selective-fd": Case({"algorithm": "selective-fd", **PUBLIC}, GLOBAL, 0.8524, 0.14,
                         (0.8524, 0.8022, 0.7939, 0.8440, 0.7382),
                         ((GLOBAL, CLIENT_GLOBAL), (CLIENT_GLOBAL, CLIENT_GLOBAL))),
    # std 0.0772 (the widest: the student sees only the clients' synthetic images). Clients on
    # the test set 0.6579 0.5872 0.5203 0.5192 0.5788; personalised 0.9471 0.9497 0.9490 0.9513
    # 0.9739 (below local's at seed 3).
    "synthetic-proxy": Case({"algorithm": "synthetic-proxy", "synthesis.steps": 30,
                             "synthesis.per-class": 5, **PUBLIC}, GLOBAL, 0.8524, 0.24,
                            (0.8524, 0.6741, 0.7744, 0.6797, 0.7967),
                            ((GLOBAL, CLIENT_GLOBAL), (CLIENT_GLOBAL, CLIENT_GLOBAL))),
    # std 0.0151. Personalised 0.9374 0.9257 0.8974 0.9275 0.9491 (below local's at seeds 1-4).
    "fedgen": Case({"algorithm": "fedgen", "train.model": "fedgen-cnn",
                    "fedgen.generator-steps": 20}, GLOBAL, 0.9136, 0.05,
                   (0.9136, 0.9248, 0.9248, 0.8942, 0.9331), ((GLOBAL, CLIENT_GLOBAL),)),
    # Data-free. With its generator trained against the server's student alone (the default)
    # it stayed at chance here (0.04-0.10 after 5 rounds: the teachers' consensus on the
    # generated images was mostly one class); trained on the teachers themselves through
    # zeroth-order probes, smooth low-frequency images with the classwise rule learn. std
    # 0.0308. Clients on the test set 0.6178 0.5894 0.4981 0.5337 0.5432; personalised 0.9415
    # 0.9477 0.9438 0.9565 0.9581 (above local's at every seed, by 0.0008-0.0117: too close to
    # assert).
    "fedgen-logits": Case({"algorithm": "fedgen-logits", "fedgen-logits.input-generator": "low-frequency",
                           "aggregation.rule": "classwise", "fedgen.generator-steps": 0,
                           "fedgen-logits.zo-directions": 4, "fedgen-logits.generator-queries": 5,
                           "fedgen-logits.synthetic-batch": 100, "fedgen.generator-lr": 0.02,
                           "fedgen-logits.teacher-ce-weight": 1.0, "distill.server-steps": 100},
                          GLOBAL, 0.7660, 0.10, (0.7660, 0.7326, 0.7187, 0.7549, 0.6880),
                          ((GLOBAL, CLIENT_GLOBAL), (CLIENT_GLOBAL, CLIENT_GLOBAL))),
}


@pytest.fixture(scope="module")
def one_thread():  # noqa: ANN201
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def last_round(name: str, out_dir: Path) -> dict[str, Any]:
    rows, _, _ = run_inprocess({**SPLIT, **CASES[name].overrides}, NUM_CLIENTS, out_dir)
    assert len(rows) == SPLIT["num-server-rounds"]
    assert all(r["num-failures"] == 0 for r in rows), [r["failures"] for r in rows]
    return rows[-1]


@pytest.fixture(scope="module")
def local(one_thread, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # noqa: ANN001
    """The last round of ``local`` on the shared split: the baseline of every comparison."""
    return last_round("local", tmp_path_factory.mktemp("local"))


def test_every_algorithm_has_a_learning_case() -> None:
    assert sorted(CASES) == sorted(ALGORITHMS.names())


@pytest.mark.parametrize("name", sorted(CASES))
def test_learns_to_the_pinned_accuracy_and_beats_local(name: str, local: dict[str, Any],
                                                       tmp_path: Path) -> None:
    case = CASES[name]
    assert case.pinned == case.seeds[0]
    row = local if name == "local" else last_round(name, tmp_path)
    measured = row[case.metric]
    assert measured == pytest.approx(case.pinned, abs=case.tolerance), (
        f"{name}: {case.metric} {measured:.4f}, pinned {case.pinned} +- {case.tolerance}")
    for mine, theirs in case.beats_local:
        assert row[mine] > local[theirs], (
            f"{name}: {mine} {row[mine]:.4f} does not beat local's {theirs} {local[theirs]:.4f}")
