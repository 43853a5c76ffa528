"""A proxy set the clients synthesise: the pool that data-free public-set algorithms share logits on.

:class:`SyntheticPool` is a mixin for a :class:`~fedkd.algorithms.public_set.PublicSetAlgorithm`
that has no public split: it replaces the public set by a pool of the clients' synthetic images.
``synthetic-proxy`` (DS-FL on the pool) and ``synthetic-student-down`` (logits up, student down,
on the pool) use it. In a *synthesis round* (round 1, then every ``synthesis.every`` rounds) each
sampled client

1. trains on its private data (``train.local-steps``, DP-SGD when configured), starting from the
   model the algorithm says (:meth:`SyntheticPool.synthesis_model`), and keeps the result as its
   personal model;
2. synthesises K = ``synthesis.per-class`` images for each class it holds (every class under
   DP: which classes a client holds is private) with the registered method
   ``synthesis.method`` (:mod:`fedkd.synthesis`):

   * ``inversion``: model inversion of its own frozen model (DeepInversion / DAFL style); it
     reads only the model, and the client's data is replaced by a guard that raises on any
     access;
   * ``matching``: FedDM-style distribution matching of its data's embeddings; it reads the
     data, so it is refused under DP;

3. uploads them quantised to uint8 (``synthetic`` ``[M, C, H, W]``) with their labels
   (``synthetic-labels`` ``[M]``), M <= K x classes, declared and bounded in the reply contract.

The server pools every upload (at most ``synthesis.max-pool`` images, the newest) as the
algorithm's public set (``_public``, with the synthesis labels as its labels). Announced pool
images travel *down* (uint8) with each request (:meth:`SyntheticPool.pool_inputs`), and a
client reads them from there (:meth:`SyntheticPool.public_inputs`) instead of from a public split.

**Without DP the synthetic images can leak training data**: with ``synthesis.measure-leakage``
each synthesising client reports the nearest-neighbour distances of its images to its training
and held-out images and a membership-inference AUC (:mod:`fedkd.synthesis.leakage`), recorded in
the round's metrics. Under DP-SGD the inverted images are post-processing of the DP model and
cost no epsilon. Each synthesis round also writes a picture of the pooled images, a row per class
(``artifacts/synthetic-round-<r>.png`` in the run directory).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
from torch import nn

from fedkd.algorithms.base import ClientContext, Exchange, train_metrics
from fedkd.config import RunConfig
from fedkd.data.datasets import ArrayDataset
from fedkd.errors import ConfigError
from fedkd.protocol import ArraySpec, InvalidReply, Payload, PhaseSpec
from fedkd.synthesis import SYNTHESIZERS, GuardedDataset, SynthesisConfig, dequantise, quantise
from fedkd.synthesis.leakage import leakage
from fedkd.training import FitStats, seeded_generator

#: Names of the uploaded images and their labels, and of the pool images sent down.
SYNTHETIC, SYNTHETIC_LABELS, INPUTS = "synthetic", "synthetic-labels", "inputs"
#: Seed stream of the synthesis (client side).
SYNTHESIS_STREAM = 0x5A7


class SyntheticPool:
    """Mixin: the public set of a public-set algorithm replaced by the clients' synthetic pool.

    Put it first among the bases (``class A(SyntheticPool, SomePublicSetAlgorithm)``). The
    algorithm calls :meth:`collect` at the start of a synthesis round (:meth:`synthesis_due`),
    adds :meth:`pool_inputs` to its announcements, and says which model a client trains before
    synthesising (:meth:`synthesis_model`) and what the synthesis request carries
    (:meth:`synthesis_request`).
    """

    NEEDS_PUBLIC_SPLIT = False

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        super().check_config(cfg)  # type: ignore[misc]
        options: SynthesisConfig = cfg.section("synthesis")
        if SYNTHESIZERS.get(options.method).reads_data and cfg.privacy.enabled:
            raise ConfigError(
                f"synthesis.method = {options.method!r} reads the clients' data, and no privacy "
                "mechanism covers its images: it is refused under privacy.dp-sgd or "
                "privacy.output-noise. Use synthesis.method = 'inversion' (it reads only the DP "
                "model: its images are post-processing and cost no epsilon)")
        if cfg.privacy.enabled and not cfg.privacy.dp_sgd:
            raise ConfigError(
                f"{cls.name} under privacy.output-noise without privacy.dp-sgd: the images "  # type: ignore[attr-defined]
                "are inverted from a model trained without DP and leave the client unnoised and "
                "uncharged, so the reported epsilon would not cover them; turn privacy.dp-sgd on "
                "(the images are then post-processing of a DP model), or privacy off")

    def __init__(self, *args, **kwargs) -> None:  # noqa: D107 - see Algorithm
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.synthesis: SynthesisConfig = self.cfg.section("synthesis")  # type: ignore[attr-defined]
        self._artifacts: dict[str, bytes] = {}

    # ----- server half --------------------------------------------------------------------
    def synthesis_due(self, rnd: int) -> bool:
        """Round 1, then every ``synthesis.every`` rounds (never again when 0)."""
        every = self.synthesis.every
        return rnd == 1 or (every > 0 and (rnd - 1) % every == 0)

    def synthesis_phase(self) -> PhaseSpec:
        """Train, synthesise, upload: uint8 images and their labels, bounded in count and bytes
        (label counts, where the rule needs them, go with the logits that follow)."""
        most = self.synthesis.per_class * self.num_classes
        image = tuple(self.input_shape)
        arrays = {SYNTHETIC: ArraySpec(shape=(None, *image), dtype="uint8", low=0, high=255),
                  SYNTHETIC_LABELS: ArraySpec(shape=(None,), dtype="int64", low=0,
                                              high=self.num_classes - 1)}
        per_image = int(np.prod(image)) + 8
        return PhaseSpec(name="synthesise", message_type="train", reply_arrays=arrays,
                         reply_metrics=("loss", "accuracy"), check=self.check_upload,
                         max_reply_bytes=most * per_image + 65536)

    def answer_phase(self, n: int) -> PhaseSpec:
        """Logits on ``n`` announced pool images, without training (a synthesis round's: the
        clients trained before synthesising); a query."""
        return replace(self.fit_phase(n), name="answer", message_type="query",
                       reply_metrics=())

    def run_round(self, rnd: int, nodes: Sequence[int], exchange: Exchange) -> dict[str, float]:
        """A synthesis round's :meth:`collect` when due, then the algorithm's round on the pool
        (:meth:`share_on_pool`) in its fit phase, or in :meth:`answer_phase` after a synthesis."""
        metrics: dict[str, float] = {}
        phase = self.fit_phase
        if self.synthesis_due(rnd):
            metrics = self.collect(rnd, nodes, exchange)
            phase = self.answer_phase  # they trained before synthesising
        if self._public is None or len(self._public) == 0:
            return metrics  # nothing pooled yet: no proxy to share logits on
        return {**metrics, **self.share_on_pool(rnd, nodes, exchange, phase)}

    def share_on_pool(self, rnd: int, nodes: Sequence[int], exchange: Exchange,
                      phase: Callable[[int], PhaseSpec]) -> dict[str, float]:
        """The algorithm's round on the pool, asking in ``phase``: the subclass says."""
        raise NotImplementedError

    def synthesis_request(self, rnd: int) -> Payload:
        """What a synthesis round's request carries (here: the round)."""
        return Payload(config={"round": rnd})

    def check_upload(self, reply: Payload) -> None:
        """At most ``per-class`` images of any class, one label per image, at least one image."""
        images, labels = reply.arrays[SYNTHETIC], reply.arrays[SYNTHETIC_LABELS]
        if len(images) != len(labels):
            raise InvalidReply(f"{len(images)} synthetic images but {len(labels)} labels")
        if len(images) == 0:
            raise InvalidReply("no synthetic image")
        counts = np.bincount(labels, minlength=self.num_classes)
        if counts.max() > self.synthesis.per_class:
            raise InvalidReply(f"{int(counts.max())} synthetic images of class "
                               f"{int(counts.argmax())}; synthesis.per-class = "
                               f"{self.synthesis.per_class}")

    def collect(self, rnd: int, nodes: Sequence[int], exchange: Exchange) -> dict[str, float]:
        """A synthesis round's first phase: pool what the sampled clients synthesised."""
        request = self.synthesis_request(rnd)
        result = exchange(self.synthesis_phase(), {n: request for n in nodes})
        replies = [result.replies[k] for k in sorted(result.replies)]
        if not replies:
            return {"synthetic-pool": len(self._public) if self._public is not None else 0}
        x = np.concatenate([dequantise(r.arrays[SYNTHETIC]) for r in replies])
        y = np.concatenate([np.asarray(r.arrays[SYNTHETIC_LABELS], np.int64) for r in replies])
        if self._public is not None:
            x, y = np.concatenate([self._public.x, x]), np.concatenate([self._public.y, y])
        keep = slice(max(0, len(x) - self.synthesis.max_pool), None)  # the newest
        self._public = ArrayDataset(x=np.ascontiguousarray(x[keep]), y=np.ascontiguousarray(y[keep]))
        self._artifacts[f"synthetic-round-{rnd:03d}.png"] = image_grid(
            self._public.x, self._public.y, self.num_classes, per_class=self.synthesis.per_class)
        metrics: dict[str, float] = {"synthetic-pool": len(self._public),
                                     "synthetic-uploaded": int(sum(len(r.arrays[SYNTHETIC]) for r in replies)),
                                     **train_metrics(replies)}
        for key in ("leak-nn-train", "leak-nn-heldout", "leak-nn-ratio", "leak-mia-auc"):
            values = [float(r.metrics[key]) for r in replies if key in r.metrics]
            if values:
                metrics[key] = float(np.mean(values))
        return metrics

    def pool_inputs(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The announced pool images, as they travel down (uint8)."""
        assert self._public is not None
        return {INPUTS: quantise(self._public.x[indices])}

    def round_artifacts(self) -> dict[str, bytes]:
        artifacts, self._artifacts = self._artifacts, {}
        return artifacts

    # ----- client half --------------------------------------------------------------------
    def public_inputs(self, request: Payload, client: ClientContext) -> np.ndarray:
        """The pool images the server sent (uint8, checked against the input shape)."""
        inputs = request.arrays.get(INPUTS)
        if inputs is None:
            raise ValueError(f"{self.name}: the request carries no {INPUTS!r} array")
        inputs = np.asarray(inputs)
        if inputs.dtype != np.uint8 or inputs.shape[1:] != tuple(client.input_shape):
            raise ValueError(f"{self.name}: inputs of {inputs.dtype} {inputs.shape}, expected uint8 "
                             f"[n, {', '.join(map(str, client.input_shape))}]")
        return dequantise(inputs)

    def synthesis_model(self, request: Payload, client: ClientContext,
                        rnd: int) -> tuple[nn.Module, FitStats]:
        """The model a client synthesises from, trained this round (here: its personal model)."""
        model = self.personal_model(client)
        return model, self.local_fit(client, model, rnd)  # private data; DP-SGD if on

    def synthesis_labels(self, client: ClientContext) -> np.ndarray:
        """K labels per class the client holds; every class under privacy (without reading data)."""
        if self.cfg.privacy.enabled:
            classes = np.arange(self.num_classes)
        else:
            classes = np.flatnonzero(np.bincount(client.data.train.y, minlength=self.num_classes))
        return np.repeat(classes, self.synthesis.per_class).astype(np.int64)

    def synthesise(self, client: ClientContext, model: nn.Module,
                   rnd: int) -> tuple[np.ndarray, np.ndarray]:
        """The client's synthetic images (float, [-1, 1]) and their labels
        (:meth:`synthesis_labels`). A method that reads no data gets a guard in the data's
        place: any access raises."""
        method = SYNTHESIZERS.get(self.synthesis.method)(self.synthesis)
        labels = self.synthesis_labels(client)
        data = client.data.train if method.reads_data else GuardedDataset(
            f"synthesis.method = {self.synthesis.method!r} promised to read no data")
        generator = seeded_generator(self.cfg.seed, rnd, client.partition_id, SYNTHESIS_STREAM)
        return method.synthesise(model, data, labels, tuple(client.input_shape), generator), labels

    def client_phase(self, phase: str, request: Payload, client: ClientContext) -> Payload:
        if phase != "synthesise":
            return super().client_phase(phase, request, client)  # type: ignore[misc]
        rnd = int(request.config["round"])
        model, stats = self.synthesis_model(request, client, rnd)
        self.save_personal_model(client, model)
        images, labels = self.synthesise(client, model, rnd)
        arrays = {SYNTHETIC: quantise(images), SYNTHETIC_LABELS: labels}
        metrics = {"num-examples": len(client.data.train), "loss": stats.loss,
                   "accuracy": stats.accuracy}
        if self.synthesis.measure_leakage and not self.cfg.privacy.enabled:
            metrics.update(leakage(dequantise(arrays[SYNTHETIC]), client.data.train.x,
                                   client.data.test.x))
        return Payload(arrays=arrays, metrics=metrics)


def image_grid(x: np.ndarray, y: np.ndarray, num_classes: int, per_class: int) -> bytes:
    """A PNG with a row per class of up to ``per_class`` of its images (the newest), grey where
    a class has fewer; images in [-1, 1], ``[N, C, H, W]`` with C 1 or 3."""
    from PIL import Image

    _, channels, h, w = x.shape
    canvas = np.full((num_classes * (h + 2), per_class * (w + 2), channels), 128, np.uint8)
    for c in range(num_classes):
        rows = np.flatnonzero(y == c)[-per_class:]
        for j, i in enumerate(rows):
            tile = quantise(x[i]).transpose(1, 2, 0)
            canvas[c * (h + 2) + 1:c * (h + 2) + 1 + h, j * (w + 2) + 1:j * (w + 2) + 1 + w] = tile
    image = Image.fromarray(canvas[..., 0] if channels == 1 else canvas)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
