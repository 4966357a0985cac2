"""Every site reply checked on its own before the coordinator aggregates it.

A modified site can send anything a Flower record can hold: NaN or infinite
parameters, arrays scaled so that the average overflows, arrays of other names
or shapes, a ``num-examples`` of 1e9 (one site then outweighs all others in a
weighted mean) or of -500. Flower's strategies only check that replies agree
with *each other*, and a reply that fails that check fails the whole round.
So each reply is checked alone, against what the coordinator sent and what the
site itself reported at discovery; a reply that fails is refused with its
reason, recorded like any other site failure, and never averaged in. What a
check cannot catch (a plausible but wrong update) is what the robust
strategies (``krum``, ``fedmedian``, ``fedtrimmedavg``, ``bulyan``) are for.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, MetricRecord, RecordDict

from lhs_federated.apps import records
from lhs_federated.learning.site import SiteSummary
from lhs_federated.study import Study

#: Largest absolute value a model parameter (or SCAFFOLD control) may take in a
#: reply. Models train on standardised inputs; a parameter beyond this is a
#: diverged or hostile update, and float32 sums of such values overflow.
MAX_PARAMETER = 1e6


#: Array dtypes a reply may use (the server's aggregate may be float64).
FLOAT_DTYPES = ("float32", "float64")


class ReplyRejectedError(ValueError):
    """A reply that must not be aggregated; the message says why."""


def check_summary(summary: SiteSummary, n_columns: int) -> None:
    """Check a discovery reply: counts that can be true, column sums that can be summed.

    The column sums of every site become the federation's means and scales;
    one site's NaN, negative count or wrong width would spoil every site's
    preprocessing.

    Raises
    ------
    ReplyRejectedError
        If a count is negative, positives exceed rows, or the sums are not
        finite, of ``n_columns`` columns, with counts from 0 to the training
        rows and non-negative sums of squares.
    """
    for rows, positives in (
        (summary.n_train, summary.positives_train),
        (summary.n_test, summary.positives_test),
    ):
        for value in (rows, positives):
            if value is not None and value < 0:
                raise ReplyRejectedError(f"a negative count ({value})")
        if rows is not None and positives is not None and positives > rows:
            raise ReplyRejectedError(f"{positives} positives in {rows} rows")
    sums = summary.sums
    if sums is None:
        return
    parts = (sums.count, sums.total, sums.total_sq)
    if any(part.shape != (n_columns,) for part in parts):
        raise ReplyRejectedError(
            f"column sums of shapes {[list(p.shape) for p in parts]}; the study's model has "
            f"{n_columns} columns"
        )
    if not all(np.isfinite(part).all() for part in parts):
        raise ReplyRejectedError("column sums hold NaN or infinite values")
    most = summary.n_train if summary.n_train is not None else 0
    if (sums.count < 0).any() or (sums.count > most).any() or (sums.total_sq < 0).any():
        raise ReplyRejectedError(
            f"column counts outside 0 to the {most} training rows reported, or a negative "
            "sum of squares"
        )


@dataclass(frozen=True)
class ReplyChecks:
    """What each site's replies may hold in one study.

    Attributes
    ----------
    study : Study
        The study (its privacy mode decides the metric keys).
    train_rows : dict of str to int or None
        Training rows each site reported at discovery (``None``: withheld,
        below the site's minimum cell size).
    test_rows : dict of str to int or None
        Rows each site scores models on, as reported at discovery.
    """

    study: Study
    train_rows: dict[str, int | None]
    test_rows: dict[str, int | None]

    @classmethod
    def from_discovery(cls, study: Study, summaries: Iterable[SiteSummary]) -> ReplyChecks:
        """The checks for the sites that answered discovery."""
        summaries = list(summaries)
        return cls(
            study,
            {s.name: s.n_train for s in summaries},
            {s.name: s.n_test for s in summaries},
        )

    def train(self, site: str, content: RecordDict, sent: ArrayRecord) -> None:
        """Check a training reply's content against the arrays the site was sent.

        Raises
        ------
        ReplyRejectedError
            If the reply does not hold exactly the declared records, arrays of
            the sent names and shapes (float) with finite values within
            :data:`MAX_PARAMETER`, and the declared metrics with a
            ``num-examples`` within the rows the site reported.
        """
        _exact_records(content, records.reply_records("train"))
        _check_arrays(content[records.ARRAYS], expected_reply_arrays(sent))
        metrics = content[records.METRICS]
        _exact_keys(metrics, records.train_metric_keys(self.study), "metrics")
        _check_count(metrics, self.train_rows.get(site), "training")
        loss = _scalar(metrics, records.TRAIN_LOSS)
        if math.isinf(loss):
            raise ReplyRejectedError(f"{records.TRAIN_LOSS} is {loss}")
        if records.DP_EPSILON in metrics:
            epsilon = _scalar(metrics, records.DP_EPSILON)
            if not (math.isfinite(epsilon) and epsilon >= 0):
                raise ReplyRejectedError(f"{records.DP_EPSILON} must be >= 0; got {epsilon}")
        if records.UNIT_WEIGHT in metrics and _scalar(metrics, records.UNIT_WEIGHT) != 1:
            raise ReplyRejectedError(f"{records.UNIT_WEIGHT} must be 1 under client-level DP")
        if records.NORM_BIT in metrics and _scalar(metrics, records.NORM_BIT) not in (0, 1):
            raise ReplyRejectedError(f"{records.NORM_BIT} must be 0 or 1")

    def evaluate(self, site: str, content: RecordDict) -> None:
        """Check an evaluation reply's content: declared metrics, finite or NaN, a true count.

        Raises
        ------
        ReplyRejectedError
            If a record or key is missing or extra, a metric is infinite or not
            a number, or the count is outside the rows the site reported.
        """
        expected = records.reply_records("evaluate")
        if set(content) - set(expected) or records.METRICS not in content:
            raise ReplyRejectedError(
                f"records {sorted(content)}; an evaluation reply holds {sorted(expected)}"
            )
        metrics = content[records.METRICS]
        _exact_keys(metrics, records.evaluate_metric_keys(self.study), "metrics")
        for key in metrics:
            value = _scalar(metrics, key)
            if math.isinf(value):
                raise ReplyRejectedError(f"metric {key!r} is {value}")
        _check_count(metrics, self.test_rows.get(site), "test")
        if _scalar(metrics, "n") != _scalar(metrics, records.NUM_EXAMPLES):
            raise ReplyRejectedError(f"metric 'n' differs from {records.NUM_EXAMPLES}")


def expected_reply_arrays(sent: ArrayRecord) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the arrays a training reply must hold (each a float array).

    The model's arrays come back under their own names; a SCAFFOLD server
    control variate sent as ``scaffold-c:<name>`` comes back as the site's
    control change ``scaffold-delta-c:<name>`` of the same shape.
    """
    expected = {}
    for name, array in sent.items():
        if name.startswith(records.SERVER_CONTROL_PREFIX):
            name = records.CONTROL_DELTA_PREFIX + name.removeprefix(records.SERVER_CONTROL_PREFIX)
        expected[name] = tuple(array.shape)
    return expected


def _exact_records(content: RecordDict, expected: dict[str, type]) -> None:
    if set(content) != set(expected) or any(
        not isinstance(content[name], kind) for name, kind in expected.items()
    ):
        raise ReplyRejectedError(
            f"records {sorted(content)}; a training reply holds exactly {sorted(expected)}"
        )


def _exact_keys(metrics: MetricRecord, expected: frozenset[str], what: str) -> None:
    found = set(metrics)
    if found != expected:
        missing, extra = sorted(expected - found), sorted(found - expected)
        raise ReplyRejectedError(
            f"{what} keys differ from the study's: missing {missing}, extra {extra}"
        )


def _check_arrays(arrays: ArrayRecord, expected: dict[str, tuple[int, ...]]) -> None:
    if list(arrays) != list(expected):
        missing = sorted(set(expected) - set(arrays))
        extra = sorted(set(arrays) - set(expected))
        raise ReplyRejectedError(
            f"arrays differ from the model's: missing {missing}, extra {extra}"
            if missing or extra
            else "arrays are not in the model's order"
        )
    for name, shape in expected.items():
        array = arrays[name]
        if tuple(array.shape) != shape or array.dtype not in FLOAT_DTYPES:
            raise ReplyRejectedError(
                f"array {name!r} is {array.dtype}{list(array.shape)}; the model's is a "
                f"float32 or float64 array of shape {list(shape)}"
            )
        values = records.array_to_numpy(array)
        if not np.isfinite(values).all():
            raise ReplyRejectedError(f"array {name!r} holds NaN or infinite values")
        largest = float(np.abs(values).max(initial=0.0))
        if largest > MAX_PARAMETER:
            raise ReplyRejectedError(
                f"array {name!r} holds {largest:.3g}; parameters are bounded by {MAX_PARAMETER:g}"
            )


def _check_count(metrics: MetricRecord, reported: int | None, rows: str) -> None:
    count = _scalar(metrics, records.NUM_EXAMPLES)
    if reported is None:
        raise ReplyRejectedError(
            f"the site withheld its {rows} row count at discovery (below its minimum cell "
            "size), so it has no rows to report on"
        )
    if not (math.isfinite(count) and count == int(count) and 1 <= count <= reported):
        raise ReplyRejectedError(
            f"{records.NUM_EXAMPLES} = {count:g}; the site reported {reported} {rows} rows at "
            f"discovery (accepted: 1 to {reported})"
        )


def _scalar(metrics: MetricRecord, key: str) -> float:
    value = metrics[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReplyRejectedError(f"metric {key!r} must be a number; got {type(value).__name__}")
    return float(value)
