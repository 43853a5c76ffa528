r"""Selective-FD (Shao, Wu & Zhang, Nature Communications 2024, arXiv 2304.01731).

Federated distillation on an unlabeled proxy set that every node holds, with two knowledge
selectors (``selective_fd_selectors.py``). Round t, announced proxy indices :math:`I_t`:

1. **local update + selective upload** (phase ``fit``): each sampled client k trains on its
   private data (``train.local-steps`` of cross-entropy), then answers on :math:`x_{I_t}` with its
   logits and an answer mask :math:`m_k \in \{0, 1\}^{n}`. The *client-side selector* keeps a
   proxy sample only if it looks like the client's own data: a KuLSIF density-ratio estimate

   .. math:: \hat r_k(x) \approx \frac{p_k(x)}{q(x)} \ge \theta_k ,

   with :math:`p_k` the client's inputs, :math:`q` uniform over the input range, and
   :math:`\theta_k` the ``ratio-quantile`` quantile of :math:`\hat r_k` on the client's own
   held-out samples (estimator fitted once, on ``ratio-sample-fraction`` of the local data,
   with ``auxiliary-samples`` draws of :math:`q`, kernel width ``kernel-width`` and
   :math:`\lambda` = ``regularisation`` or :math:`n^{-1/2}`, as in the official code). Masked
   rows are sent as zeros.
2. **aggregation** (server): for every sample answered by at least one client, the configured
   rule over the clients that answered (``mean``: :math:`t_i = \frac{1}{|K_i|}\sum_{k \in K_i}
   \sigma(z_{k,i}/T)`, the paper's ensemble); samples nobody answered are dropped.
3. **server-side selector**: a target is kept only if its normalised entropy is low,

   .. math:: \frac{H(t_i)}{\ln C} \le \tau \qquad (\tau = \texttt{entropy-threshold}).

4. **distillation**: the server's global student and every client that answered minimise
   :math:`T^2\,\mathrm{KL}(t_i \,\|\, \sigma(f(x_i)/T))` (cross-entropy to the soft target up to a
   constant) over the kept samples (``distill.server-steps`` and ``distill.steps`` steps).

Steps 1 (local update) and 4 are DS-FL's round (``dsfl.py``); this module replaces its two hooks:
what a client uploads (:meth:`SelectiveFD.fit_upload`: the masked logits and the mask) and how
the server combines the answers (:meth:`SelectiveFD.combine_answers`: steps 2 and 3).

What leaves a client: logits [n, C] on public inputs and an answer mask [n] (uint8, declared and
validated as every array is), never weights or private data. The mask depends on the private
data through the density-ratio estimator, which no DP mechanism here covers, so Selective-FD
refuses ``privacy.dp-sgd`` and ``privacy.output-noise`` (use ``dsfl`` or ``fedmd`` under DP).
The paper's headline metric is the clients' own models on the global test set; fedkd reports
the server student's global accuracy and the clients' personalised accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from fedkd.algorithms.base import ClientContext, train_metrics
from fedkd.algorithms.dsfl import DSFL
from fedkd.algorithms.public_set import ProxyAnswers
from fedkd.algorithms.registry import ALGORITHMS
from fedkd.config import RunConfig
from fedkd.errors import ConfigError
from fedkd.protocol import ArraySpec, Payload, PhaseSpec
from fedkd.algorithms.selective_fd_selectors import (KuLSIF, auxiliary_uniform, client_mask, entropy_mask,
                                                   threshold_from_quantile)

#: Node-state key of the client's answer mask over the whole proxy set (computed once).
MASK_KEY = "selective-fd/in-distribution"
#: Seed stream of the client's selector (its data split and auxiliary samples).
SELECTOR_STREAM = 0x5E1
#: Name of the answer mask in a fit reply.
MASK = "answer-mask"


@dataclass(frozen=True)
class SelectiveFDConfig:
    """``selective-fd.*``: the two selectors (defaults: the official code's MNIST settings)."""

    ratio_sample_fraction: float = 0.1
    auxiliary_samples: int = 250
    kernel_width: float = 5.0
    regularisation: float = 0.0
    ratio_quantile: float = 0.25
    entropy_threshold: float = 0.7

    def __post_init__(self) -> None:
        checks = (("ratio-sample-fraction", 0 < self.ratio_sample_fraction < 1, "in (0, 1)"),
                  ("auxiliary-samples", self.auxiliary_samples >= 2, ">= 2"),
                  ("kernel-width", self.kernel_width > 0, "> 0"),
                  ("regularisation", self.regularisation >= 0, ">= 0 (0: n^-1/2)"),
                  ("ratio-quantile", 0 <= self.ratio_quantile < 1, "in [0, 1)"),
                  ("entropy-threshold", 0 <= self.entropy_threshold <= 1, "in [0, 1]"))
        for key, ok, what in checks:
            if not ok:
                raise ConfigError(f"selective-fd.{key} must be {what}, got "
                                  f"{getattr(self, key.replace('-', '_'))!r}")


@ALGORITHMS.register("selective-fd")
class SelectiveFD(DSFL):
    """Selective knowledge sharing: clients answer only on proxy samples like their data; the
    server keeps only confident ensemble targets. DS-FL's round with its two hooks replaced:
    :meth:`fit_upload` (logits masked by the client-side selector, and the mask) and
    :meth:`combine_answers` (the rule over the clients that answered each sample, then the
    server-side selector)."""

    #: Its server filters on the ensemble's per-sample entropy after masking out teachers with
    #: their answer masks: not (yet) expressed as sums.
    SECURE_AGGREGATION = False

    config_sections = {"selective-fd": SelectiveFDConfig}
    INDEX_STREAM = 0x5E1FD

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        super().check_config(cfg)
        if cfg.privacy.enabled:
            raise ConfigError(
                "selective-fd's answer mask is computed from private data by a density-ratio "
                "estimator that no DP mechanism here covers: it runs without privacy.dp-sgd and "
                "privacy.output-noise (use dsfl or fedmd under DP)")

    def __init__(self, *args, **kwargs) -> None:  # noqa: D107 - see Algorithm
        super().__init__(*args, **kwargs)
        self.options: SelectiveFDConfig = self.cfg.section("selective-fd")

    def fit_phase(self, n: int) -> PhaseSpec:
        """Local training, then logits [n, C] and the answer mask [n] (0/1) up."""
        mask = {MASK: ArraySpec(shape=(n,), dtype="uint8", low=0, high=1)}
        return self.logits_spec("fit", "train", n, extra=mask, check=self.check_mask(MASK),
                                reply_metrics=("loss", "accuracy"))

    # ----- server half: DS-FL's round (share_and_teach), these targets ---------------------
    def combine_answers(self, asked: ProxyAnswers) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        """The rule over the clients that answered each sample (samples nobody answered are
        dropped), then the server-side selector: only targets of low normalised entropy."""
        indices, teachers, replies, logits = asked.indices, asked.teachers, asked.replies, asked.logits
        answers = np.stack([r.arrays[MASK] for r in replies]).astype(bool)  # [K, n]
        metrics = {"teachers": len(teachers), "answers-per-client": float(answers.sum(axis=1).mean()),
                   **train_metrics(replies)}
        answered = answers.any(axis=0)  # samples at least one client answered
        if not answered.any():
            return (indices[:0], np.zeros((0, self.num_classes), np.float32),
                    {**metrics, "answered": 0, "kept": 0})
        sub = logits[:, answered]
        weights = self.teacher_weights(replies, sub)
        agg = self.aggregate_teachers(self.rule, sub, self._rng, weights=weights,
                                      mask=answers[:, answered])
        kept = agg.answered & entropy_mask(agg.probs, self.options.entropy_threshold)
        metrics.update({"answered": int(answered.sum()), "kept": int(kept.sum())})
        return indices[answered][kept], agg.probs[kept], metrics

    # ----- client half --------------------------------------------------------------------
    def in_distribution(self, client: ClientContext) -> np.ndarray:
        """The client-side selector over the whole proxy set: bool [P], computed once per node
        (KuLSIF fitted on a seeded share of the local training inputs; the threshold is the
        ``ratio-quantile`` quantile of the ratio on the rest)."""
        saved = client.state.get(MASK_KEY)
        if saved is not None and len(saved) == len(client.public):
            return np.asarray(saved).astype(bool)
        opts = self.options
        rng = np.random.default_rng([self.cfg.seed, client.partition_id, SELECTOR_STREAM])
        x = client.data.train.x
        order = rng.permutation(len(x))
        n_fit = max(2, int(round(opts.ratio_sample_fraction * len(x))))
        fit, held = x[order[:n_fit]], x[order[n_fit:]]
        if len(held) == 0:
            held = fit
        aux = auxiliary_uniform(opts.auxiliary_samples, tuple(x.shape[1:]), -1.0, 1.0, rng)
        lam = opts.regularisation or opts.auxiliary_samples ** -0.5
        estimator = KuLSIF.fit(fit, aux, sigma=opts.kernel_width, lam=lam)
        threshold = threshold_from_quantile(estimator.ratio(held), opts.ratio_quantile)
        mask = client_mask(estimator.ratio(client.public.x), threshold)
        client.state[MASK_KEY] = mask.astype(np.uint8)
        return mask

    def fit_upload(self, request: Payload, client: ClientContext, model: nn.Module,
                   x_pub: np.ndarray, rnd: int) -> dict[str, np.ndarray]:
        """DS-FL's upload with the rows the client-side selector drops sent as zeros, and the
        answer mask."""
        indices = np.asarray(request.config["indices"], dtype=np.int64)
        answer = self.in_distribution(client)[indices]
        arrays = super().fit_upload(request, client, model, x_pub, rnd)
        arrays["logits"][~answer] = 0.0  # no answer: zeros
        arrays[MASK] = answer.astype(np.uint8)
        return arrays
