"""The aggregation-rule contract, its shared validation, the registry and numeric helpers.

A multi-teacher aggregation rule turns the raw logits of ``K`` teachers (clients) on ``N`` shared
samples into one soft target per sample::

    logits [K, N, C]  --rule-->  targets [N, C]   (probabilities: rows sum to 1, float32)

Rules are pure numpy. They compute in float64 and return float32. Every rule first softens each
teacher with the rule's ``temperature`` ``T``: ``p_k = softmax(z_k / T)`` (or, for the rules that
work on logits, ``z_k / T``). ``softmax`` subtracts the row maximum, so it cannot overflow.

Optional inputs, validated once here for every rule (:meth:`AggregationRule.__call__`):

``weights``
    Non-negative per-teacher weights, shape ``[K]`` (e.g. sample counts, broadcast to every
    sample) or ``[K, N]`` (per teacher per sample, e.g. from :func:`label_weights`); rules whose
    ``weight_axis`` is ``"class"`` (``classwise``) take ``[K]`` or ``[K, C]`` (per teacher per
    output class, e.g. label counts) instead. Only rules that declare ``uses_weights`` accept
    them. Every other rule raises :class:`ValueError` when weights are given, so a weighting is
    never silently dropped. :meth:`AggregationRule.weights_from_counts` turns per-label counts
    into whichever form the rule takes.
``mask``
    Boolean ``[K, N]``: ``mask[k, n]`` is true when teacher ``k`` has a prediction for sample
    ``n`` (FD, for example: a client with no samples of a class has no logit vector for it).
    Every rule excludes the invalid teachers sample by sample, and every sample needs at least
    one valid teacher. The logits of masked-out entries are never read, but they must still be
    finite numbers (fill them with 0).

Rules register themselves in :data:`AGGREGATORS`; :func:`build_aggregator` builds one by name.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedkd.config import AggregationConfig, register_section
from fedkd.errors import ConfigError
from fedkd.registry import Registry
from fedkd.validate import finite_positive

if TYPE_CHECKING:
    from fedkd.config import RunConfig

__all__ = [
    "AGGREGATORS",
    "AggregationRule",
    "build_aggregator",
    "build_rule",
    "label_weights",
    "softmax",
    "log_softmax",
    "entropy",
    "masked_average",
]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

def _register_options(name: str, cls: type[AggregationRule]) -> None:
    if cls.Options is not None:
        register_section(f"aggregation.{name}", cls.Options)


AGGREGATORS: Registry[type[AggregationRule]] = Registry("aggregation rule", _register_options)
"""Every aggregation rule, by the name used in run configs (``"mean"``, ``"median"``...).
Registering a rule with ``Options`` also registers its config section ``aggregation.<name>``."""


# --------------------------------------------------------------------------------------------
# numeric helpers (float64 in, float64 out)
# --------------------------------------------------------------------------------------------


def log_softmax(x: FloatArray, axis: int = -1) -> FloatArray:
    """Numerically stable ``log softmax(x)`` along ``axis`` (max subtracted first).

    Entries equal to ``-inf`` give ``-inf``; at least one entry per slice must be finite.
    """
    shifted = x - np.max(x, axis=axis, keepdims=True)
    with np.errstate(under="ignore"):
        lse = np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))
    return shifted - lse


def softmax(x: FloatArray, axis: int = -1) -> FloatArray:
    """Numerically stable ``softmax(x)`` along ``axis``; rows sum to 1.

    Entries equal to ``-inf`` get probability 0; at least one entry per slice must be finite.
    """
    shifted = x - np.max(x, axis=axis, keepdims=True)
    with np.errstate(under="ignore"):
        e = np.exp(shifted)
    return e / np.sum(e, axis=axis, keepdims=True)


def entropy(log_p: FloatArray, axis: int = -1) -> FloatArray:
    """Shannon entropy ``-sum p log p`` (nats) from log-probabilities, with ``0 log 0 = 0``."""
    with np.errstate(under="ignore", invalid="ignore"):
        p = np.exp(log_p)
        terms = np.where(p > 0.0, p * log_p, 0.0)
    return -np.sum(terms, axis=axis)


def masked_average(values: FloatArray, weights: FloatArray, mask: BoolArray) -> FloatArray:
    """Weighted average over teachers of ``values`` ``[K, N, C]`` with ``weights`` ``[K, N]``.

    Masked-out teachers (``mask[k, n]`` false) are excluded whatever their weight or values.
    The valid weights of every sample must sum to a positive number (the caller checks).
    """
    w = np.where(mask, weights, 0.0)
    safe_values = np.where(mask[..., None], values, 0.0)
    total = np.sum(w, axis=0)  # [N]
    return np.einsum("kn,knc->nc", w, safe_values) / total[:, None]


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _as_real_array(name: str, value: ArrayLike) -> FloatArray:
    arr = np.asarray(value)
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ValueError(f"{name} must be a real-valued numeric array, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def _check_finite(name: str, arr: FloatArray) -> None:
    if np.isnan(arr).any():
        raise ValueError(f"{name} contain NaN ({int(np.isnan(arr).sum())} entries)")
    if np.isinf(arr).any():
        raise ValueError(f"{name} contain Inf ({int(np.isinf(arr).sum())} entries)")


# --------------------------------------------------------------------------------------------
# the rule contract
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Targets:
    """What :meth:`AggregationRule.aggregate` returns.

    Attributes
    ----------
    probs
        Soft targets ``[N, C]``, float32; rows of unanswered samples carry no information.
    answered
        Boolean ``[N]``: ``False`` where the rule declined to answer (PATE's confidence
        threshold); a student must not train on those samples.
    privacy_events
        Client-level releases this aggregation made (PATE's noisy votes), as ``dp_accounting``
        events for the server's ledger; empty for the deterministic rules.
    votes
        A voting rule's vote histograms ``[N, C]`` (PATE), for the data-dependent privacy
        analysis at the end of a run; ``None`` for the others. Private: never published.
    """

    probs: NDArray[np.float32]
    answered: NDArray[np.bool_]
    privacy_events: tuple[Any, ...] = ()
    votes: NDArray[np.int32] | None = None


class AggregationRule(ABC):
    """Base class: aggregate teacher logits ``[K, N, C]`` into soft targets ``[N, C]``.

    Subclasses register with ``@AGGREGATORS.register(name)`` (which sets :attr:`name`), add
    their own keyword-only options to ``__init__`` (validated there, :class:`ValueError` on bad
    values) and implement :meth:`_aggregate`, which receives already validated float64 arrays.

    Parameters
    ----------
    temperature
        Softening temperature ``T > 0``: teachers are read as ``softmax(z / T)`` (or ``z / T``).
    """

    name: ClassVar[str]
    Options: ClassVar[type | None] = None
    """The rule's own options: a frozen dataclass whose fields are keyword arguments of
    ``__init__``; it is the config section ``aggregation.<name>`` (``None``: no options), and
    the one place their defaults live (``__init__`` takes its defaults from it)."""

    # -- capabilities (what an algorithm, the config checks or secure aggregation may rely on) --
    needs_counts: ClassVar[bool] = False
    """The rule needs per-teacher label counts (or other weights) to aggregate."""
    needs_logits: ClassVar[bool] = False
    """The rule reads raw logit values (not only probabilities or the argmax)."""
    client_level_privacy: ClassVar[bool] = False
    """The rule itself is a client-level DP mechanism (noisy votes) whose cost the server ledger
    records; its targets are one-hot, not soft."""
    sum_decomposable: ClassVar[bool] = False
    """Its targets are a function of sums over teachers (numerator and denominator), so it can
    run on securely aggregated sums."""
    data_dependent_privacy: ClassVar[bool] = False
    """Its vote histograms (:attr:`Targets.votes`) get PATE's data-dependent privacy analysis
    after the last round (the rule has ``sigma``, ``threshold`` and ``sigma_threshold``)."""

    uses_weights: ClassVar[bool] = False
    """Whether the rule takes ``weights``; rules that do not raise when weights are given."""
    requires_weights: ClassVar[bool] = False
    """Whether ``weights`` are mandatory."""
    weight_axis: ClassVar[str] = "sample"
    """``"sample"``: weights are ``[K]`` or ``[K, N]``; ``"class"``: ``[K]`` or ``[K, C]``."""
    randomized: ClassVar[bool] = False  # draws noise: use aggregate(..., rng=...), not rule(...)

    def __init__(self, temperature: float = AggregationConfig.temperature) -> None:
        self.temperature = finite_positive("temperature", temperature)

    # -- public entry points -----------------------------------------------------------------

    def aggregate(
        self,
        logits: ArrayLike,
        *,
        weights: ArrayLike | None = None,
        mask: ArrayLike | None = None,
        rng: np.random.Generator | None = None,
    ) -> Targets:
        """Aggregate and say which samples got an answer (and at what privacy cost).

        Algorithms call this; deterministic rules answer every sample, spend nothing and ignore
        ``rng``. Randomised rules (PATE) draw their noise from ``rng`` and require it.
        """
        probs = self(logits, weights=weights, mask=mask)
        return Targets(probs=probs, answered=np.ones(probs.shape[0], dtype=bool))

    def __call__(
        self,
        logits: ArrayLike,
        *,
        weights: ArrayLike | None = None,
        mask: ArrayLike | None = None,
    ) -> NDArray[np.float32]:
        """Aggregate ``logits`` into soft targets.

        Parameters
        ----------
        logits
            Raw teacher logits, shape ``[K, N, C]`` with ``K, N >= 1`` and ``C >= 2``; finite.
        weights
            Optional non-negative teacher weights, ``[K]`` or ``[K, N]``; only for rules with
            ``uses_weights`` (``weighted``), which require them.
        mask
            Optional boolean ``[K, N]``; ``False`` excludes teacher ``k`` for sample ``n``.

        Returns
        -------
        numpy.ndarray
            Soft targets ``[N, C]``, float32, each row a probability distribution.

        Raises
        ------
        ValueError
            On a bad shape, dtype or non-finite value, on weights given to a rule that does not
            use them (or missing where required), or on a sample with no valid teacher.
        """
        z = self._validate_logits(logits)
        k, n, _ = z.shape
        m = self._validate_mask(mask, k, n)
        w = self._validate_weights(weights, k, n, m, z.shape[2])
        z = np.where(m[..., None], z, 0.0)  # never let masked-out garbage reach the arithmetic
        with np.errstate(over="ignore"):
            scaled = z / self.temperature
        if not np.isfinite(scaled).all():
            raise ValueError(
                f"logits / temperature overflows float64 (temperature={self.temperature}); "
                "use a larger temperature or smaller logits"
            )
        out = self._aggregate(scaled, m, w)
        return np.asarray(out, dtype=np.float32)

    @abstractmethod
    def _aggregate(
        self, scaled_logits: FloatArray, mask: BoolArray, weights: FloatArray | None
    ) -> FloatArray:
        """Compute the targets ``[N, C]`` from validated inputs.

        Parameters
        ----------
        scaled_logits
            ``z / T``, float64 ``[K, N, C]``, finite; masked-out entries are zero.
        mask
            Boolean ``[K, N]``; every sample has at least one true entry.
        weights
            Float64 ``[K, N]`` (``[K, C]`` for class-axis rules; ``[K]`` already broadcast), or
            ``None``; passed only to rules with ``uses_weights``; every sample's valid teachers
            have a positive total weight.
        """

    # -- secure aggregation: the rule as a function of sums over teachers --------------------

    def sum_layout(self, n: int, c: int, *, masked: bool = False) -> dict[str, tuple[int, int]]:
        """Name -> shape of the sums a ``sum_decomposable`` rule's targets are a function of,
        for ``n`` samples of ``c`` classes (what :meth:`summands` returns, per teacher).

        ``num`` ``[n, c]`` is ``sum_k w_k v_k`` (``v_k``: the teacher's value, ``softmax(z_k / T)``
        or ``z_k / T``); ``den`` is ``sum_k w_k`` in the weights' own shape (``[1, 1]``: one
        weight per teacher; ``[1, c]``: per class; ``[n, 1]`` or ``[n, c]`` with a mask). A rule
        whose weights are all 1 and no mask has no ``den``: the number of teachers stands in.
        """
        self._check_decomposable()
        rows = n if masked else 1
        if not self.uses_weights:
            return {"num": (n, c), **({"den": (n, 1)} if masked else {})}
        return {"num": (n, c), "den": (rows, c if self.weight_axis == "class" else 1)}

    def summands(self, logits: ArrayLike, *, weight: ArrayLike | None = None,
                 mask: ArrayLike | None = None) -> dict[str, FloatArray]:
        """One teacher's terms of the sums in :meth:`sum_layout`: what a client adds to the
        secure sum instead of sending its logits.

        Parameters
        ----------
        logits
            The teacher's raw logits ``[n, c]``, finite.
        weight
            Its weight, for rules that take weights: a number (e.g. its data size) or, for
            class-axis rules (``classwise``), ``[c]`` (its label counts); non-negative.
        mask
            Optional boolean ``[n]``: the samples it answers.
        """
        self._check_decomposable()
        z = _as_real_array("logits", logits)
        if z.ndim != 2 or z.shape[1] < 2:
            raise ValueError(f"one teacher's logits must be [N, C] with C >= 2, got {z.shape}")
        _check_finite("logits", z)
        n, c = z.shape
        values = self._teacher_values(z[None] / self.temperature)[0]  # [n, c]
        masked = mask is not None
        m = np.asarray(mask, dtype=bool).reshape(n, 1) * 1.0 if masked else None
        if not self.uses_weights:
            if weight is not None:
                raise ValueError(f"aggregation rule {self.name!r} does not use weights")
            return {"num": m * values, "den": m} if masked else {"num": values}
        if weight is None:
            raise ValueError(f"aggregation rule {self.name!r} requires a weight")
        w = _as_real_array("weight", weight)
        _check_finite("weight", w)
        if (w < 0).any():
            raise ValueError("weight must be non-negative")
        if self.weight_axis == "class":
            if w.shape not in ((), (c,)):
                raise ValueError(f"weight must be a number or [C] = ({c},), got shape {w.shape}")
            w = np.broadcast_to(w, (c,))[None, :]  # [1, c]
        elif w.shape != ():
            raise ValueError(f"weight must be a number, got shape {w.shape}")
        else:
            w = w.reshape(1, 1)
        den = m * w if masked else w
        return {"num": den * values, "den": np.array(den, dtype=np.float64)}

    def pack(self, parts: Mapping[str, ArrayLike]) -> FloatArray:
        """:meth:`summands` (or their sums) as one flat vector, in :meth:`sum_layout` order:
        what travels through secure aggregation."""
        return np.concatenate([np.asarray(parts[name], np.float64).reshape(-1) for name in parts])

    def unpack(self, flat: ArrayLike, n: int, c: int, *, masked: bool = False) -> dict[str, FloatArray]:
        """The inverse of :meth:`pack` for ``n`` samples of ``c`` classes."""
        flat = np.asarray(flat, dtype=np.float64)
        layout = self.sum_layout(n, c, masked=masked)
        sizes = [math.prod(shape) for shape in layout.values()]
        if flat.shape != (sum(sizes),):
            raise ValueError(f"{sum(sizes)} packed values expected, got shape {flat.shape}")
        parts = np.split(flat, np.cumsum(sizes)[:-1])
        return {name: part.reshape(shape) for (name, shape), part in zip(layout.items(), parts)}

    def from_sums(self, sums: Mapping[str, ArrayLike], num_teachers: int) -> Targets:
        """The targets from the teachers' summed :meth:`summands` (``num_teachers`` of them).

        Sums may carry noise (distributed DP): a negative average is read as 0, a row without
        positive mass gets the uniform target and counts as unanswered.
        """
        self._check_decomposable()
        num = np.asarray(sums["num"], dtype=np.float64)
        den = np.asarray(sums["den"], dtype=np.float64) if "den" in sums else np.full((1, 1), float(num_teachers))
        weighted = np.broadcast_to(den > 0, num.shape)
        answered = weighted.any(axis=1)
        average = np.divide(num, np.broadcast_to(den, num.shape), out=np.zeros_like(num),
                            where=weighted)
        if not self.needs_logits:  # an average of probabilities: noise may push it below 0,
            # and clipping (distributed DP) shrinks it; the rows' mass is restored before _finish
            average = np.maximum(average, 0.0)
            mass = average.sum(axis=1, keepdims=True)
            average = np.divide(average, mass, out=np.zeros_like(average), where=mass > 0)
        out = self._finish(average, weighted)
        out = np.where(np.isfinite(out), np.maximum(out, 0.0), 0.0)
        total = out.sum(axis=1, keepdims=True)
        answered &= total[:, 0] > 0
        out = np.where(total > 0, out / np.where(total > 0, total, 1.0), 1.0 / out.shape[1])
        return Targets(probs=out.astype(np.float32), answered=answered)

    def _teacher_values(self, scaled_logits: FloatArray) -> FloatArray:
        """What the rule averages over teachers: ``softmax(z / T)`` (rules on logits: ``z / T``)."""
        return softmax(scaled_logits)

    def _finish(self, average: FloatArray, weighted: BoolArray) -> FloatArray:
        """The targets from the (weighted) average of the teacher values ``[n, c]``;
        ``weighted``: where a positive weight stood behind the average."""
        return average

    def _check_decomposable(self) -> None:
        if not self.sum_decomposable:
            raise TypeError(f"aggregation rule {self.name!r} is not a function of sums over "
                            "teachers: it cannot run on securely aggregated sums")

    @classmethod
    def from_options(cls, temperature: float, options: Any | None) -> AggregationRule:
        """The rule with ``temperature`` and its ``Options`` section (``None``: defaults)."""
        if options is None:
            return cls(temperature)
        return cls(temperature, **{f.name: getattr(options, f.name)
                                   for f in dataclasses.fields(options)})

    def weights_from_counts(self, counts: ArrayLike, labels: ArrayLike) -> FloatArray:
        """This rule's ``weights`` from per-teacher label counts ``[K, C]``.

        ``[K, C]`` as they are for class-axis rules (``classwise``); ``[K, N]`` per sample
        (:func:`label_weights`: ``counts[k, labels[n]]``) for the others. ``labels`` [N] are
        the samples' classes (conditioning labels of synthetic samples, or a consensus argmax).
        """
        if self.weight_axis == "class":
            return np.array(_validate_counts(counts), dtype=np.float64)
        return label_weights(counts, labels)

    # -- validation --------------------------------------------------------------------------

    @staticmethod
    def _validate_logits(logits: ArrayLike) -> FloatArray:
        z = _as_real_array("logits", logits)
        if z.ndim != 3:
            raise ValueError(
                f"logits must be 3-D [K teachers, N samples, C classes], got shape {z.shape}"
            )
        k, n, c = z.shape
        if k < 1:
            raise ValueError("logits must hold at least one teacher (K >= 1), got K = 0")
        if n < 1:
            raise ValueError("logits must hold at least one sample (N >= 1), got N = 0")
        if c < 2:
            raise ValueError(f"logits must hold at least two classes (C >= 2), got C = {c}")
        _check_finite("logits", z)
        return z

    @staticmethod
    def _validate_mask(mask: ArrayLike | None, k: int, n: int) -> BoolArray:
        if mask is None:
            return np.ones((k, n), dtype=bool)
        m = np.asarray(mask)
        if m.dtype != np.bool_:
            raise ValueError(f"mask must be a boolean array, got dtype {m.dtype}")
        if m.shape != (k, n):
            raise ValueError(f"mask must have shape [K, N] = {(k, n)}, got {m.shape}")
        empty = np.flatnonzero(~m.any(axis=0))
        if empty.size:
            shown = ", ".join(str(i) for i in empty[:10]) + (", ..." if empty.size > 10 else "")
            raise ValueError(
                f"every sample needs at least one valid teacher; samples without one: {shown}"
            )
        return m

    def _validate_weights(
        self, weights: ArrayLike | None, k: int, n: int, mask: BoolArray, c: int
    ) -> FloatArray | None:
        per_class = self.weight_axis == "class"
        second, size = ("C", c) if per_class else ("N", n)
        if weights is None:
            if self.requires_weights:
                raise ValueError(
                    f"aggregation rule {self.name!r} requires weights ([K] or [K, {second}])")
            return None
        if not self.uses_weights:
            raise ValueError(
                f"aggregation rule {self.name!r} does not use weights; pass weights only to "
                f"the rules that use them: {', '.join(_weight_rules()) or '(none)'}"
            )
        w = _as_real_array("weights", weights)
        if w.shape == (k,):
            w = np.broadcast_to(w[:, None], (k, size))
        elif w.shape != (k, size):
            raise ValueError(
                f"weights must have shape [K] = {(k,)} or [K, {second}] = {(k, size)}, "
                f"got {w.shape}"
            )
        _check_finite("weights", w)
        if (w < 0).any():
            raise ValueError("weights must be non-negative")
        per_sample = np.broadcast_to(w.sum(axis=1)[:, None], (k, n)) if per_class else w
        zero = np.flatnonzero(np.sum(np.where(mask, per_sample, 0.0), axis=0) <= 0.0)
        if zero.size:
            shown = ", ".join(str(i) for i in zero[:10]) + (", ..." if zero.size > 10 else "")
            raise ValueError(f"the valid teachers' weights sum to 0 for samples: {shown}")
        return np.array(w, dtype=np.float64)

    # -- misc --------------------------------------------------------------------------------

    def options(self) -> dict[str, Any]:
        """The rule's options (the keyword arguments of its constructor) and their values."""
        return {p: getattr(self, p) for p in _option_names(type(self))}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({args})"


def _weight_rules() -> list[str]:
    return [name for name in AGGREGATORS if AGGREGATORS.get(name).uses_weights]


def _option_names(cls: type[AggregationRule]) -> list[str]:
    params = inspect.signature(cls.__init__).parameters.values()
    return [
        p.name
        for p in params
        if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def build_aggregator(name: str, **options: Any) -> AggregationRule:
    """Build the aggregation rule registered as ``name`` with its keyword ``options``.

    Option names may use ``-`` for ``_`` (``trim-fraction``), as run-config keys do.

    Raises
    ------
    fedkd.registry.UnknownNameError
        If ``name`` is not registered; the message lists the valid names.
    TypeError
        If an option is not one the rule takes; the message lists the valid options.
    ValueError
        If an option has an invalid value.
    """
    cls = AGGREGATORS.get(name)
    valid = _option_names(cls)
    normalised: dict[str, Any] = {}
    for key, value in options.items():
        norm = key.replace("-", "_")
        if norm in normalised:
            raise TypeError(f"option {norm!r} given twice for aggregation rule {name!r}")
        normalised[norm] = value
    unknown = sorted(set(normalised) - set(valid))
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for aggregation rule {name!r}; "
            f"valid options: {', '.join(valid)}"
        )
    return cls(**normalised)


def build_rule(cfg: RunConfig) -> AggregationRule:
    """The aggregation rule a run configures: ``aggregation.rule`` with ``aggregation.temperature``
    and the rule's own section ``aggregation.<rule>``.

    Raises
    ------
    fedkd.errors.ConfigError
        For an unknown rule name (the valid names listed) or an option the rule rejects.
    """
    name = cfg.aggregation.rule
    if name not in AGGREGATORS:
        raise ConfigError(f"aggregation.rule: unknown aggregation rule {name!r}; valid names: "
                          f"{', '.join(AGGREGATORS.names())}")
    cls = AGGREGATORS.get(name)
    path = f"aggregation.{name}"
    options = cfg.section(path) if cls.Options is not None and cfg.has_section(path) else None
    try:
        return cls.from_options(cfg.aggregation.temperature, options)
    except ValueError as err:
        raise ConfigError(f"{path}: {err}") from err


def _validate_counts(counts: ArrayLike) -> FloatArray:
    """Per-teacher per-class counts ``[K, C]``: 2-D, finite and non-negative."""
    cnt = _as_real_array("counts", counts)
    if cnt.ndim != 2:
        raise ValueError(f"counts must be 2-D [K teachers, C classes], got shape {cnt.shape}")
    _check_finite("counts", cnt)
    if (cnt < 0).any():
        raise ValueError("counts must be non-negative")
    return cnt


def label_weights(counts: ArrayLike, labels: ArrayLike) -> FloatArray:
    """Per-sample teacher weights from per-label counts: ``w[k, n] = counts[k, labels[n]]``.

    Used with the ``weighted`` rule, which normalises over teachers, so that each sample's
    target weighs teacher ``k`` by how many training samples of that sample's class it holds
    (FedGen/FedFTG/FedZGE: ``w_{k,n} = n_{k,y_n} / sum_j n_{j,y_n}``).

    For unlabeled samples (a public set), use as ``labels`` the argmax of the ``mean`` rule's
    targets on the same logits.

    Parameters
    ----------
    counts
        Non-negative, finite per-teacher per-class counts, shape ``[K, C]`` (may be noised).
    labels
        Integer class indices in ``[0, C)``, shape ``[N]``.

    Returns
    -------
    numpy.ndarray
        Float64 ``[K, N]``.
    """
    cnt = _validate_counts(counts)
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise ValueError(f"labels must be 1-D [N], got shape {lab.shape}")
    if lab.dtype == np.bool_ or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {lab.dtype}")
    c = cnt.shape[1]
    if lab.size and (lab.min() < 0 or lab.max() >= c):
        raise ValueError(f"labels must lie in [0, {c}), got values in [{lab.min()}, {lab.max()}]")
    return np.array(cnt[:, lab], dtype=np.float64)
