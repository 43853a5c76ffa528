"""The message contract: what each phase may carry, codecs to Flower records, reply validation.

Algorithms never see Flower's messages: they speak in :class:`Payload` objects (named numpy
arrays, a config mapping, metrics), and the server and client apps turn them into Flower
``RecordDict`` objects with :func:`encode` and back with :func:`decode`. This is the only module
of the ``fedkd`` library that handles Flower's records; the others that import Flower do so for
its cryptographic primitives (:mod:`fedkd.secagg`), its processes and their patches
(:mod:`fedkd.runtime`), and Flower Datasets' partitioners (:mod:`fedkd.data.partition`).

Every algorithm declares, per phase, a :class:`PhaseSpec`: the message type, and for the reply
the arrays it may contain (:class:`ArraySpec`: shape, dtype, value bounds), the metrics it must
contain, a size bound, and the least ``num-examples`` a reply may claim. The server calls
:func:`validate_reply` on every reply before it is used, with the largest ``num-examples`` it
believes (``max_num_examples``: FedAvg weighs a client by that number, so an unbounded claim
would let one client take over the global model); an invalid reply raises :class:`InvalidReply`
with a reason, and the round loop counts and skips it.
"""

from __future__ import annotations

import io
import math
import reprlib
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Union

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MessageType, MetricRecord, RecordDict

ConfigValue = Union[bool, int, float, str, bytes, list[int], list[float], list[str]]
MetricValue = Union[int, float, list[int], list[float]]

ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
PHASE_KEY = "phase"
#: Every request's place in the server's run: its round and the index of its exchange within the
#: round (a resumed server replays the same places; a client keeping its state on disk uses them
#: to recognise a replay, ``client/state.py``).
EXCHANGE_ROUND_KEY = "exchange-round"
EXCHANGE_STEP_KEY = "exchange-step"
#: The phase that asks a node which client it is, before it is ever sampled; the reply's metric
#: :data:`CLIENT_ID_KEY` is the node's stable client id (its ``partition-id``, else its node
#: config ``client-id``), or -1 when it has none and the server addresses it by its Flower node id.
IDENTIFY_PHASE_NAME = "identify"
CLIENT_ID_KEY = "client-id"
#: With logical clients (``federation.supernodes > 0``) every request names the client it is
#: for: the SuperNode that receives it answers as that client of the run's population.
LOGICAL_CLIENT_KEY = "logical-client"

#: Metrics every reply carries (DESIGN.md §4).
REQUIRED_METRICS: tuple[str, ...] = ("num-examples",)


class InvalidReply(ValueError):
    """A client reply broke the phase's contract; ``str(err)`` is the reason."""


@dataclass
class Payload:
    """What one message carries, free of Flower types.

    Parameters
    ----------
    arrays
        Named numpy arrays (weights, logits, counts...). Order is kept.
    config
        Scalars and short lists: round number, phase name, indices.
    metrics
        Numbers reported by a client: ``num-examples``, ``loss``, ``accuracy``...
    """

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    config: dict[str, ConfigValue] = field(default_factory=dict)
    metrics: dict[str, MetricValue] = field(default_factory=dict)


@dataclass(frozen=True)
class ArraySpec:
    """The declared form of one array in a reply.

    Parameters
    ----------
    shape
        Expected shape; ``None`` on an axis accepts any length there.
    dtype
        Expected numpy dtype name (exact match, e.g. ``"float32"``).
    low, high
        Inclusive bounds on every value; ``None`` means unbounded. Values must be finite either way.
    """

    shape: tuple[int | None, ...]
    dtype: str = "float32"
    low: float | None = None
    high: float | None = None

    @property
    def max_nbytes(self) -> int | None:
        """Largest payload this spec admits, or ``None`` if an axis is free."""
        if any(d is None for d in self.shape):
            return None
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class PhaseSpec:
    """One exchange of a round: what the server asks and what the reply may contain.

    Parameters
    ----------
    name
        Phase name, sent in the request's config under ``"phase"`` (e.g. ``"fit"``).
    message_type
        Flower message type: ``"train"``, ``"evaluate"`` or ``"query"``.
    reply_arrays
        Every array the reply must contain, and nothing else.
    reply_metrics
        Metric keys the reply must contain (``num-examples`` is always required).
    max_reply_bytes
        Bound on the encoded reply; by default the arrays' declared size plus 64 KiB.
    check
        Optional check of the decoded reply's meaning (e.g. counts consistent with the work
        asked for); raises :class:`InvalidReply`. Runs after every structural check passed.
    min_num_examples
        Least ``num-examples`` a reply may claim (an integer >= 0). A phase whose
        ``num-examples`` is used as a weight (FedAvg's fit) declares 1: a weight of 0 from every
        client would leave nothing to average.
    """

    name: str
    message_type: str = MessageType.TRAIN
    reply_arrays: Mapping[str, ArraySpec] = field(default_factory=dict)
    reply_metrics: tuple[str, ...] = ()
    max_reply_bytes: int | None = None
    check: Callable[[Payload], None] | None = None
    min_num_examples: int = 0

    def __post_init__(self) -> None:
        base = self.message_type.split(".", 1)[0]
        if base not in (MessageType.TRAIN, MessageType.EVALUATE, MessageType.QUERY):
            raise ValueError(f"phase {self.name!r}: invalid message type {self.message_type!r}")
        if (not isinstance(self.min_num_examples, int) or isinstance(self.min_num_examples, bool)
                or self.min_num_examples < 0):
            raise ValueError(f"phase {self.name!r}: min_num_examples must be an integer >= 0, "
                             f"got {self.min_num_examples!r}")

    @property
    def reply_byte_bound(self) -> int | None:
        """The size bound applied to replies of this phase."""
        if self.max_reply_bytes is not None:
            return self.max_reply_bytes
        sizes = [s.max_nbytes for s in self.reply_arrays.values()]
        if any(s is None for s in sizes):
            return None
        return sum(sizes, 0) + 64 * 1024  # type: ignore[arg-type]


def to_array(value: np.ndarray) -> Array:
    """A Flower ``Array`` of ``value`` (C order), byte for byte what ``Array(ndarray)`` makes.

    ``Array(ndarray)`` writes the array with ``np.save`` into a ``BytesIO`` and copies the buffer
    out; here the ``.npy`` header is written alone and joined with the array's memory, one copy.
    """
    value = np.ascontiguousarray(value)
    if value.dtype.hasobject:
        return Array(value)  # np.save refuses it, with its own message
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(value))
    data = b"".join((head.getvalue(), memoryview(value.reshape(-1)).cast("B")))
    return Array(dtype=str(value.dtype), shape=tuple(value.shape), stype="numpy.ndarray", data=data)


def from_array(array: Array, *, copy: bool = True) -> np.ndarray:
    """The values of a ``.npy``-serialised ``Array`` as a new, writable numpy array.

    What ``Array.numpy()`` returns, with one copy instead of two (``np.load`` on a ``BytesIO``
    reads the bytes out, then copies them into the array). ``copy=False``: no copy at all, a
    read-only view of the ``Array``'s bytes (which it keeps alive).

    Raises
    ------
    ValueError
        If the bytes are not a readable ``.npy`` array of plain values (object arrays too).
    TypeError
        If the array is not serialised as ``numpy.ndarray``.
    """
    if array.stype != "numpy.ndarray":
        raise TypeError(f"Unsupported serialization type for numpy conversion: '{array.stype}'")
    data = array.data
    head = io.BytesIO(data)
    version = np.lib.format.read_magic(head)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(head)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(head)
    else:
        return array.numpy()  # rare .npy versions: numpy's own reader
    if dtype.hasobject:
        raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
    if any(d < 0 for d in shape):
        raise ValueError(f"negative dimension in the .npy header: {shape}")
    count = math.prod(shape)
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=head.tell())
    out = flat.reshape(shape[::-1]).transpose() if fortran else flat.reshape(shape)
    return out.copy(order="F" if fortran else "C") if copy else out


def encode(
    payload: Payload, *, arrays_cache: MutableMapping[int, ArrayRecord] | None = None
) -> RecordDict:
    """Encode a payload as a Flower ``RecordDict`` (arrays, config, metrics records).

    ``arrays_cache``: payloads whose ``arrays`` are the same dict object (a request sent to many
    nodes) share one encoded ``ArrayRecord`` from it, so it is serialised (and hashed by Flower)
    once rather than once per node. The caller keeps the payloads alive while it uses the cache.
    """
    key = id(payload.arrays)
    arrays = arrays_cache.get(key) if arrays_cache is not None else None
    if arrays is None:
        arrays = ArrayRecord({k: to_array(v) for k, v in payload.arrays.items()})
        if arrays_cache is not None:
            arrays_cache[key] = arrays
    return RecordDict({
        ARRAYS_KEY: arrays,
        CONFIG_KEY: ConfigRecord(dict(payload.config)),
        METRICS_KEY: MetricRecord(dict(payload.metrics)),
    })


def decode(content: RecordDict) -> Payload:
    """Decode a ``RecordDict`` written by :func:`encode`.

    Arrays are decoded lazily only as far as Flower does; use :func:`decode_checked` on replies
    from clients, which validates before converting.
    """
    arrays_rec = content.get(ARRAYS_KEY)
    config_rec = content.get(CONFIG_KEY)
    metrics_rec = content.get(METRICS_KEY)
    arrays = {k: from_array(a) for k, a in arrays_rec.items()} if arrays_rec is not None else {}
    return Payload(
        arrays=arrays,
        config=dict(config_rec) if config_rec is not None else {},
        metrics=dict(metrics_rec) if metrics_rec is not None else {},
    )


def content_nbytes(content: RecordDict) -> int:
    """Bytes of all records in ``content`` as Flower counts them (array data plus keys)."""
    return sum(rec.count_bytes() for rec in content.values())


def validate_reply(content: RecordDict, spec: PhaseSpec, *,
                   max_num_examples: int | None = None) -> Payload:
    """Check a client reply against ``spec`` and return it decoded (arrays: read-only views of
    the reply's bytes; copy one before changing it in place).

    ``max_num_examples``: the largest ``num-examples`` a reply may claim (``None``: no upper
    bound); the least is ``spec.min_num_examples``.

    Raises
    ------
    InvalidReply
        On an unexpected record, an undeclared or missing array, a wrong dtype or shape, a payload
        whose byte length does not match its declared shape, a non-finite or out-of-bounds value,
        a missing metric, a metric value that is not a finite number representable as a float
        (lists: every item), a ``num-examples`` that is not an integer or lies outside
        ``[spec.min_num_examples, max_num_examples]``, or a reply larger than the phase's bound.
    ValueError
        If ``max_num_examples`` is not an integer >= ``spec.min_num_examples`` (a caller's error,
        not the client's).
    """
    if max_num_examples is not None and (
            not isinstance(max_num_examples, int) or isinstance(max_num_examples, bool)
            or max_num_examples < spec.min_num_examples):
        raise ValueError(f"max_num_examples must be an integer >= the phase {spec.name!r}'s "
                         f"min_num_examples ({spec.min_num_examples}), got {max_num_examples!r}")
    unexpected = set(content.keys()) - {ARRAYS_KEY, CONFIG_KEY, METRICS_KEY}
    if unexpected:
        raise InvalidReply(f"unexpected records {sorted(unexpected)}")
    arrays_rec = content.get(ARRAYS_KEY)
    metrics_rec = content.get(METRICS_KEY)
    if arrays_rec is not None and not isinstance(arrays_rec, ArrayRecord):
        raise InvalidReply(f"record {ARRAYS_KEY!r} is not an ArrayRecord")
    if metrics_rec is None or not isinstance(metrics_rec, MetricRecord):
        raise InvalidReply(f"missing metrics record {METRICS_KEY!r}")

    bound = spec.reply_byte_bound
    if bound is not None:
        size = content_nbytes(content)
        if size > bound:
            raise InvalidReply(f"reply of {size} bytes exceeds the bound of {bound} bytes")

    got = list(arrays_rec.keys()) if arrays_rec is not None else []
    extra = [k for k in got if k not in spec.reply_arrays]
    missing = [k for k in spec.reply_arrays if k not in got]
    if extra:
        raise InvalidReply(f"undeclared arrays {extra[:5]}")
    if missing:
        raise InvalidReply(f"missing arrays {missing[:5]}")

    arrays: dict[str, np.ndarray] = {}
    for name, aspec in spec.reply_arrays.items():
        arrays[name] = _check_array(name, arrays_rec[name], aspec)  # type: ignore[index]

    metrics = dict(metrics_rec)
    for key in (*REQUIRED_METRICS, *spec.reply_metrics):
        if key not in metrics:
            raise InvalidReply(f"missing metric {key!r}")
    _check_num_examples(metrics["num-examples"], spec, max_num_examples)
    for key, value in metrics.items():
        if isinstance(value, list):
            for i, item in enumerate(value):
                _check_metric_value(f"metric {key!r} item {i}", item)
        else:
            _check_metric_value(f"metric {key!r}", value)

    config_rec = content.get(CONFIG_KEY)
    payload = Payload(arrays=arrays, config=dict(config_rec) if config_rec else {}, metrics=metrics)
    if spec.check is not None:
        spec.check(payload)
    return payload


def _show_int(n: int) -> str:
    """``n`` for a reason string; a huge one by its size, not its hundreds of digits."""
    if n.bit_length() <= 64:
        return str(n)
    return f"{'-' if n < 0 else ''}<integer of {n.bit_length()} bits>"


def _check_num_examples(n: object, spec: PhaseSpec, max_num_examples: int | None) -> None:
    """``num-examples``: an integer (not a bool) within the phase's and the caller's bounds."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise InvalidReply(f"metric 'num-examples' must be an integer, got {type(n).__name__} "
                           f"{reprlib.repr(n)}")  # a hostile list: its first items only
    if n < 0:
        raise InvalidReply(f"metric 'num-examples' must be a non-negative integer, got "
                           f"{_show_int(n)}")
    if n < spec.min_num_examples:
        raise InvalidReply(f"metric 'num-examples' = {n} is below the minimum of "
                           f"{spec.min_num_examples} for phase {spec.name!r}")
    if max_num_examples is not None and n > max_num_examples:
        raise InvalidReply(f"metric 'num-examples' = {_show_int(n)} is above the maximum of "
                           f"{max_num_examples} (max_num_examples)")


def _check_metric_value(what: str, value: object) -> None:
    """A metric value must be a finite int or float that a float can hold.

    Bools pass (an int subclass; Flower's ``MetricRecord`` refuses them anyway), as before.
    """
    if not isinstance(value, (int, float)):
        raise InvalidReply(f"{what} is not a number ({type(value).__name__})")
    try:
        finite = math.isfinite(value)  # converts an int to float: OverflowError if too large
    except OverflowError as err:
        raise InvalidReply(f"{what} is not finite as a float: {_show_int(int(value))} is too "
                           "large for a float") from err
    if not finite:
        raise InvalidReply(f"{what} is not finite ({value!r})")


def _npy_header_size(data: bytes) -> int:
    """Length of the .npy header (magic, version, header length field and header) of ``data``.

    Flower ships numpy arrays in .npy format; versions 1.x use a 2-byte header length, 2.x and
    3.x a 4-byte one.
    """
    if len(data) < 10 or data[:6] != b"\x93NUMPY":
        return -1  # not .npy: never equal to a real size, so the reply is rejected
    if data[6] == 1:
        return 10 + int.from_bytes(data[8:10], "little")
    return 12 + int.from_bytes(data[8:12], "little")


def _check_array(name: str, array: Array, spec: ArraySpec) -> np.ndarray:
    if array.dtype != spec.dtype:
        raise InvalidReply(f"array {name!r}: dtype {array.dtype} != declared {spec.dtype}")
    shape = tuple(array.shape)
    if len(shape) != len(spec.shape) or any(
        want is not None and want != have for want, have in zip(spec.shape, shape)
    ):
        raise InvalidReply(f"array {name!r}: shape {shape} != declared {spec.shape}")
    expected_bytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize
    if array.stype != "numpy.ndarray":
        raise InvalidReply(f"array {name!r}: unsupported serialisation {array.stype!r}")
    try:
        # A read-only view of the reply's bytes: the server keeps one copy of each reply, not two.
        value = from_array(array, copy=False)
    except Exception as err:  # malformed bytes from a hostile or broken client
        raise InvalidReply(f"array {name!r}: cannot decode ({type(err).__name__}: {err})") from err
    if value.dtype != np.dtype(spec.dtype) or value.shape != shape or value.nbytes != expected_bytes:
        raise InvalidReply(f"array {name!r}: payload does not match its declared dtype and shape")
    if len(array.data) != _npy_header_size(array.data) + expected_bytes:
        raise InvalidReply(f"array {name!r}: {len(array.data)} bytes for {expected_bytes} bytes of "
                           "values (trailing or missing data)")
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise InvalidReply(f"array {name!r}: contains NaN or Inf")
    if spec.low is not None and value.size and value.min() < spec.low:
        raise InvalidReply(f"array {name!r}: value {value.min()} below bound {spec.low}")
    if spec.high is not None and value.size and value.max() > spec.high:
        raise InvalidReply(f"array {name!r}: value {value.max()} above bound {spec.high}")
    return value
