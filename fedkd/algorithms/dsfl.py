r"""DS-FL: distillation-based semi-supervised FL (Itahara et al., IEEE TMC 2021, arXiv 2008.06180).

Clients share only soft labels on an unlabeled open (proxy) set that every node holds; the
server aggregates them with entropy reduction aggregation (ERA, the ``era`` rule) and clients
*and* the server's global student distil on the result. Round t, with announced open indices
:math:`I_t` (``distill.public-batch`` of the public split; ``data.public-labels = false`` makes
it unlabeled):

1. **local update + prediction** (phase ``fit``): each sampled client k trains on its private
   data, :math:`\min_\theta \mathrm{CE}(f_k(x), y)` for ``train.local-steps`` steps (DP-SGD when
   configured), then uploads its logits on :math:`x_{I_t}`, :math:`z_k \in \mathbb{R}^{n\times C}`
   (the paper sends :math:`\sigma(z_k)`; logits carry the same and let any rule run), plus label
   counts with a rule that needs them;
2. **ERA** (server): :math:`\bar p = \frac1K \sum_k \sigma(z_k / T)`,
   :math:`t = \sigma(\bar p / T_{era})` with :math:`T_{era} = 0.1` (``aggregation.era.*``; any
   rule may stand in);
3. **global distillation**: the server's student minimises
   :math:`T^2\,\mathrm{KL}(t \,\|\, \sigma(f_s(x_{I_t}) / T))` for ``distill.server-steps`` steps
   (replaying the last ``distill.replay-rounds`` rounds), and every client that answered gets
   :math:`t` (phase ``distill``) and takes ``distill.steps`` steps of the same loss on its own
   model (``distill.loss`` chooses another loss).

What leaves a client: logits on public inputs [n, C] (and label counts [C] with ``classwise`` or
``weighted``), never weights or private data. Under DP-SGD the logits are post-processing of a
DP model; label counts are noised and charged. Architectures may differ per client.

With ``dsfl.certainty = "support"`` each client also sends a certainty per announced sample,
judged by its model *before* local training (which carries the last round's targets): the share
of that model's answer on classes the client holds (``certainty.py``); the server leaves a
client out of the samples it is not certain of. Refused under ``privacy.*`` and secure
aggregation, with the reason.

Two hooks let a variant change what the round shares without repeating it: :meth:`DSFL.fit_upload`
(what a client sends up after training) and :meth:`DSFL.combine_answers` (how the server turns
the answers into targets). Selective-FD (``selective_fd.py``) replaces both; synthetic-proxy
(``synthetic_proxy.py``) runs the same round on a pool of synthetic images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from fedkd.algorithms.base import ClientContext, Exchange, train_metrics
from fedkd.algorithms.certainty import (CERTAINTY, answered_targets, certainty_spec,
                                        check_certainty, client_certainty)
from fedkd.algorithms.public_set import ProxyAnswers, PublicSetAlgorithm
from fedkd.algorithms.registry import ALGORITHMS
from fedkd.config import RunConfig
from fedkd.errors import ConfigError
from fedkd.protocol import Payload, PhaseSpec
from fedkd.training import predict_logits


@dataclass(frozen=True)
class DSFLConfig:
    """``dsfl.*``: the per-sample certainty clients send (``certainty``: ``none`` or
    ``support``) and the server's threshold (``certainty-threshold``)."""

    certainty: str = "none"
    certainty_threshold: float = 0.5


@ALGORITHMS.register("dsfl")
class DSFL(PublicSetAlgorithm):
    """Local training, then logits on announced open samples up; ERA targets down; clients and
    a server student distil on them."""

    config_sections = {"dsfl": DSFLConfig}
    INDEX_STREAM = 0xD5F1

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        super().check_config(cfg)
        options: DSFLConfig = cfg.section("dsfl")
        check_certainty("dsfl", options.certainty, options.certainty_threshold, cfg)
        if options.certainty != "none" and cls is not DSFL:
            raise ConfigError(f"dsfl.certainty applies to dsfl only, not to {cls.name}")

    @property
    def certainty(self) -> bool:
        """Whether clients send a certainty per announced sample (``dsfl.certainty``)."""
        return self.cfg.section("dsfl").certainty != "none"

    def fit_phase(self, n: int) -> PhaseSpec:
        """Local training, then logits [n, C] (and a certainty [n]) on the announced samples up."""
        return self.logits_spec("fit", "train", n, reply_metrics=("loss", "accuracy"),
                                extra=certainty_spec(n) if self.certainty else None)

    #: Global distillation: targets down, metrics only up.
    DISTILL_PHASE = PhaseSpec(name="distill", message_type="train", reply_metrics=("loss",))

    # ----- server half --------------------------------------------------------------------
    def run_round(self, rnd: int, nodes: Sequence[int], exchange: Exchange) -> dict[str, float]:
        return self.share_and_teach(rnd, nodes, exchange, self.fit_phase)

    def share_and_teach(self, rnd: int, nodes: Sequence[int], exchange: Exchange,
                        phase: Callable[[int], PhaseSpec]) -> dict[str, float]:
        """Ask ``nodes`` for logits on announced proxy samples in ``phase(n)``, combine them into
        targets (:meth:`combine_answers`), distil the server's student and the clients on them."""
        asked = self.ask(rnd, nodes, exchange, phase)
        indices, probs, metrics = self.combine_answers(asked)
        if len(indices) == 0:
            return metrics
        student, _ = self.teach(rnd, asked.teachers, indices, probs, exchange, self.DISTILL_PHASE)
        return {**metrics, **self.public_accuracy(indices, probs),
                "student-distill-loss": student.loss}

    def combine_answers(self, asked: ProxyAnswers) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        """Server hook: the public indices the round distils on, their targets [n, C] and the
        round's metrics so far. DS-FL: the rule's targets (ERA) on every sample it answered."""
        threshold = self.cfg.section("dsfl").certainty_threshold if self.certainty else None
        indices, probs = answered_targets(self, asked, threshold)
        trained = all("loss" in r.metrics for r in asked.replies)  # the phase trained first
        metrics = {"teachers": len(asked.teachers), "answered": len(indices),
                   **(train_metrics(asked.replies) if trained else {})}
        return indices, probs, metrics

    # ----- client half --------------------------------------------------------------------
    def client_phase(self, phase: str, request: Payload, client: ClientContext) -> Payload:
        rnd = int(request.config["round"])
        model = self.personal_model(client)
        x_pub = self.public_inputs(request, client)
        n_train = len(client.data.train)
        if phase == "fit":
            before = None
            if self.certainty:  # judged before local training narrows the model to its classes
                before = predict_logits(model, x_pub, batch_size=self.cfg.train.eval_batch_size)
            stats = self.local_fit(client, model, rnd)  # private data; DP-SGD if on
            self.save_personal_model(client, model)
            arrays = self.fit_upload(request, client, model, x_pub, rnd)
            if before is not None:
                arrays[CERTAINTY] = client_certainty(before, client.data.train.y)
            return Payload(arrays=arrays,
                           metrics={"num-examples": n_train, "loss": stats.loss,
                                    "accuracy": stats.accuracy})
        if phase != "distill":
            raise ValueError(f"{self.name} has no client phase {phase!r}")
        stats = self.distill_on_targets(request, client, model, x_pub, rnd)
        self.save_personal_model(client, model)
        return Payload(metrics={"num-examples": n_train, "loss": stats.loss})

    def fit_upload(self, request: Payload, client: ClientContext, model: nn.Module,
                   x_pub: np.ndarray, rnd: int) -> dict[str, np.ndarray]:
        """Client hook: what a client sends up in ``fit`` for the announced samples ``x_pub``,
        after training. DS-FL: :meth:`upload` (its logits on every sample)."""
        return self.upload(client, model, x_pub, rnd)
