"""What one batch does to one partition: the single place where the domain rules meet.

The worker loads the state of the customers a batch touches (and of those whose deadline
the batch's watermark will pass), then :func:`process` applies the batch **in record
order** with the rules of ``models/`` and returns its :class:`Effect`: the new customer
states, their next due times, the alerts to publish, the increments to the shared
aggregates, the settled propensity examples and the partition's new clock. The store
commits the effect in one atomic step (``streams/state``). Nothing here does I/O or reads
a clock: the same records give the same effect, whatever the batch boundaries.

Time is the partition's event-time watermark (highest event time seen minus the allowed
lateness). As each record raises it, every deadline it passes fires right then, in order of
due time, so an alert's ``at_ms`` is the first watermark at or past its due time.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import orjson

from models import deadlines, gaps, identity, kpis, propensity, uplift
from models.alerts import AlertFacts, AlertStatus, AlertType, render
from models.clv import ClvModel, OrderSummary
from models.durations import DAY_MS
from models.events import ANONYMOUS_PREFIX, TouchpointEvent, anonymous_profile, encode_event, external_id, is_anonymous
from models.journey import JourneyState, Outcome, PendingPrediction, StateLimits, apply_event, to_cents
from models.journey_map import JourneyMap
from models.value import attribution_increments, customer_value, drop_off_increments, public_channel
from models.watermark import Clock

#: A scorer: features -> (probability of an upsell, predicted class, model version).
Scorer = Callable[[Mapping[str, float]], tuple[float | None, bool | None, int]]


@dataclass(frozen=True, slots=True)
class Rules:
    """The journey map and the settings that shape what a batch does."""

    journey: JourneyMap
    limits: StateLimits = field(default_factory=StateLimits)
    allowed_lateness_ms: int = 600_000
    late_grace_ms: int = 600_000
    attribution_lookback_ms: int = 30 * 86_400_000
    attribution_half_life_ms: int = 7 * 86_400_000
    channels: tuple[str, ...] = ()  # known channels: others count as "other" in aggregates and features
    clv_windows: tuple[int, ...] = (30, 90, 365)
    clv_horizon_days: float = 365.0
    clv_margin: float = 0.3
    clv_discount_rate: float = 0.10
    early_positives: bool = False
    upsell_alert_min_examples: int = 500
    anonymous_ttl_ms: int = 30 * DAY_MS  # an anonymous visitor (or merged marker) not seen this long is forgotten
    max_anonymous_ids: int = 20  # per customer; a link beyond it is refused
    holdout_shares: Mapping[str, float] = field(default_factory=dict)  # alert type -> share held out
    holdout_key: bytes = b"journey-tracker holdout v1"  # keys the holdout hash (change it: new groups)
    uplift_window_ms: int = 14 * DAY_MS  # what an alerted customer does within this long after it is measured

    @property
    def feature_touchpoints(self) -> tuple[str, ...]:
        """The touchpoints counted in the propensity features: all but the upsell itself (its
        count would tell the model the label)."""
        upsell = self.journey.propensity.upsell
        return tuple(tp for tp in self.journey.touchpoints if tp not in upsell)


@dataclass(frozen=True, slots=True)
class Erase:
    """A request to forget a customer, made at ``requested_ms`` (wall clock of the request).

    Their state goes, and an event that happened before the request can never bring them back.
    """

    customer_id: str
    requested_ms: int


@dataclass(frozen=True, slots=True)
class Tick:
    """The partition has been idle: its watermark moves to ``watermark_ms`` (the idle rule)."""

    watermark_ms: int


@dataclass(frozen=True, slots=True)
class Link:
    """In the visitor's partition: ``anonymous_id`` belongs to ``customer_id`` since ``ts_ms``."""

    anonymous_id: str
    customer_id: str
    ts_ms: int


@dataclass(frozen=True, slots=True)
class Merge:
    """In the customer's partition: the visitor's history (None: they had none here) joins the customer."""

    customer_id: str
    anonymous_id: str
    ts_ms: int
    visitor: JourneyState | None


Input = TouchpointEvent | Erase | Tick | Link | Merge

#: Outbox type of the identity messages, which go to the touchpoints topic (not the alerts topic);
#: the status says which: link, merge, erase (control records) or forward (an event).
IDENTITY = "identity"


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A message to publish once the effect is committed: an alert (rendered, without its
    ``emitted_at``), or a tombstone (``body`` None) telling downstream tools to forget a customer."""

    key: str
    body: bytes | None
    type: str
    status: str


@dataclass(slots=True)
class Effect:
    """Everything one batch changes in its partition. Applied by the store in one atomic step."""

    clock: Clock
    consumed: int = 0  # inputs processed (fewer than given when the loaded due set ran out)
    complete: bool = True  # False: the watermark passed customers not loaded; call again (they fire first)
    outcomes: list[Outcome | None] = field(default_factory=list)  # per consumed input; None: a control input
    customers: dict[str, JourneyState | None] = field(default_factory=dict)  # changed; None: deleted
    created: set[str] = field(default_factory=set)  # customers new to the store
    erased: dict[str, int] = field(default_factory=dict)  # customer -> when they were erased
    due: dict[str, int | None] = field(default_factory=dict)  # changed next due times
    outbox: list[OutboxEntry] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)  # increments of the partition's aggregates
    gaps: dict[int, dict[str, int]] = field(default_factory=dict)  # event-time day -> increments
    orders: dict[str, OrderSummary | None] = field(default_factory=dict)  # changed CLV summaries
    examples: list[propensity.Example] = field(default_factory=list)
    predictions: int = 0  # scoring points scored
    applied_event_ms: list[int] = field(default_factory=list)  # event times of the applied events

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n


def next_due(state: JourneyState, rules: Rules) -> int | None:
    """The earliest watermark at which something is due for this customer: an alert deadline
    or the end of a prediction's horizon."""
    a = deadlines.next_deadline(state)
    b = propensity.next_label(state, rules.journey.propensity.horizon_ms)
    if a is None:
        a = b
    elif b is not None:
        a = min(a, b)
    if state.exposures:
        c = uplift.next_settle(state, rules.uplift_window_ms)
        a = c if a is None else min(a, c)  # type: ignore[type-var]
    if state.customer_id.startswith(ANONYMOUS_PREFIX):
        c = forgotten_at(state, rules)
        a = c if a is None else min(a, c)  # type: ignore[type-var]
    return a


def forgotten_at(state: JourneyState, rules: Rules) -> int | None:
    """When an anonymous visitor (or merged marker) is forgotten: a TTL after last seen; never for a customer."""
    if not is_anonymous(state.customer_id):
        return None
    return max(state.last_seen_ms, state.merged_ms or 0) + rules.anonymous_ttl_ms


def funnel_counter(profile: str, stage: str) -> str:
    """The aggregate a profile counts in: ``f|<stage>`` for customers, ``a|<stage>`` for anonymous visitors."""
    return f"{'a' if is_anonymous(profile) else 'f'}|{stage}"


def order_summary(state: JourneyState) -> OrderSummary | None:
    """What the CLV fit needs of a customer (None before their first order)."""
    if not state.orders or state.first_order_ms is None:
        return None
    return OrderSummary(
        state.orders, state.first_order_ms, state.last_order_ms or state.first_order_ms,
        state.gross_cents, state.first_order_cents or 0,
    )


def process(
    inputs: Sequence[Input],
    *,
    rules: Rules,
    clock: Clock,
    customers: Mapping[str, JourneyState | None],
    erased: Mapping[str, int],
    due: Sequence[tuple[int, str]],
    due_complete_until: int,
    scorer: Scorer | None = None,
    clv: ClvModel | None = None,
) -> Effect:
    """Apply a batch of one partition's inputs, in order.

    Parameters
    ----------
    inputs
        Valid events, erasure requests and idle ticks, in record order.
    rules
        The journey map and settings.
    clock
        The partition's clock before the batch (not changed; the effect has the new one).
    customers
        The loaded state of every customer the inputs name and of every customer in ``due``
        (None: not in the store). Changed in place: do not reuse after a failed commit.
    erased
        Customers erased earlier, among those the inputs name: customer -> erasure time.
    due
        ``(next due, customer)`` of every customer due at or before ``due_complete_until``.
    due_complete_until
        ``due`` lists every customer due up to this watermark. When an input moves the
        watermark past it, the loaded customers fire (at that watermark) and the batch stops
        after that input (``Effect.consumed`` says where); the caller commits, loads the next
        customers due, and the next call fires them first, at the same watermark: exactly what
        one call with everything loaded would have done.
    scorer
        The propensity model as it is now; None turns scoring off.
    clv
        The CLV model (a side input: the alerts carry its figures and name its version).
    """
    journey = rules.journey
    spec = journey.propensity
    horizon = spec.horizon_ms
    scoring = set(spec.score_after) if scorer is not None else set()
    upsell = set(spec.upsell)
    effect = Effect(Clock(clock.high_ms, clock.watermark_ms))
    new_clock = effect.clock
    states: dict[str, JourneyState | None] = dict(customers)
    erased_now = dict(erased)
    heap = list(due)
    heapq.heapify(heap)
    # When the due set is not complete up to where an input takes the watermark, the loaded
    # customers fire (at that watermark) and the batch stops: ties beyond them come next time.
    fire_limit = max([due_complete_until, *(d for d, _ in due)])
    # What the store's due index holds for each loaded customer: what was due at their last commit.
    current_due: dict[str, int | None] = {cid: next_due(st, rules) for cid, st in states.items() if st is not None}
    current_due.update({cid: d for d, cid in due})

    def touch(state: JourneyState) -> None:
        """Note a changed customer and re-index their next due time. An anonymous visitor (or marker)
        already past their TTL at this watermark (late history) is forgotten at once: waiting for the
        next watermark move would make the outcome depend on where batches end."""
        cid = state.customer_id
        if cid.startswith(ANONYMOUS_PREFIX) and forgotten_at(state, rules) <= new_clock.watermark_ms:  # type: ignore[operator]
            _forget(state, states, effect, current_due)
            return
        effect.customers[cid] = state
        d = next_due(state, rules)
        if current_due.get(cid) != d:
            current_due[cid] = d
            effect.due[cid] = d
            if d is not None:
                heapq.heappush(heap, (d, cid))

    def alert(facts: AlertFacts, state: JourneyState) -> None:
        value = customer_value(state, clv, as_of_ms=facts.at_ms, windows=rules.clv_windows,
                               horizon_days=rules.clv_horizon_days, margin=rules.clv_margin,
                               annual_discount_rate=rules.clv_discount_rate)
        kind = facts.type.value
        holdout = uplift.held_out(kind, facts.customer_id, rules.holdout_shares.get(kind, 0.0), rules.holdout_key)
        body = orjson.dumps(render(facts, holdout=holdout, extra={"clv": value}))
        effect.outbox.append(OutboxEntry(external_id(facts.customer_id), body, kind, facts.status.value))
        opened = facts.status is AlertStatus.OPEN
        # when the alert happened, in event time: its due time (an upsell: its scoring point)
        at_ms = facts.at_ms if facts.type is AlertType.UPSELL_OPPORTUNITY or not opened else \
            facts.anchor_ms + facts.expected_ms
        measured = opened and not is_anonymous(facts.customer_id)
        if measured and not uplift.expose(state, kind, at_ms, holdout, journey.rank_of(state.stage)):
            effect.count("uplift_unmeasured")
        if facts.type is AlertType.DROP_OFF:
            add_kpis(kpis.churn_increments(facts.customer_id, facts.stage, journey, opened=opened, at_ms=at_ms))
        if facts.type is AlertType.DROP_OFF and opened:
            add_gap(at_ms // 86_400_000, f"d|{facts.stage}", segments(state))
            for name, n in drop_off_increments(facts.stage, state.revenue_cents).items():
                add_value(name, n, state)

    def add_kpis(increments: Sequence[kpis.Increment] | Mapping[tuple[int | None, str], int]) -> None:
        """KPI counters: all-time, and on their event-time day (when they have one)."""
        items = increments.items() if isinstance(increments, Mapping) else (((d, f), n) for d, f, n in increments)
        for (day, name), n in items:
            effect.count(name, n)
            if day is not None:
                counts = effect.gaps.setdefault(day, {})
                counts[name] = counts.get(name, 0) + n

    def add_value(name: str, n: int, state: JourneyState) -> None:
        """A value total, overall and for the customer's acquisition channel and cohort (week first seen)."""
        effect.count(name, n)
        for segment in segments(state):
            effect.count(f"{segment}|{name}", n)

    segment_names: dict[tuple[str | None, int], tuple[str, str]] = {}

    def segments(state: JourneyState) -> tuple[str, str]:
        key = (state.channel, kpis.week_of(state.first_seen_ms))
        names = segment_names.get(key)
        if names is None:
            names = segment_names[key] = gaps.segments(public_channel(key[0], rules.channels), key[1])
        return names

    def settled(examples: list[propensity.Example]) -> None:
        if examples:
            effect.examples += examples
            effect.count("predictions_pending", -len(examples))

    def add_gap(day: int, name: str, segs: tuple[str, str]) -> None:
        """A gap counter, for the customer's acquisition channel and for their cohort (the whole is the
        sum over channels: :func:`models.gaps.whole`)."""
        counts = effect.gaps.setdefault(day, {})
        for segment in segs:
            field_ = f"{segment}|{name}"
            counts[field_] = counts.get(field_, 0) + 1

    def fire_until(watermark: int, limit: int) -> None:
        """Fire everything due at or before ``limit`` at this watermark, in due order (ties by customer)."""
        while heap and heap[0][0] <= limit:
            d, cid = heapq.heappop(heap)
            if current_due.get(cid) != d:
                continue  # a stale entry: the customer's due time moved since
            state = states.get(cid)
            if state is None:  # (erased)
                current_due[cid] = None
                effect.due[cid] = None
                continue
            for facts in deadlines.fire_due(state, journey, watermark):
                alert(facts, state)
            settled(propensity.settle(state, watermark, horizon))
            if state.exposures:
                add_kpis(uplift.settle(state, watermark, rules.uplift_window_ms))
            expiry = forgotten_at(state, rules)
            if expiry is not None and expiry <= watermark:
                _forget(state, states, effect, current_due)
                continue
            touch(state)

    def advance(watermark: int) -> bool:
        """Move the watermark and fire what it passes; False when not everything due was loaded
        (the loaded customers fired; the rest fire, at this same watermark, at the start of the next call)."""
        new_clock.watermark_ms = watermark
        fire_until(watermark, min(watermark, fire_limit))
        effect.complete = watermark <= due_complete_until
        return effect.complete

    # Leftovers: what an earlier call's watermark passed but could not fire (not loaded then).
    if not advance(new_clock.watermark_ms):
        return effect
    for i, item in enumerate(inputs):
        effect.consumed = i + 1
        if isinstance(item, Tick):
            effect.outcomes.append(None)
            if item.watermark_ms > new_clock.watermark_ms and not advance(item.watermark_ms):
                break
            continue
        if isinstance(item, Erase):
            _erase(item, rules, states, effect, current_due, add_kpis)
            erased_now[item.customer_id] = effect.erased[item.customer_id]
            effect.outcomes.append(None)
            continue
        if isinstance(item, Link):
            effect.outcomes.append(None)
            visitor = _link(item, states, erased_now, effect, alert)
            if visitor is not None:
                touch(visitor)
            continue
        if isinstance(item, Merge):
            effect.outcomes.append(None)
            customer = _merge(item, rules, states, effect, add_kpis)
            if customer is not None:
                touch(customer)
            continue

        event = item
        ts = event.ts_ms
        new_wm = ts - rules.allowed_lateness_ms
        raised = ts > new_clock.high_ms and new_wm > new_clock.watermark_ms
        marker = states.get(event.customer_id)
        if marker is not None and marker.merged_into is not None:
            outcome = _forward(event, marker, effect, erased_now)
            if outcome is Outcome.FORWARDED:
                touch(marker)
        else:
            outcome = _apply(event, rules, states, erased_now, effect, alert, add_gap, add_kpis, add_value, segments,
                             watermark_ms=new_wm if raised else new_clock.watermark_ms)
        effect.outcomes.append(outcome)
        if outcome is Outcome.APPLIED:
            state = states[event.customer_id]
            assert state is not None
            if event.links:
                _add_link(state, event, rules, effect)
            if event.touchpoint in upsell:
                propensity.record_upsell(state, ts)
                if rules.early_positives:
                    settled(propensity.settle(state, new_clock.watermark_ms, horizon, upsell_at=ts))
            if event.touchpoint in scoring and scorer is not None:
                _score(event, state, rules, scorer, effect, alert)
            touch(state)
        if ts > new_clock.high_ms:
            new_clock.high_ms = ts
        if raised and not advance(new_wm):
            break
    return effect


def _apply(
    event: TouchpointEvent,
    rules: Rules,
    states: dict[str, JourneyState | None],
    erased: dict[str, int],
    effect: Effect,
    alert: Callable[[AlertFacts, JourneyState], None],
    add_gap: Callable[[int, str, tuple[str, str]], None],
    add_kpis: Callable[[Mapping[tuple[int | None, str], int]], None],
    add_value: Callable[[str, int, JourneyState], None],
    segments: Callable[[JourneyState], tuple[str, str]],
    *,
    watermark_ms: int,
) -> Outcome:
    """One event: journey, funnel, gap counters, value, deadlines. The caller re-indexes the customer."""
    journey = rules.journey
    cid, ts = event.customer_id, event.ts_ms
    gone = erased.get(cid)
    if gone is not None and ts <= gone:
        return Outcome.ERASED
    before = states.get(cid)
    rank_before = journey.rank_of(before.stage) if before is not None else -1
    stage_before = before.stage if before is not None else None
    first_seen_before = before.first_seen_ms if before is not None else None
    standing_before = kpis.standing_inputs(before)
    state, outcome = apply_event(before, event, journey, rules.limits)
    if outcome is not Outcome.APPLIED:
        return outcome
    states[cid] = state
    kpis.mark_active(state, ts, first_seen_before)
    role = journey.value_roles.get(event.touchpoint)
    cents = to_cents(event.value or 0.0) if role is not None else 0
    if state.exposures:
        uplift.observe(state, ts, journey.rank_of(journey.stage_of(event.touchpoint)),
                       -cents if role == "refund" else cents, rules.uplift_window_ms)
    standing_after = kpis.standing_inputs(state)
    if standing_after != standing_before:  # most events change nothing a KPI counts
        add_kpis(kpis.difference(kpis.standing_of(standing_before, rules.channels),
                                 kpis.standing_of(standing_after, rules.channels)))
    survey = journey.surveys.get(event.touchpoint)
    if survey is not None and not is_anonymous(cid):
        score = int((event.properties or {})["score"])
        channel = public_channel(state.channel, rules.channels)
        for name, n in kpis.survey_increments(survey, score, state.stage, channel):
            counts = effect.gaps.setdefault(ts // DAY_MS, {})
            counts[name] = counts.get(name, 0) + n
    effect.applied_event_ms.append(ts)
    if before is None:
        effect.created.add(cid)
    if stage_before != state.stage:
        if stage_before is not None:
            effect.count(funnel_counter(cid, stage_before), -1)
        effect.count(funnel_counter(cid, state.stage))
    increments = gaps.event_increments(state, event.touchpoint, ts, journey, rank_before=rank_before)
    if increments:
        segs = segments(state)
        for day, name in increments:
            add_gap(day, name, segs)
    if role == "order":
        effect.orders[cid] = order_summary(state)
        touches = [t for t in state.path if t[1] not in journey.value_roles and t[1] not in journey.surveys]
        incs = attribution_increments(
            touches, ts, cents, lookback_ms=rules.attribution_lookback_ms,
            half_life_ms=rules.attribution_half_life_ms, stage_of=journey.touchpoints, channels=rules.channels,
        )
        for name, n in incs.items():
            add_value(name, n, state)
    for facts in deadlines.after_event(state, event.touchpoint, ts, journey, watermark_ms=watermark_ms,
                                       late_grace_ms=rules.late_grace_ms):
        alert(facts, state)
    return Outcome.APPLIED


def _score(
    event: TouchpointEvent,
    state: JourneyState,
    rules: Rules,
    scorer: Scorer,
    effect: Effect,
    alert: Callable[[AlertFacts, JourneyState], None],
) -> None:
    """A scoring point: predict, keep the prediction on the customer, maybe raise upsell_opportunity."""
    journey, spec = rules.journey, rules.journey.propensity
    ts = event.ts_ms
    x = propensity.features(state, ts, stages=journey.stages, touchpoints=rules.feature_touchpoints,
                            channels=rules.channels)
    proba, predicted, version = scorer(x)
    prediction = PendingPrediction(ts, event.touchpoint, proba, predicted, version, x)
    if not propensity.add_prediction(state, prediction):
        return
    effect.predictions += 1
    effect.count("predictions_pending")
    if propensity.raises_upsell_alert(state, prediction, threshold=spec.alert_threshold, horizon_ms=spec.horizon_ms,
                                      min_examples=rules.upsell_alert_min_examples):
        alert(AlertFacts(AlertType.UPSELL_OPPORTUNITY, AlertStatus.OPEN, state.customer_id, state.stage,
                         event.touchpoint, ts, spec.horizon_ms, ts, spec.upsell[0] if spec.upsell else None,
                         "medium", proba, version), state)


def _erase(item: Erase, rules: Rules, states: dict[str, JourneyState | None], effect: Effect,
           current_due: dict[str, int | None],
           add_kpis: Callable[[Mapping[tuple[int | None, str], int]], None]) -> None:
    cid = item.customer_id
    state = states.get(cid)
    if state is not None:
        # out of the KPIs: their standing, and a churn still open (closed ones are history: counts only)
        add_kpis(kpis.difference(kpis.standing(state, rules.channels), []))
        if state.drop_open is not None:
            a = state.drop_open
            add_kpis({(d, f): -n for d, f, n in kpis.churn_increments(cid, a.stage, rules.journey, opened=True,
                                                                       at_ms=a.anchor_ms + a.expected_ms)})
        if state.merged_into is None:
            effect.count(funnel_counter(cid, state.stage), -1)
        if state.predictions:
            effect.count("predictions_pending", -len(state.predictions))
        # Their anonymous ids go too: each visitor's partition forgets the marker pointing here.
        for anonymous_id in state.anonymous_ids:
            body = orjson.dumps({"customer_id": anonymous_profile(anonymous_id), "requested_ms": item.requested_ms})
            effect.outbox.append(OutboxEntry(anonymous_id, body, IDENTITY, "erase"))
    states[cid] = None
    effect.customers[cid] = None
    effect.created.discard(cid)
    effect.erased[cid] = max(item.requested_ms, effect.erased.get(cid, item.requested_ms))
    effect.orders[cid] = None
    if current_due.get(cid) is not None or state is not None:
        current_due[cid] = None
        effect.due[cid] = None
    # Alerts about them that are still waiting are published before this, then forgotten downstream.
    effect.outbox.append(OutboxEntry(external_id(cid), None, "tombstone", "erased"))


def _forget(state: JourneyState, states: dict[str, JourneyState | None], effect: Effect,
            current_due: dict[str, int | None]) -> None:
    """An anonymous visitor (or marker) past their TTL: gone, as if never seen (no erasure record)."""
    cid = state.customer_id
    if state.merged_into is None:
        effect.count(funnel_counter(cid, state.stage), -1)
        effect.count("anonymous_forgotten")  # visitors only: a marker can be made again by a republished link
        if state.orders:
            effect.orders[cid] = None
    if state.predictions:
        effect.count("predictions_pending", -len(state.predictions))
    states[cid] = None
    effect.customers[cid] = None
    effect.created.discard(cid)
    current_due[cid] = None
    effect.due[cid] = None


def _add_link(state: JourneyState, event: TouchpointEvent, rules: Rules, effect: Effect) -> None:
    """A linking event applied to its customer: ask the visitor's partition to merge (once per id)."""
    anonymous_id = event.anonymous_id
    assert anonymous_id is not None
    if anonymous_id in state.anonymous_ids:
        return
    if len(state.anonymous_ids) >= rules.max_anonymous_ids:
        effect.count("identity_links_refused")
        return
    state.anonymous_ids[anonymous_id] = False
    effect.outbox.append(OutboxEntry(anonymous_id, identity.link_message(anonymous_id, state.customer_id, event.ts_ms),
                                     IDENTITY, identity.LINK))


def _link(item: Link, states: dict[str, JourneyState | None], erased: Mapping[str, int], effect: Effect,
          alert: Callable[[AlertFacts, JourneyState], None]) -> JourneyState | None:
    """In the visitor's partition: turn the visitor into a marker and send their history on."""
    profile = anonymous_profile(item.anonymous_id)
    gone = erased.get(profile)
    if gone is not None and item.ts_ms <= gone:
        return None
    state = states.get(profile)
    if state is not None and state.merged_into is not None:
        # Already merged: the history went with the first link. The linking customer still gets an
        # answer (no history), so their link is settled, not pending forever; a copy changes nothing.
        effect.outbox.append(OutboxEntry(item.customer_id,
                                         identity.merge_message(item.customer_id, item.anonymous_id, item.ts_ms, None),
                                         IDENTITY, identity.MERGE))
        if not identity.moves_link(state, item.customer_id, item.ts_ms):
            return None  # a copy of a link already made, or an older one: the latest link stands
        state.merged_into, state.merged_ms = item.customer_id, item.ts_ms  # the device changed hands
    else:
        if state is not None:  # an active visitor: their open alerts and deadlines end here
            for facts in deadlines.resolve_open(state, item.ts_ms):
                alert(facts, state)
            effect.count(funnel_counter(profile, state.stage), -1)
            if state.predictions:
                effect.count("predictions_pending", -len(state.predictions))
            if state.orders:
                effect.orders[profile] = None
        else:
            effect.created.add(profile)
        body = identity.merge_message(item.customer_id, item.anonymous_id, item.ts_ms, state)
        effect.outbox.append(OutboxEntry(item.customer_id, body, IDENTITY, identity.MERGE))
        state = identity.marker(profile, item.customer_id, item.ts_ms)
    states[profile] = state
    effect.customers[profile] = state
    return state


def _merge(item: Merge, rules: Rules, states: dict[str, JourneyState | None], effect: Effect,
           add_kpis: Callable[[Mapping[tuple[int | None, str], int]], None]) -> JourneyState | None:
    """In the customer's partition: fold the visitor's history in, once."""
    customer = states.get(item.customer_id)
    if customer is None or customer.anonymous_ids.get(item.anonymous_id, True):
        return None  # erased since, or already merged (a second copy of the message)
    customer.anonymous_ids[item.anonymous_id] = True
    effect.count("identity_merged")
    if item.visitor is not None:
        stage_before = customer.stage
        standing_before = kpis.standing(customer, rules.channels)
        first_seen_before = customer.first_seen_ms
        identity.fold(customer, item.visitor, rules.journey, rules.limits)
        kpis.merge_activity(customer, item.visitor, first_seen_before)
        add_kpis(kpis.difference(standing_before, kpis.standing(customer, rules.channels)))
        if customer.stage != stage_before:
            effect.count(funnel_counter(item.customer_id, stage_before), -1)
            effect.count(funnel_counter(item.customer_id, customer.stage))
        if item.visitor.orders:
            effect.orders[item.customer_id] = order_summary(customer)
    effect.customers[item.customer_id] = customer
    return customer


def _forward(event: TouchpointEvent, marker: JourneyState, effect: Effect, erased: Mapping[str, int]) -> Outcome:
    """An anonymous event of a merged visitor: sent on to their customer as an event with both ids."""
    gone = erased.get(event.customer_id)
    if gone is not None and event.ts_ms <= gone:
        return Outcome.ERASED
    assert marker.merged_into is not None
    effect.outbox.append(OutboxEntry(marker.merged_into, encode_event(event, customer_id=marker.merged_into),
                                     IDENTITY, "forward"))
    marker.last_seen_ms = max(marker.last_seen_ms, event.ts_ms)
    effect.customers[marker.customer_id] = marker
    return Outcome.FORWARDED


