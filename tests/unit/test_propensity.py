"""Upsell propensity: the delayed test-then-train evaluation is river's own, to the last digit.

Evidence:

- on river's Phishing dataset, streamed with a fixed label delay through DelayedLearner and
  ProgressiveValidator, ROC AUC, log loss and accuracy are *equal* (==) to what
  ``river.evaluate.progressive_val_score`` reports for the same model and delay;
- a planted signal is found (AUC well above 0.5), and no signal gives AUC near 0.5;
- expiry, conversion and labels settle each scoring point once, in due order, test before train;
- the cost per event is measured and printed (not asserted): run with ``-s`` to see it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import base, datasets, evaluate, metrics

from models.journey import JourneyState
from models.propensity import (
    DAY_MS,
    DelayedLearner,
    ProgressiveValidator,
    features,
    make_model,
)

# ---------------------------------------------------------------------------------------------
# 1. Equivalence with river's delayed progressive validation


def run_ours(model: base.Classifier, delay: int) -> DelayedLearner:
    """Phishing in order; sample i is scored at time i and its label is revealed at time i + delay.

    river (``stream.simulate_qa`` with an integer delay and no moment) timestamps sample i as
    i and, before asking question i, reveals every answer whose time ``j + delay <= i``, oldest
    first; the answers still due when the data runs out are revealed at the end, in order.
    So at step i: first the label of sample i - delay (metric with the stored prediction, then
    learn from the features as they were), then the prediction of sample i. With delay 0 an
    answer can only be revealed before the *next* question, so 0 behaves as 1 (and both as no
    delay at all). Positives come in through ``label``, negatives through ``expire`` driven by
    the "watermark" i, so both paths are exercised.
    """
    data = list(datasets.Phishing())
    lag = max(delay, 1)
    dl = DelayedLearner(model, validator=ProgressiveValidator())
    for i, (x, _) in enumerate(data):
        j = i - lag
        if j >= 0:
            if data[j][1]:
                assert dl.label(str(j), True)
            else:
                assert dl.expire(now_ms=i) == [str(j)]
        dl.score(str(i), x, now_ms=i, horizon_ms=lag)
    for j in range(max(0, len(data) - lag), len(data)):
        if data[j][1]:
            assert dl.label(str(j), True)
        else:
            assert dl.expire(now_ms=j + lag) == [str(j)]
    assert not dl.pending and dl.examples_learned == len(data)
    return dl


@pytest.mark.parametrize("kind", ["logistic", "tree"])
@pytest.mark.parametrize("delay", [0, 1, 50])
def test_metrics_equal_river_progressive_val_score(kind, delay):
    model = make_model(kind)
    ours = run_ours(model.clone(), delay).validator.report()
    river_auc = evaluate.progressive_val_score(datasets.Phishing(), model.clone(), metrics.ROCAUC(), delay=delay)
    river_log_loss = evaluate.progressive_val_score(datasets.Phishing(), model.clone(), metrics.LogLoss(), delay=delay)
    river_accuracy = evaluate.progressive_val_score(datasets.Phishing(), model.clone(), metrics.Accuracy(), delay=delay)
    # Exactly equal, not approximately: same predictions, same order of metric updates and learning.
    assert ours["roc_auc"] == river_auc.get()
    assert ours["log_loss"] == river_log_loss.get()
    assert ours["accuracy"] == river_accuracy.get()
    # The tree has no classes before its first label: river leaves those predictions out, so do we.
    assert ours["examples"] == river_accuracy.cm.total_weight
    assert ours["examples"] == (1250 if kind == "logistic" else 1250 - max(delay, 1))


class TiedClassifier(base.Classifier):
    """Always 50/50, True listed first: river's predict_one then says True (a 0.5 threshold would not)."""

    def learn_one(self, x, y):
        pass

    def predict_proba_one(self, x):
        return {True: 0.5, False: 0.5}


def test_accuracy_uses_the_models_own_class_on_ties():
    ours = run_ours(TiedClassifier(), 3).validator.report()
    river_accuracy = evaluate.progressive_val_score(datasets.Phishing(), TiedClassifier(), metrics.Accuracy(), delay=3)
    assert ours["accuracy"] == river_accuracy.get()
    assert ours["accuracy"] == sum(y for _, y in datasets.Phishing()) / 1250  # it always said True


def test_recent_metrics_are_rivers_over_the_last_window():
    rng = random.Random(7)
    pairs = [(rng.random() < 0.4, rng.random()) for _ in range(500)]
    v = ProgressiveValidator(window=100)
    for y, p in pairs:
        v.update(y, p)
    auc, log_loss, acc = metrics.ROCAUC(), metrics.LogLoss(), metrics.Accuracy()
    for y, p in pairs[-100:]:
        auc.update(y, p)
        log_loss.update(y, p)
        acc.update(y, p > 0.5)
    recent = v.report()["recent"]
    assert recent["examples"] == 100
    assert recent["roc_auc"] == auc.get()
    assert recent["log_loss"] == log_loss.get()
    assert recent["accuracy"] == acc.get()
    calibration = v.report()["calibration"]
    assert [b["bin"] for b in calibration][:2] == ["0.0-0.1", "0.1-0.2"]
    assert sum(b["n"] for b in calibration) == 500


# ---------------------------------------------------------------------------------------------
# 2. A planted signal is found; no signal is not invented

STAGES = ("awareness", "consideration", "purchase", "loyalty")
TOUCHPOINTS = ("visit", "email_open", "demo", "buy")
CHANNELS = ("email", "social", "search")
HORIZON_MS = 30 * DAY_MS
HOUR_MS = 3_600_000


def customer(rng: random.Random, c: int, t0: int) -> JourneyState:
    orders = rng.randint(0, 5)
    first = t0 - rng.randint(30, 400) * DAY_MS
    last_order = t0 - rng.randint(0, 29) * DAY_MS if orders else None
    return JourneyState(
        f"c{c}",
        rng.choice(STAGES),
        stage_since_ms=t0 - rng.randint(0, 29) * DAY_MS,
        first_seen_ms=first,
        last_seen_ms=t0 - rng.randint(0, 10) * HOUR_MS,
        events=rng.randint(1, 60),
        touchpoints={t: rng.randint(0, 4) for t in TOUCHPOINTS},
        channel=rng.choice(CHANNELS),
        orders=orders,
        gross_cents=orders * rng.randint(1_000, 20_000),
        last_order_ms=last_order,
    )


def simulate(kind: str, *, signal: bool, n: int = 3000, seed: int = 1) -> dict:
    """One new customer an hour, scored once or twice; the upsell depends on ``tp_demo`` alone.

    With the signal, P(upsell) = sigmoid(3 (demos - 2)) (0.25% with no demo, 99.75% with four);
    without it, 0.35 for everyone. An upsell comes at a uniform time in [0, 1.5 H) after the
    first scoring point, so some come after the horizon and count as negatives. Events are
    processed in event time with the watermark at the current event.
    """
    rng = random.Random(seed)
    events: list[tuple[int, int, str, object]] = []  # (time, sequence, kind, payload)
    for c in range(n):
        t0 = c * HOUR_MS
        state = customer(rng, c, t0)
        points = [t0] if rng.random() < 0.5 else [t0, t0 + 10 * DAY_MS]
        for t in points:
            events.append((t, len(events), "score", (state, t)))
        p = 1 / (1 + math.exp(-3 * (state.touchpoints["demo"] - 2))) if signal else 0.35
        if rng.random() < p:
            at = t0 + int(rng.random() * 1.5 * HORIZON_MS)
            events.append((at, len(events), "upsell", (state.customer_id, at)))
    events.sort(key=lambda e: e[:2])
    dl = DelayedLearner(make_model(kind), validator=ProgressiveValidator(window=1000))
    spec = {"stages": STAGES, "touchpoints": TOUCHPOINTS, "channels": CHANNELS}
    for t, _, what, payload in events:
        dl.expire(now_ms=t)
        if what == "score":
            state, at = payload
            dl.score(
                f"{state.customer_id}:{at}", features(state, at, **spec), at, HORIZON_MS, customer=state.customer_id
            )
        else:
            dl.convert(*payload)
    dl.expire(now_ms=events[-1][0] + HORIZON_MS)
    assert not dl.pending
    return dl.validator.report()


@pytest.mark.parametrize("kind", ["logistic", "tree"])
def test_planted_signal_is_found_and_absent_signal_is_not_invented(kind):
    with_signal = simulate(kind, signal=True)["recent"]
    without = simulate(kind, signal=False)["recent"]
    assert with_signal["examples"] == without["examples"] == 1000
    assert with_signal["roc_auc"] > 0.75
    assert abs(without["roc_auc"] - 0.5) < 0.07


# ---------------------------------------------------------------------------------------------
# 3. Expiry, conversion, labels: each scoring point settled once, judged before learning


@dataclass
class Recorder:
    """A stand-in model: fixed probability, remembers what it learned and what the validator had seen."""

    validator: ProgressiveValidator = field(default_factory=ProgressiveValidator)
    learned: list[tuple[str, bool]] = field(default_factory=list)
    judged_before_learning: list[bool] = field(default_factory=list)

    def predict_proba_one(self, x):
        return {False: 0.7, True: 0.3}

    def learn_one(self, x, y):
        self.learned.append((x["key"], y))
        self.judged_before_learning.append(self.validator.examples == len(self.learned))


def learner() -> tuple[DelayedLearner, Recorder]:
    rec = Recorder()
    return DelayedLearner(rec, validator=rec.validator), rec


def test_expired_predictions_get_negative_labels_in_due_order():
    dl, rec = learner()
    for key, scored, horizon in [("a", 0, 300), ("b", 50, 50), ("c", 20, 180), ("d", 10, 190)]:
        dl.score(key, {"key": key}, scored, horizon)
    assert dl.expire(now_ms=99) == []
    assert dl.expire(now_ms=250) == ["b", "c", "d"]  # due 100, 200, 200 (c was scored first)
    assert dl.expire(now_ms=300) == ["a"]
    assert rec.learned == [("b", False), ("c", False), ("d", False), ("a", False)]
    assert all(rec.judged_before_learning)
    assert dl.validator.report()["examples"] == 4


def test_an_upsell_settles_the_customers_earlier_scoring_points_within_the_horizon():
    dl, rec = learner()
    for key, scored in [("c1:0", 0), ("c1:50", 50), ("c2:60", 60), ("c1:150", 150)]:
        dl.score(key, {"key": key}, scored, 100, customer=key.split(":")[0])
    # At 120: c1:0's horizon ended at 100 (a negative, for expiry), c1:150 comes after the upsell.
    assert dl.convert("c1", at_ms=120) == ["c1:50"]
    assert set(dl.pending) == {"c1:0", "c2:60", "c1:150"}
    assert dl.expire(now_ms=120) == ["c1:0"]
    assert dl.convert("c1", at_ms=200) == ["c1:150"]
    assert dl.convert("c3", at_ms=200) == []
    assert rec.learned == [("c1:50", True), ("c1:0", False), ("c1:150", True)]
    assert dl.pending.keys() == {"c2:60"}
    assert dl.pending["c2:60"].model_version == 0 and dl.version == 3


def test_an_example_is_never_learned_twice():
    dl, rec = learner()
    assert dl.score("k", {"key": "k"}, 0, 100, customer="c") == 0.3
    assert dl.score("k", {"key": "changed"}, 5, 100, customer="c") == 0.3  # redelivered: first one kept
    assert dl.label("k", True)
    assert not dl.label("k", False)
    assert dl.convert("c", at_ms=10) == []
    assert dl.expire(now_ms=1_000) == []
    assert rec.learned == [("k", True)] and dl.examples_learned == 1


def test_learning_uses_the_features_as_scored():
    dl, rec = learner()
    x = {"key": "k"}
    dl.score("k", x, 0, 10)
    x["key"] = "mutated later"
    dl.expire(10)
    assert rec.learned == [("k", False)]


operations = st.lists(
    st.one_of(
        st.tuples(st.just("score"), st.integers(0, 5), st.integers(0, 3), st.integers(1, 50)),
        st.tuples(st.just("label"), st.integers(0, 5), st.integers(0, 3), st.booleans()),
        st.tuples(st.just("convert"), st.integers(0, 3), st.integers(0, 100)),
        st.tuples(st.just("expire"), st.integers(0, 100)),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(operations)
def test_every_scoring_point_is_learned_once_after_being_judged(ops):
    dl, rec = learner()
    now = 0
    scored = 0
    for op in ops:
        if op[0] == "score":
            _, k, c, horizon = op
            now += 1
            key = f"c{c}:{k}"
            scored += key not in dl.pending
            dl.score(key, {"key": key}, now, horizon, customer=f"c{c}")
        elif op[0] == "label":
            dl.label(f"c{op[2]}:{op[1]}", op[3])
        elif op[0] == "convert":
            dl.convert(f"c{op[1]}", at_ms=op[2])
        else:
            dl.expire(now_ms=op[1])
    dl.expire(now_ms=10**9)
    # A key may be scored again after it was settled: it is then a new scoring point.
    assert not dl.pending
    assert len(rec.learned) == scored == dl.examples_learned == dl.validator.examples
    assert all(rec.judged_before_learning)
