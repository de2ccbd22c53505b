"""Upsell propensity, learned online from late labels and evaluated before it learns.

At a *scoring point* (after a purchase, after onboarding, ...) the worker asks the model how
likely the customer is to take an upsell within a horizon ``H``. The answer is only known
later: positive when the upsell happens within ``H`` of the scoring point, negative once the
event-time watermark passes the end of the horizon. Only then may the model learn from the
example, and it must be *scored first*: every stored prediction is compared with its label
before the model learns from it (progressive validation with delayed labels, "test then
train"). Otherwise the reported quality would include examples the model had already seen.

:class:`DelayedLearner` does exactly what river's ``evaluate.progressive_val_score`` does
with a ``delay``: predictions are made on the features as they were at scoring time, and when
a label arrives the metric is updated with the stored prediction and the model then learns
from the stored features. A test checks that both give bit-identical metrics.

Everything is driven by event time passed in (``now_ms``, the watermark); there is no wall
clock here, so a replay gives the same scores, labels and metrics.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from river import base, linear_model, metrics, optim, preprocessing, tree

from models.durations import DAY_MS
from models.journey import JourneyState, PendingPrediction

MODEL_KINDS = ("logistic", "tree")


def features(
    state: JourneyState,
    now_ms: int,
    *,
    stages: Sequence[str],
    touchpoints: Sequence[str] = (),
    channels: Sequence[str] = (),
) -> dict[str, float]:
    """Numeric features of a customer at a scoring point.

    Parameters
    ----------
    state
        The customer's journey state as it is at the scoring point.
    now_ms
        The scoring point (event time). Durations are measured up to it, never negative.
    stages
        The journey's stages in order (``JourneyMap.stages``): ``stage_rank`` is the index of
        the customer's stage (-1 if not listed) and ``stage_<name>`` is 1.0 for it, 0.0 for the
        others.
    touchpoints
        The touchpoints counted as ``tp_<name>`` (0.0 for those never done). Others are left out.
    channels
        The acquisition channels one-hot encoded as ``channel_<name>``.

    Returns
    -------
    dict[str, float]
        Always the same keys for the same lists. This matters: river's ``StandardScaler``
        keeps a mean and variance per key over the samples *that have the key*, so a one-hot
        key present only when it is 1 would have variance 0 and be scaled to 0 forever.

    Examples
    --------
    >>> st = JourneyState("c1", "purchase", stage_since_ms=0, first_seen_ms=0, last_seen_ms=DAY_MS,
    ...                   events=3, touchpoints={"visit": 2, "buy": 1}, channel="email",
    ...                   orders=2, gross_cents=5_000, refunded_cents=1_000, last_order_ms=DAY_MS)
    >>> x = features(st, 3 * DAY_MS, stages=("awareness", "purchase"), touchpoints=("visit", "demo"),
    ...              channels=("email", "social"))
    >>> x["recency_days"], x["order_recency_days"], x["tenure_days"], x["stage_days"]
    (2.0, 2.0, 3.0, 3.0)
    >>> x["orders"], x["revenue"], x["aov"], x["events"]
    (2.0, 40.0, 20.0, 3.0)
    >>> x["stage_rank"], x["stage_awareness"], x["stage_purchase"]
    (1.0, 0.0, 1.0)
    >>> x["tp_visit"], x["tp_demo"], x["channel_email"], x["channel_social"]
    (2.0, 0.0, 1.0, 0.0)
    """
    revenue = state.revenue_cents / 100
    orders = state.orders
    stage = state.stage
    # Never ordered: the time without an order is the customer's whole tenure.
    last_order = state.last_order_ms if state.last_order_ms is not None else state.first_seen_ms
    x = {
        "recency_days": max(0, now_ms - state.last_seen_ms) / DAY_MS,
        "order_recency_days": max(0, now_ms - last_order) / DAY_MS,
        "tenure_days": max(0, now_ms - state.first_seen_ms) / DAY_MS,
        "stage_days": max(0, now_ms - state.stage_since_ms) / DAY_MS,
        "events": float(state.events),
        "orders": float(orders),
        "revenue": revenue,
        "aov": revenue / orders if orders else 0.0,
        "stage_rank": float(stages.index(stage)) if stage in stages else -1.0,
    }
    x.update({f"stage_{s}": 1.0 if s == stage else 0.0 for s in stages})
    counts = state.touchpoints
    x.update({f"tp_{t}": float(counts.get(t, 0)) for t in touchpoints})
    x.update({f"channel_{c}": 1.0 if c == state.channel else 0.0 for c in channels})
    return x


def make_model(kind: str = "logistic", *, seed: int = 42) -> base.Classifier:
    """A fresh binary classifier for the propensity.

    Parameters
    ----------
    kind
        ``"logistic"``: standard scaling then logistic regression trained by SGD with river's
        default learning rate 0.01 (on the simulator's stream with labels at the end of a
        14-day horizon, 0.05 converged no faster and was over-confident: recent ROC AUC 0.635
        vs 0.659, log loss 0.371 vs 0.334). ``"tree"``: a Hoeffding adaptive tree, which
        needs no scaling, handles interactions and adapts to drift, but only starts
        splitting after ``grace_period`` (200) examples.
    seed
        Seed of the tree's randomness (the logistic model has none).

    Examples
    --------
    >>> list(make_model("logistic").steps)
    ['StandardScaler', 'LogisticRegression']
    >>> make_model("tree").seed
    42
    >>> make_model("forest")
    Traceback (most recent call last):
    ...
    ValueError: unknown model kind 'forest'; choose one of: logistic, tree
    """
    if kind == "logistic":
        return preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.01))
    if kind == "tree":
        return tree.HoeffdingAdaptiveTreeClassifier(seed=seed)
    raise ValueError(f"unknown model kind {kind!r}; choose one of: {', '.join(MODEL_KINDS)}")


@dataclass(frozen=True, slots=True)
class Pending:
    """A prediction made at a scoring point, waiting for its label.

    ``proba`` is the predicted probability of an upsell and ``predicted`` the class the model
    would predict (its most probable class, as river's ``predict_one``); both are None when
    the model had no classes yet (river then leaves the prediction out of its metrics, and so
    do we). ``features`` are kept as they were, because the model must learn from what it saw
    when it predicted, not from the customer's later state.
    """

    key: str
    customer: str
    features: Mapping[str, Any]
    proba: float | None
    predicted: bool | None
    scored_ms: int
    due_ms: int
    model_version: int


class ProgressiveValidator:
    """Metrics of predictions scored against their labels when the labels arrive, before learning.

    Since-start and recent-window ROC AUC, log loss and accuracy are river's own metrics
    (``metrics.ROCAUC``, ``LogLoss``, ``Accuracy``), so the numbers are comparable with
    river's evaluations. The recent ones are computed when reported, by feeding the last
    ``window`` predictions to fresh metrics: the same numbers as ``utils.Rolling`` would give
    (without the float drift of reverting a running mean), at under a third of the cost per
    update (about 6.5 µs instead of 22): updates happen on every label, reports are rare.
    Calibration is kept since start in ``bins`` equal-width bins of predicted probability.

    Parameters
    ----------
    window
        How many of the most recent labelled predictions the ``recent`` metrics cover.
    bins
        Number of calibration bins over [0, 1].

    Examples
    --------
    >>> v = ProgressiveValidator(window=2, bins=2)
    >>> for y, p in [(True, 0.9), (False, 0.2), (True, 0.4), (False, 0.7)]:
    ...     v.update(y, p)
    >>> r = v.report()
    >>> r["examples"], r["accuracy"], round(r["log_loss"], 4)
    (4, 0.5, 0.6122)
    >>> r["calibration"]
    [{'bin': '0.0-0.5', 'n': 2, 'mean_predicted': 0.3, 'observed_rate': 0.5},
     {'bin': '0.5-1.0', 'n': 2, 'mean_predicted': 0.8, 'observed_rate': 0.5}]
    >>> r["recent"]["examples"], r["recent"]["accuracy"]
    (2, 0.0)
    """

    def __init__(self, *, window: int = 1000, bins: int = 10) -> None:
        if window < 1 or bins < 1:
            raise ValueError("window and bins must be at least 1")
        self.window = window
        self.bins = bins
        self.examples = 0
        self._auc = metrics.ROCAUC()
        self._log_loss = metrics.LogLoss()
        self._accuracy = metrics.Accuracy()
        self._recent: deque[tuple[bool, float, bool]] = deque(maxlen=window)
        self._bin_n = [0] * bins
        self._bin_proba = [0.0] * bins
        self._bin_positive = [0] * bins

    def update(self, y_true: bool, proba: float, predicted: bool | None = None) -> None:
        """Account for one prediction and its label.

        ``predicted`` is the class the model predicted; by default ``proba > 0.5`` (a tie
        predicts False, as river's logistic regression does).
        """
        if predicted is None:
            predicted = proba > 0.5
        self.examples += 1
        self._auc.update(y_true, proba)
        self._log_loss.update(y_true, proba)
        self._accuracy.update(y_true, predicted)
        self._recent.append((y_true, proba, predicted))
        i = min(max(int(proba * self.bins), 0), self.bins - 1)
        self._bin_n[i] += 1
        self._bin_proba[i] += proba
        self._bin_positive[i] += bool(y_true)

    def report(self) -> dict[str, Any]:
        """The metrics so far; None where nothing has been labelled yet."""
        n = self.examples
        recent = len(self._recent)
        auc, log_loss, accuracy = metrics.ROCAUC(), metrics.LogLoss(), metrics.Accuracy()
        for y_true, proba, predicted in self._recent:
            auc.update(y_true, proba)
            log_loss.update(y_true, proba)
            accuracy.update(y_true, predicted)
        return {
            "examples": n,
            # float(): river's ROCAUC is a numpy float; the value is the same, the report stays plain
            "roc_auc": float(self._auc.get()) if n else None,
            "log_loss": self._log_loss.get() if n else None,
            "accuracy": self._accuracy.get() if n else None,
            "calibration": [
                {
                    "bin": self._bin_label(i),
                    "n": self._bin_n[i],
                    "mean_predicted": self._bin_proba[i] / self._bin_n[i] if self._bin_n[i] else None,
                    "observed_rate": self._bin_positive[i] / self._bin_n[i] if self._bin_n[i] else None,
                }
                for i in range(self.bins)
            ],
            "recent": {
                "examples": recent,
                "roc_auc": float(auc.get()) if recent else None,
                "log_loss": log_loss.get() if recent else None,
                "accuracy": accuracy.get() if recent else None,
            },
        }

    def _bin_label(self, i: int) -> str:
        # As few decimals as show the bin edges exactly (10 bins: "0.3-0.4", 20 bins: "0.35-0.40").
        digits = 1 if 10 % self.bins == 0 else 2 if 100 % self.bins == 0 else 3
        return f"{i / self.bins:.{digits}f}-{(i + 1) / self.bins:.{digits}f}"


def test_then_train(
    model: base.Classifier,
    validator: ProgressiveValidator,
    x: Mapping[str, Any],
    y: bool,
    proba: float | None,
    predicted: bool | None,
) -> None:
    """Settle one example: judge the prediction made at scoring time, *then* let the model learn.

    ``proba`` and ``predicted`` are what the model said when the customer was scored (None when
    it had no classes yet: such a prediction is not evaluated, as in river). The worker's learner
    and :class:`DelayedLearner` both settle examples through this one function.
    """
    if proba is not None:
        validator.update(y, proba, predicted)
    model.learn_one(x, y)


def predict(model: base.Classifier, x: Mapping[str, Any]) -> tuple[float | None, bool | None]:
    """The model's probability of an upsell and its predicted class, as river's ``predict_proba_one``
    and ``predict_one`` give them; ``(None, None)`` when it has no classes yet."""
    proba = model.predict_proba_one(x)
    if not proba:
        return None, None
    # river's predict_one: the most probable class, the first one listed on a tie
    return proba.get(True, 0.0), bool(max(proba, key=proba.get))


class DelayedLearner:
    """Holds the model, pending predictions and the validator: score now, label later, then test-then-train.

    A scoring point is identified by a key (e.g. ``f"{customer_id}:{scored_ms}"``) and belongs
    to a customer. It is settled exactly once, by whichever comes first:

    - :meth:`label` with the key (any label);
    - :meth:`convert`: the customer took the upsell at ``at_ms``, which is a positive label
      for each of their scoring points whose horizon contains it
      (``scored_ms <= at_ms < due_ms``);
    - :meth:`expire`: the watermark reached ``due_ms`` without an upsell, a negative label.

    Settling updates the validator with the stored prediction, *then* lets the model learn
    from the stored features. A key scored again while pending keeps its first prediction
    (a redelivered scoring event changes nothing); once settled, it is forgotten.

    Parameters
    ----------
    model
        A river binary classifier (see :func:`make_model`).
    validator
        Where the predictions are evaluated; a new :class:`ProgressiveValidator` by default.
    version
        The model's version when handed over: how many examples it has already learned (e.g.
        when restored from a snapshot). Each example learned adds one.

    Examples
    --------
    >>> dl = DelayedLearner(make_model())
    >>> dl.score("c1:0", {"orders": 1.0}, now_ms=0, horizon_ms=100, customer="c1")
    0.5
    >>> dl.score("c2:10", {"orders": 0.0}, now_ms=10, horizon_ms=100, customer="c2")
    0.5
    >>> dl.convert("c1", at_ms=50)           # c1 took the upsell within its horizon
    ['c1:0']
    >>> dl.expire(now_ms=109), dl.expire(now_ms=110)   # c2's horizon ends at 110
    ([], ['c2:10'])
    >>> dl.examples_learned, dl.version, dict(dl.pending), dl.validator.report()["examples"]
    (2, 2, {}, 2)
    """

    def __init__(self, model: base.Classifier, *, validator: ProgressiveValidator | None = None, version: int = 0):
        self.model = model
        self.validator = validator if validator is not None else ProgressiveValidator()
        self._version = version
        self._learned = 0
        self._pending: dict[str, Pending] = {}
        self._by_customer: dict[str, dict[str, None]] = {}  # customer -> their pending keys, in scoring order
        # Heap of (due_ms, scoring sequence, key, pending). Entries of points settled early stay
        # until their due time (lazy deletion), so it holds at most the points scored within a horizon.
        self._due: list[tuple[int, int, str, Pending]] = []
        self._seq = 0

    @property
    def pending(self) -> Mapping[str, Pending]:
        """Predictions waiting for their label, by key (read-only)."""
        return MappingProxyType(self._pending)

    @property
    def examples_learned(self) -> int:
        """How many examples this learner has taught the model."""
        return self._learned

    @property
    def version(self) -> int:
        """The model's version: the version it was handed over with plus the examples learned since."""
        return self._version

    def score(
        self, key: str, x: Mapping[str, Any], now_ms: int, horizon_ms: int, *, customer: str | None = None
    ) -> float:
        """Predict the probability of an upsell within ``horizon_ms`` of ``now_ms``, and remember it.

        Returns 0.5 when the model has no classes yet (nothing learned, for models such as
        trees whose probabilities are empty then); that prediction is not evaluated, as in
        river. ``customer`` defaults to the key itself.
        """
        held = self._pending.get(key)
        if held is not None:
            return 0.5 if held.proba is None else held.proba
        p, predicted = predict(self.model, x)
        customer = key if customer is None else customer
        pending = Pending(key, customer, dict(x), p, predicted, now_ms, now_ms + horizon_ms, self._version)
        self._pending[key] = pending
        self._by_customer.setdefault(customer, {})[key] = None
        heapq.heappush(self._due, (pending.due_ms, self._seq, key, pending))
        self._seq += 1
        return 0.5 if p is None else p

    def label(self, key: str, y: bool) -> bool:
        """Settle one scoring point with its label; False if it is not pending (unknown or settled)."""
        pending = self._pending.get(key)
        if pending is None:
            return False
        self._settle(pending, y)
        return True

    def convert(self, customer: str, at_ms: int) -> list[str]:
        """The customer took the upsell at ``at_ms``: settle, positive, each of their pending
        scoring points whose horizon contains it, in due order. Returns their keys.

        Scoring points after ``at_ms`` stay pending (they are about a later upsell); those whose
        horizon ended before it are left for :meth:`expire`.
        """
        keys = self._by_customer.get(customer, {})
        hits = [p for p in map(self._pending.__getitem__, keys) if p.scored_ms <= at_ms < p.due_ms]
        hits.sort(key=lambda p: p.due_ms)  # stable: ties stay in scoring order
        for p in hits:
            self._settle(p, True)
        return [p.key for p in hits]

    def expire(self, now_ms: int) -> list[str]:
        """Settle, negative, every pending scoring point with ``due_ms <= now_ms`` (the
        event-time watermark), in due order (ties in scoring order). Returns their keys."""
        out = []
        due = self._due
        while due and due[0][0] <= now_ms:
            _, _, key, pending = heapq.heappop(due)
            # Not this very prediction any more: settled earlier (perhaps the key was scored again since).
            if self._pending.get(key) is pending:
                self._settle(pending, False)
                out.append(key)
        return out

    def _settle(self, pending: Pending, y: bool) -> None:
        del self._pending[pending.key]
        keys = self._by_customer[pending.customer]
        del keys[pending.key]
        if not keys:
            del self._by_customer[pending.customer]
        test_then_train(self.model, self.validator, pending.features, y, pending.proba, pending.predicted)
        self._learned += 1
        self._version += 1


# ---- The stream's rules: predictions kept on the customer, labels, the upsell alert ----

UPSELLS_KEPT = 10


@dataclass(frozen=True, slots=True)
class Example:
    """A settled prediction: its label and what the model said, ready for test-then-train.

    ``label_ms`` is when (event time) the label became known: the end of the horizon, or the
    upsell itself when positives are handed over early. ``settled_ms`` is the partition's
    watermark when it was settled: the learner learns examples in ``(settled_ms, partition,
    order within the partition)`` order, which depends on the records only. No customer id is kept.
    """

    settled_ms: int
    label_ms: int
    scored_ms: int
    y: bool
    proba: float | None
    predicted: bool | None
    model_version: int
    features: Mapping[str, float]


def add_prediction(state: JourneyState, prediction: PendingPrediction) -> bool:
    """Keep a prediction on the customer until its label is known, and make it their latest score.

    Returns False (and keeps nothing) if one was already made at that scoring point.
    """
    if any(p.scored_ms == prediction.scored_ms for p in state.predictions):
        return False
    state.predictions.append(prediction)
    state.predictions.sort(key=lambda p: p.scored_ms)
    if state.score is None or prediction.scored_ms >= state.score[1]:
        state.score = (prediction.proba, prediction.scored_ms, prediction.model_version)
    return True


def raises_upsell_alert(
    state: JourneyState, prediction: PendingPrediction, *, threshold: float, horizon_ms: int, min_examples: int
) -> bool:
    """The ``upsell_opportunity`` rule: a score at or above ``threshold``, from a model that has
    learned at least ``min_examples`` examples (an untrained model's 0.5 would alert on
    everyone), at most once per customer per horizon. Marks the alert on the customer.

    Examples
    --------
    >>> st = JourneyState("c1", "purchase", 0, 0, 0)
    >>> p = PendingPrediction(1000, "purchase", 0.8, True, 600, {})
    >>> raises_upsell_alert(st, p, threshold=0.3, horizon_ms=100, min_examples=500)
    True
    >>> raises_upsell_alert(st, PendingPrediction(1050, "purchase", 0.9, True, 601, {}),
    ...                     threshold=0.3, horizon_ms=100, min_examples=500)   # within the horizon
    False
    """
    if prediction.proba is None or prediction.proba < threshold or prediction.model_version < min_examples:
        return False
    last = state.upsell_alert_ms
    if last is not None and abs(prediction.scored_ms - last) < horizon_ms:
        return False
    state.upsell_alert_ms = prediction.scored_ms
    return True


def record_upsell(state: JourneyState, ts_ms: int) -> None:
    """Remember an upsell's time (the newest ``UPSELLS_KEPT``): labels are decided from them."""
    bisect.insort(state.upsells, ts_ms)
    del state.upsells[:-UPSELLS_KEPT]


def took_upsell(upsells: Sequence[int], scored_ms: int, horizon_ms: int) -> bool:
    """Whether an upsell happened in ``[scored_ms, scored_ms + horizon_ms)``."""
    i = bisect.bisect_left(upsells, scored_ms)
    return i < len(upsells) and upsells[i] < scored_ms + horizon_ms


def next_label(state: JourneyState, horizon_ms: int) -> int | None:
    """The earliest watermark at which one of the customer's predictions is settled negative or
    positive at the end of its horizon (None: nothing pending)."""
    return state.predictions[0].scored_ms + horizon_ms if state.predictions else None


def settle(
    state: JourneyState, watermark_ms: int, horizon_ms: int, *, upsell_at: int | None = None
) -> list[Example]:
    """Settle the customer's predictions whose label is known (in place), in scoring order.

    Every prediction whose horizon the watermark has reached is settled: positive if an upsell
    happened within it, else negative. With ``upsell_at`` (positives handed over as soon as
    they happen), the predictions whose horizon contains that upsell are settled positive now.

    Examples
    --------
    >>> st = JourneyState("c1", "retention", 0, 0, 0)
    >>> _ = add_prediction(st, PendingPrediction(0, "purchase", 0.2, False, 7, {"x": 1.0}))
    >>> _ = add_prediction(st, PendingPrediction(50, "purchase", 0.6, True, 8, {"x": 2.0}))
    >>> record_upsell(st, 120)
    >>> [(e.scored_ms, e.y, e.label_ms) for e in settle(st, watermark_ms=100, horizon_ms=100)]
    [(0, False, 100)]
    >>> [(e.scored_ms, e.y, e.label_ms) for e in settle(st, watermark_ms=100, horizon_ms=100, upsell_at=120)]
    [(50, True, 120)]
    """
    out: list[Example] = []
    kept: list[PendingPrediction] = []
    for p in state.predictions:
        due = p.scored_ms + horizon_ms
        if due <= watermark_ms:
            label_ms, y = due, took_upsell(state.upsells, p.scored_ms, horizon_ms)
        elif upsell_at is not None and p.scored_ms <= upsell_at < due:
            label_ms, y = upsell_at, True
        else:
            kept.append(p)
            continue
        out.append(Example(watermark_ms, label_ms, p.scored_ms, y, p.proba, p.predicted, p.model_version, p.features))
    state.predictions = kept
    return out
