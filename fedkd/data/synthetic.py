"""LEAF's Synthetic(alpha, beta) population, every client generated on demand from its own seed.

Li, Sahu, Zaheer, Sanjabi, Talwalkar and Smith, "Federated Optimization in Heterogeneous
Networks" (FedProx), MLSys 2020, Section 5.1, and Caldas et al., "LEAF: A Benchmark for
Federated Settings" (2018). Client ``k`` has a local model ``y = argmax(softmax(W_k x + b_k))``
with ``x`` in R^60 and 10 classes:

* ``u_k ~ N(0, alpha)``, ``W_k[i, j] ~ N(u_k, 1)``, ``b_k[j] ~ N(u_k, 1)``: how much the clients'
  labelling functions differ (``data.synthetic-alpha``);
* ``B_k ~ N(0, beta)``, ``v_k[j] ~ N(B_k, 1)``, ``x ~ N(v_k, Sigma)`` with ``Sigma`` diagonal,
  ``Sigma[j, j] = (j + 1) ** -1.2``: how much their inputs differ (``data.synthetic-beta``);
* ``n_k = floor(LogNormal(4, 2)) + 50`` samples, the power law of the FedProx generator, capped
  at :data:`MAX_CLIENT_SAMPLES` here (an uncapped tail reaches 10^6 samples for one client in a
  population of a million).

As in the FedProx code, alpha and beta are the standard deviations given to ``np.random.normal``.

Nothing is held per client: :meth:`SyntheticPopulation.client` draws client ``k``'s parameters
and samples from ``numpy.random.default_rng([seed, stream, k])``, so any process builds the same
client in about a tenth of a millisecond, and a population of a million costs no more memory than
one of ten.

The global test set is, as in FedProx and LEAF, the union of clients' local test splits: those
of :data:`TEST_CLIENTS` clients of the population (a seeded sample; at most
:data:`TEST_SAMPLES_PER_CLIENT` of each). The public (proxy) set comes from clients *outside* the
population, drawn from the same prior in its own stream: :data:`PUBLIC_SAMPLES_PER_CLIENT`
samples from each of ``round(public-fraction *`` :data:`PUBLIC_POOL` ``/``
:data:`PUBLIC_SAMPLES_PER_CLIENT` ``)`` public clients.

What a global model can learn here: a constant added to every entry of ``W_k`` and ``b_k`` adds
the same amount to every class's logit, so ``u_k`` does not change the labels; the clients share
no labelling function, and each client's inputs sit in its own region around ``v_k``. A global
model learns the regions of the clients it trained on. A test client that was never sampled is
close to a guess: with a million clients and a thousand a round, the global accuracy measures
how far the run got through the population, not how good the algorithm is. This dataset is for
scale (memory, time per round, sampling and accounting at cross-device sizes); accuracy claims
belong to the partitioned datasets.

Inputs are shaped ``(1, 1, 60)`` so that every model of the zoo that flattens its input (``mlp``)
takes them; the convolutional ones refuse a 1x60 image.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field

import numpy as np

from fedkd.data.datasets import ArrayDataset, DatasetSource, TrainTestData, DATASETS
from fedkd.data.federated import ClientData, DataSpec, _local_test_size, cached_split

__all__ = ["SyntheticPopulation", "synthetic_client", "DIMENSION", "NUM_CLASSES"]

#: Input dimension and classes of LEAF's Synthetic data.
DIMENSION = 60
NUM_CLASSES = 10
#: Largest number of samples one client holds (the log-normal tail is cut here).
MAX_CLIENT_SAMPLES = 1_000
#: Test clients (outside the population) and the samples each gives to the global test set.
TEST_CLIENTS = 500
TEST_SAMPLES_PER_CLIENT = 20
#: The public set: ``public-fraction`` of this many samples, this many from each public client.
PUBLIC_POOL = 20_000
PUBLIC_SAMPLES_PER_CLIENT = 10

# numpy SeedSequence entropy words of the streams (population clients, test, public, local split)
_CLIENT_STREAM = 11
_TEST_STREAM = 12  # which clients the global test set takes
_PUBLIC_STREAM = 13
_SPLIT_STREAM = 14

_SCALE = np.power(np.arange(1, DIMENSION + 1, dtype=np.float64), -0.6)  # sqrt of Sigma's diagonal


def synthetic_client(rng: np.random.Generator, alpha: float, beta: float,
                     num_samples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One Synthetic(alpha, beta) client's samples from its generator ``rng``.

    Parameters
    ----------
    rng
        The client's own generator; every draw comes from it, in a fixed order.
    alpha, beta
        Standard deviations of the model prior ``u_k`` and of the input prior ``B_k``.
    num_samples
        How many samples; ``None`` draws the client's own size, ``floor(LogNormal(4, 2)) + 50``
        capped at :data:`MAX_CLIENT_SAMPLES`.

    Returns
    -------
    x, y : numpy.ndarray
        float32 ``[n, 1, 1, 60]`` and int64 ``[n]``.
    """
    size = rng.lognormal(4.0, 2.0)  # drawn even when num_samples is given: the same stream
    n = min(int(size) + 50, MAX_CLIENT_SAMPLES) if num_samples is None else int(num_samples)
    u = rng.normal(0.0, alpha)
    big_b = rng.normal(0.0, beta)
    w = rng.normal(u, 1.0, (DIMENSION, NUM_CLASSES))
    b = rng.normal(u, 1.0, NUM_CLASSES)
    v = rng.normal(big_b, 1.0, DIMENSION)
    x = v + rng.standard_normal((n, DIMENSION)) * _SCALE
    y = np.argmax(x @ w + b, axis=1)  # softmax is monotone: its argmax is the logits' argmax
    return x.astype(np.float32).reshape(n, 1, 1, DIMENSION), y.astype(np.int64)


def _held_out_set(seed: int, stream: int, clients: int, per_client: int,
                  alpha: float, beta: float) -> ArrayDataset:
    xs, ys = [], []
    for k in range(clients):
        x, y = synthetic_client(np.random.default_rng([seed, stream, k]), alpha, beta, per_client)
        xs.append(x)
        ys.append(y)
    if not xs:
        return ArrayDataset(x=np.zeros((0, 1, 1, DIMENSION), np.float32), y=np.zeros(0, np.int64))
    return ArrayDataset(x=np.concatenate(xs), y=np.concatenate(ys))


def _readonly(data: ArrayDataset) -> ArrayDataset:
    data.x.setflags(write=False)
    data.y.setflags(write=False)
    return data


@dataclass(frozen=True, eq=False)
class SyntheticPopulation:
    """The federated view of a Synthetic(alpha, beta) population: what :func:`load_federated`
    returns for ``data.dataset = "synthetic"``. It answers like
    :class:`fedkd.data.federated.FederatedData` (``public``, ``global_test``, ``num_partitions``,
    ``client``, ``cached_client``, ``describe``) but holds no per-client array: a client is
    generated when it is asked for.

    Parameters
    ----------
    spec
        The data spec: ``num_partitions`` is the population, ``synthetic_alpha`` and
        ``synthetic_beta`` the priors, ``seed`` the population's seed, ``public_fraction`` and
        ``public_labels`` the public set, ``local_test_fraction`` each client's local split.
    """

    spec: DataSpec
    num_classes: int = NUM_CLASSES
    input_shape: tuple[int, int, int] = (1, 1, DIMENSION)
    public: ArrayDataset = field(init=False)
    global_test: ArrayDataset = field(init=False)
    _clients: collections.OrderedDict[int, ClientData] = field(
        default_factory=collections.OrderedDict, init=False, repr=False)

    def __post_init__(self) -> None:
        s = self.spec
        tested = np.random.default_rng([s.seed, _TEST_STREAM]).choice(
            s.num_partitions, size=min(TEST_CLIENTS, s.num_partitions), replace=False)
        parts = [self.client(int(k)).test for k in np.sort(tested)]
        test = ArrayDataset(x=np.concatenate([p.x[:TEST_SAMPLES_PER_CLIENT] for p in parts]),
                            y=np.concatenate([p.y[:TEST_SAMPLES_PER_CLIENT] for p in parts]))
        n_public = int(math.floor(s.public_fraction * PUBLIC_POOL + 0.5))
        public = _held_out_set(s.seed, _PUBLIC_STREAM,
                               -(-n_public // PUBLIC_SAMPLES_PER_CLIENT), PUBLIC_SAMPLES_PER_CLIENT,
                               s.synthetic_alpha, s.synthetic_beta)
        public = public.subset(np.arange(n_public))
        if not s.public_labels:  # an unlabeled proxy set: the labels never reach an algorithm
            public = ArrayDataset(x=public.x, y=np.full(len(public), -1, np.int64))
        object.__setattr__(self, "global_test", _readonly(test))
        object.__setattr__(self, "public", _readonly(public))

    @property
    def num_partitions(self) -> int:
        """The population: the number of clients."""
        return self.spec.num_partitions

    def _check(self, partition_id: int) -> int:
        if isinstance(partition_id, bool) or not isinstance(partition_id, (int, np.integer)) \
                or not 0 <= partition_id < self.num_partitions:
            raise ValueError(
                f"client {partition_id!r} is out of range: the synthetic population has "
                f"{self.num_partitions} clients (ids 0..{self.num_partitions - 1})")
        return int(partition_id)

    def client(self, partition_id: int) -> ClientData:
        """Client ``partition_id``'s local train and test sets, generated from its own seed
        (``local-test-fraction`` of its samples form the test set, at least one stays in train)."""
        pid = self._check(partition_id)
        s = self.spec
        x, y = synthetic_client(np.random.default_rng([s.seed, _CLIENT_STREAM, pid]),
                                s.synthetic_alpha, s.synthetic_beta)
        n_test = _local_test_size(len(y), s.local_test_fraction)
        order = np.random.default_rng([s.seed, _SPLIT_STREAM, pid]).permutation(len(y))
        train, test = np.sort(order[n_test:]), np.sort(order[:n_test])
        return ClientData(partition_id=pid, train=ArrayDataset(x=x[train], y=y[train]),
                          test=ArrayDataset(x=x[test], y=y[test]))

    def cached_client(self, partition_id: int) -> ClientData:
        """:meth:`client`, kept for the last clients asked for, arrays read-only
        (:func:`fedkd.data.federated.cached_split`)."""
        return cached_split(self._clients, self._check(partition_id), self.client)

    def client_indices(self, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the client's train and test samples among its own samples."""
        data = self.client(partition_id)
        n_train, n_test = len(data.train), len(data.test)
        return np.arange(n_train), np.arange(n_train, n_train + n_test)

    def describe(self) -> str:
        """A readable summary (sizes of a few clients; the population is never enumerated)."""
        s = self.spec
        shown = min(8, self.num_partitions)
        sizes = [len(c.train) + len(c.test) for c in map(self.client, range(shown))]
        return "\n".join([
            f"dataset synthetic: Synthetic(alpha={s.synthetic_alpha:g}, beta={s.synthetic_beta:g})"
            f" (LEAF/FedProx), {NUM_CLASSES} classes, inputs {DIMENSION}-d",
            f"{self.num_partitions} clients generated on demand, seed {s.seed}; samples per "
            f"client floor(LogNormal(4, 2)) + 50, at most {MAX_CLIENT_SAMPLES}; clients 0..{shown - 1}: "
            + " ".join(map(str, sizes)),
            f"global test {len(self.global_test)} (the local test splits of "
            f"{min(TEST_CLIENTS, self.num_partitions)} clients, at most {TEST_SAMPLES_PER_CLIENT} "
            f"each); public {len(self.public)} "
            f"(public_fraction {s.public_fraction:g} of {PUBLIC_POOL})",
        ])


def _load_synthetic(_data_dir: object) -> TrainTestData:
    """The dataset's non-client sets (public pool as ``train``, the global test set as ``test``)
    at the default priors, seed 0: what a device with its own data checks its shape against."""
    population = SyntheticPopulation(DataSpec(dataset="synthetic", num_partitions=1))
    return TrainTestData(name="synthetic", train=population.public, test=population.global_test,
                         num_classes=NUM_CLASSES, input_shape=(1, 1, DIMENSION))


DATASETS.register("synthetic")(
    DatasetSource(load=_load_synthetic, default_data_dir=None, num_classes=NUM_CLASSES,
                  input_shape=(1, 1, DIMENSION), federate=SyntheticPopulation)
)
