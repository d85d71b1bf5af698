"""Online churn risk: features from the customer state, a River model, and delayed labels.

* :func:`churn_features` turns a :class:`~processors.customer.CustomerState` into a flat feature
  dict as of an event time (never the wall clock: a replay scores exactly the same).
* :class:`ChurnModel` is a River pipeline that learns from those dicts, one label at a time.
* :class:`ChurnLabeler` provides the labels: it keeps a feature snapshot when a customer is scored and,
  in event time, turns it into a positive example if the customer churns within the horizon, or a
  negative one once the horizon has passed without churn.

Identifiers and personal data (customer id, names, e-mail, phone) are never features:
:func:`is_identifier` drops them from CRM attributes and from labeled files alike.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import math
import re
from typing import Mapping

from river import base, compose, linear_model, optim

from processors.customer import CustomerState
from schemas.contract import CHANNELS, DAY_MS, HOUR_MS
from processors.snapshot import Snapshot

MODEL_NAME = "churn-v1"
DEFAULT_HORIZON_MS = 30 * DAY_MS

Features = dict[str, float | str]

# ---------------------------------------------------------------------------------------------------
# Identifiers and attribute values
# ---------------------------------------------------------------------------------------------------

_ID_WORDS = frozenset({"id", "ids", "uuid", "guid"})
_ID_NAMES = frozenset({"rownumber", "rowid", "rowindex", "row", "index", "idx"})
_PERSONAL_WORDS = frozenset(
    {"name", "surname", "firstname", "lastname", "fullname", "username", "email", "mail",
     "phone", "telephone", "mobile", "msisdn", "ssn", "passport", "iban", "address", "ip"}
)
_PERSONAL_PARTS = ("surname", "firstname", "lastname", "fullname", "username", "email", "phone")
_WORD_RE = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


@functools.lru_cache(maxsize=4096)  # called per attribute per event; the names are few
def is_identifier(name: str) -> bool:
    """Whether a column or attribute name looks like an identifier or personal data.

    >>> [is_identifier(n) for n in ("CustomerId", "customer_id", "RowNumber", "Surname", "e-mail", "userID")]
    [True, True, True, True, True, True]
    >>> [is_identifier(n) for n in ("Age", "Balance", "HasCrCard", "paid", "Tenure", "plan")]
    [False, False, False, False, False, False]
    """
    words = [w.lower() for w in _WORD_RE.findall(name)]
    joined = "".join(words)
    return bool(words) and (
        words[-1] in _ID_WORDS
        or joined in _ID_NAMES
        or any(w in _PERSONAL_WORDS for w in words)
        or any(part in joined for part in _PERSONAL_PARTS)
    )


def coerce(value: str) -> float | str | None:
    """A CRM attribute value as a feature: finite numbers as float, other text as a category.

    >>> coerce(" 42 "), coerce("1e3"), coerce("gold"), coerce(""), coerce("nan")
    (42.0, 1000.0, 'gold', None, 'nan')
    """
    value = value.strip()
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        return value[:64]  # a bounded category: long free text is not a useful one-hot value
    return number if math.isfinite(number) else value


def profile_features(profile: Mapping[str, str], prefix: str = "crm_") -> Features:
    """CRM attributes as features, identifiers and personal data dropped.

    >>> profile_features({"plan": "gold", "age": "41", "email": "a@b.c", "CustomerId": "17"})
    {'crm_plan': 'gold', 'crm_age': 41.0}
    """
    out: Features = {}
    for key, raw in profile.items():
        if is_identifier(key):
            continue
        value = coerce(raw)
        if value is not None:
            out[prefix + key] = value
    return out


# ---------------------------------------------------------------------------------------------------
# Features from the customer state
# ---------------------------------------------------------------------------------------------------

# Imputed when a survey score was never given (scale midpoints); a *_missing flag says so.
_SCORE_DEFAULTS = {"csat": 3.0, "nps": 5.0, "ces": 4.0}


def _days(ms: float) -> float:
    return max(0.0, ms) / DAY_MS


def _slog(value: float) -> float:
    """Signed log1p: revenue and counts are heavy-tailed, and SGD dislikes huge raw values."""
    return math.copysign(math.log1p(abs(value)), value)


def churn_features(state: CustomerState, now_ms: int) -> Features:
    """The churn model's view of a customer at event time ``now_ms``.

    Recency is measured from ``state.last_seen`` to ``now_ms``: call this before folding the
    current touchpoint into the state to see the gap it ends, after folding it to see the state
    as of this event (then recency is 0). Never uses the customer id.

    >>> s = CustomerState("c1", first_seen=0, last_seen=10 * DAY_MS, events_total=5,
    ...                   channel_events={"web": 4, "phone": 1}, orders=1, revenue=50.0,
    ...                   last_purchase_at=2 * DAY_MS, last_nps=3, profile={"plan": "gold", "name": "Jo"})
    >>> x = churn_features(s, now_ms=12 * DAY_MS)
    >>> x["recency_days"], x["tenure_days"], x["share_web"], x["days_since_purchase"]
    (2.0, 12.0, 0.8, 10.0)
    >>> x["nps"], x["nps_missing"], x["csat"], x["csat_missing"], x["crm_plan"], "crm_name" in x
    (3.0, 0.0, 3.0, 1.0, 'gold', False)
    """
    seen = state.events_total > 0
    tenure = _days(now_ms - state.first_seen) if seen else 0.0
    x: Features = {
        "recency_days": _days(now_ms - state.last_seen) if seen else 0.0,
        "tenure_days": tenure,
        "log_events": _slog(state.events_total),
        "events_per_day": state.events_total / max(1.0, tenure),
        "log_revenue": _slog(state.revenue),
        "log_orders": _slog(state.orders),
        "log_refunds": _slog(state.refunds),
        "avg_order_value": (state.revenue + state.refunds) / state.orders if state.orders else 0.0,
        "refund_share": state.refunds / (state.revenue + state.refunds) if state.revenue + state.refunds > 0 else 0.0,
        "never_purchased": 0.0 if state.last_purchase_at is not None else 1.0,
        "days_since_purchase": _days(now_ms - state.last_purchase_at) if state.last_purchase_at is not None else tenure,
        "open_complaints": float(len(state.open_cases)),
        "oldest_open_complaint_days": _days(now_ms - min(state.open_cases.values())) if state.open_cases else 0.0,
        "complaints_opened": float(state.complaints_opened),
        "mean_resolve_hours": (state.mean_resolve_s or 0.0) / 3600.0,
        "resolve_missing": 0.0 if state.complaints_resolved else 1.0,
        "channel_switches": float(state.channel_switches),
        "journey_stage": state.journey_stage,
    }
    x.update(_sentiment_features(state))
    for score, default in _SCORE_DEFAULTS.items():
        value = getattr(state, f"last_{score}")
        x[score] = default if value is None else float(value)
        x[f"{score}_missing"] = 1.0 if value is None else 0.0
    x.update(_channel_mix(state.channel_events))
    x.update(profile_features(state.profile))
    return x


def _sentiment_features(state: CustomerState) -> Features:
    if not state.sentiment_n or state.sentiment_last is None:
        return {"sentiment_mean": 0.0, "sentiment_last": 0.0, "sentiment_trend": 0.0, "sentiment_missing": 1.0}
    return {
        "sentiment_mean": state.sentiment_mean,
        "sentiment_last": state.sentiment_last,
        "sentiment_trend": state.sentiment_last - state.sentiment_mean,  # < 0: getting worse
        "sentiment_missing": 0.0,
    }


def _channel_mix(channel_events: Mapping[str, int]) -> Features:
    # Every known channel, always: a share that is absent and a share of 0 must look the same.
    total = sum(channel_events.values()) or 1
    mix: Features = {f"share_{c}": 0.0 for c in CHANNELS}
    for channel, n in channel_events.items():
        mix[f"share_{channel}"] = n / total
    return mix


# ---------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------


class TabularEncoder(base.Transformer):
    """Mixed feature dict -> sparse numeric dict, in one pass: scaled, binned and one-hot.

    * a number ``v`` of feature ``f`` gives ``f`` = its running z-score (clipped to ``±clip``) and a
      one-hot bin ``f#i``, so a linear model can learn non-monotonic effects (churn by age rises,
      then falls);
    * a string gives ``f=value`` = 1.

    The first ``warmup`` values of a feature fix its bins: quantile edges, or the values themselves
    when there are at most ``n_bins`` distinct integers (3 or 4 products is not "more of 2"). Bins
    are frozen after that, so the weights learned on them keep their meaning; until then the
    feature has no bin. This is River's StandardScaler + OneHotEncoder + a binner, fused because the
    three as a TransformerUnion cost 3x as much per event.

    >>> enc = TabularEncoder(n_bins=4, warmup=8)
    >>> for v in range(8):
    ...     enc.learn_one({"age": 20.0 + 10 * v, "products": float(v % 3 + 1), "plan": "gold"})
    >>> enc.edges
    {'age': [40.0, 60.0, 80.0], 'products': None}
    >>> {k: round(v, 2) for k, v in enc.transform_one({"age": 55.0, "products": 4.0, "plan": "basic"}).items()}
    {'age': 0.0, 'age#1': 1.0, 'products': 2.72, 'products=4': 1.0, 'plan=basic': 1.0}
    """

    def __init__(self, n_bins: int = 10, warmup: int = 200, clip: float = 5.0):
        self.n_bins = n_bins
        self.warmup = warmup
        self.clip = clip
        self.moments: dict[str, list[float]] = {}  # feature -> [n, mean, sum of squared deviations]
        self.edges: dict[str, list[float] | None] = {}  # None: discrete, one bin per value
        self._pending: dict[str, list[float]] = {}  # values seen before the bins are fixed
        # What scoring needs per feature, in one lookup, rebuilt when the feature is learned:
        # (mean, 1 / std, edges, bin names or {value: name}). Scoring is far more frequent.
        self._plans: dict[str, tuple] = {}

    def learn_one(self, x: dict) -> None:
        for name, value in x.items():
            if isinstance(value, (str, bool)):
                continue
            m = self.moments.get(name)
            if m is None:
                m = self.moments[name] = [0.0, 0.0, 0.0]
            m[0] += 1  # Welford's update
            delta = value - m[1]
            m[1] += delta / m[0]
            m[2] += delta * (value - m[1])
            if name not in self.edges:
                pending = self._pending.setdefault(name, [])
                pending.append(float(value))
                if len(pending) >= self.warmup:
                    self._freeze(name, self._pending.pop(name))
            self._plan(name)

    def _freeze(self, name: str, values: list[float]) -> None:
        if len(set(values)) <= self.n_bins and all(v.is_integer() for v in values):
            self.edges[name] = None
            return
        values.sort()
        n = len(values)
        self.edges[name] = sorted({values[i * n // self.n_bins] for i in range(1, self.n_bins)})

    def _plan(self, name: str) -> None:
        n, mean, m2 = self.moments[name]
        inv_std = 1.0 / math.sqrt(m2 / n) if m2 > 0 else 0.0
        old = self._plans.get(name)
        if name not in self.edges:
            names = None
        elif old is not None and old[3] is not None:
            names = old[3]
        elif self.edges[name] is None:
            names = {}
        else:
            names = [f"{name}#{i}" for i in range(len(self.edges[name]) + 1)]
        self._plans[name] = (mean, inv_std, self.edges.get(name), names)

    def transform_one(self, x: dict) -> dict:
        out = {}
        plans, clip = self._plans, self.clip
        for name, value in x.items():
            if value.__class__ is str:
                out[f"{name}={value}"] = 1.0
                continue
            plan = plans.get(name)
            if plan is None:
                continue
            mean, inv_std, edges, names = plan
            z = (value - mean) * inv_std
            out[name] = clip if z > clip else -clip if z < -clip else z
            if edges is not None:
                out[names[bisect.bisect_right(edges, value)]] = 1.0
            elif names is not None:
                key = names.get(value)
                if key is None:
                    key = f"{name}={value:g}"
                    if len(names) < 1024:  # a "discrete" feature that turns out not to be stays bounded
                        names[value] = key
                out[key] = 1.0
        return out


# The cold-start prior: log-odds weights a CX analyst would set before any label exists (the churn
# counterpart of the sentiment seed corpus). Each is a documented churn driver: time since the last
# contact and purchase, open complaints, negative sentiment, detractor and dissatisfied scores, high
# effort; loyalty (orders) lowers it. Calibrated so an engaged customer sits near 10% and a customer
# with every warning sign near 90%; replaced by the learned model once labels arrive.
_PRIOR_BIAS = -2.3
_PRIOR_WEIGHTS = {
    "recency_days": 0.05, "days_since_purchase": 0.02, "open_complaints": 0.6, "oldest_open_complaint_days": 0.15,
    "sentiment_mean": -1.2, "log_orders": -0.4,
}


def prior_risk(features: Features) -> float:
    """Churn risk from domain priors alone (see ``_PRIOR_WEIGHTS``), for the model's cold start.

    >>> calm = {"recency_days": 1.0, "log_orders": 1.1, "sentiment_mean": 0.5, "nps": 9.0, "nps_missing": 0.0}
    >>> angry = {"recency_days": 20.0, "open_complaints": 2.0, "oldest_open_complaint_days": 6.0,
    ...          "sentiment_mean": -0.8, "nps": 2.0, "nps_missing": 0.0, "csat": 1.0, "csat_missing": 0.0}
    >>> round(prior_risk(calm), 2), round(prior_risk(angry), 2)
    (0.04, 0.99)
    """
    return 1.0 / (1.0 + math.exp(-(_PRIOR_BIAS + sum(prior_contributions(features).values()))))


def prior_contributions(features: Features) -> dict[str, float]:
    """Each feature's term in the prior's log-odds (zero terms left out).

    >>> prior_contributions({"open_complaints": 2.0, "nps": 3.0, "nps_missing": 0.0, "csat_missing": 1.0})
    {'open_complaints': 1.2, 'nps': 1.0}
    """
    terms: dict[str, float] = {}
    for name, weight in _PRIOR_WEIGHTS.items():
        value = features.get(name)
        if value.__class__ is float and value:
            terms[name] = weight * min(value, 30.0)
    for score, pivot, weight in (("nps", 7.0, 0.25), ("csat", 3.0, 0.6), ("ces", -4.0, 0.3)):
        if not features.get(f"{score}_missing", 1.0):
            # Below the pivot (detractors, dissatisfied) or, for effort, above it.
            gap = pivot - float(features[score]) if pivot > 0 else float(features[score]) + pivot
            if gap > 0:
                terms[score] = weight * gap
    return terms


class ChurnModel(Snapshot):
    """Churn probability from a feature dict, learned online.

    Numeric features go in scaled and binned, categorical ones one-hot (:class:`TabularEncoder`),
    into a logistic regression with AdaGrad. Until ``min_labels`` labels of both classes have been
    seen it answers the :func:`prior_risk`: a weight vector fitted to a dozen examples is noise.

    >>> model = ChurnModel(min_labels=4)
    >>> round(model.predict_proba({"recency_days": 3.0}), 3)   # the prior, before any label
    0.104
    >>> for i in range(40):
    ...     model.learn({"recency_days": float(i % 10), "plan": "basic" if i % 10 > 5 else "gold"}, i % 10 > 5)
    >>> risky, safe = {"recency_days": 9.0, "plan": "basic"}, {"recency_days": 1.0, "plan": "gold"}
    >>> model.predict_proba(risky) > 0.5 > model.predict_proba(safe)
    True
    >>> model.version
    'churn-v1+40'
    """

    def __init__(self, learning_rate: float = 0.1, n_bins: int = 10, warmup: int = 200, min_labels: int = 20):
        self.min_labels = min_labels
        self.pipeline = compose.Pipeline(
            TabularEncoder(n_bins=n_bins, warmup=warmup),
            linear_model.LogisticRegression(optimizer=optim.AdaGrad(learning_rate)),
        )
        self.n_labels = 0
        self.n_positive = 0

    @property
    def version(self) -> str:
        """Model name plus labels learned, e.g. ``churn-v1+5210``."""
        return f"{MODEL_NAME}+{self.n_labels}"

    @property
    def _cold(self) -> bool:
        """Too few labels, or one class only: the prior answers."""
        return self.n_labels < self.min_labels or not 0 < self.n_positive < self.n_labels

    def predict_proba(self, features: Features) -> float:
        """``p(churn within the horizon | features)`` in ``[0, 1]``; the :func:`prior_risk` until
        the model has ``min_labels`` labels of both classes."""
        if self._cold:
            return prior_risk(features)
        return self.pipeline.predict_proba_one(features).get(True, 0.0)

    def contributions(self, features: Features) -> dict[str, float]:
        """Each input feature's share of the score's log-odds (weight x encoded value, summed over
        the feature's scaled value, bin and one-hot columns); what an alert cites as its drivers.

        >>> model = ChurnModel(min_labels=2, warmup=1000)
        >>> for i in range(20):
        ...     model.learn({"complaints": float(i % 2), "plan": "basic"}, i % 2 == 1)
        >>> c = model.contributions({"complaints": 1.0, "plan": "basic"})
        >>> sorted(c), c["complaints"] > 0
        (['complaints', 'plan'], True)
        """
        if self._cold:
            return prior_contributions(features)
        encoder, regression = self.pipeline.steps.values()
        weights = regression.weights
        out: dict[str, float] = {}
        for column, value in encoder.transform_one(features).items():
            name = column.split("#", 1)[0].split("=", 1)[0]
            out[name] = out.get(name, 0.0) + weights.get(column, 0.0) * value
        return out

    def learn(self, features: Features, churned: bool) -> None:
        self.pipeline.learn_one(features, bool(churned))
        self.n_labels += 1
        self.n_positive += bool(churned)

    def learn_scored(self, features: Features, churned: bool) -> float:
        """Test-then-train: :meth:`predict_proba` as of *before* learning the label, then :meth:`learn`.

        (Nothing to share between the two: the encoder updates its statistics before it encodes
        the example it learns, so the learned encoding is not the scored one.)
        """
        p = self.predict_proba(features)
        self.learn(features, churned)
        return p



# ---------------------------------------------------------------------------------------------------
# Delayed labels, in event time
# ---------------------------------------------------------------------------------------------------


class ChurnLabeler(Snapshot):
    """Feature snapshots waiting for their label: churned within ``horizon_ms``, or not.

    * :meth:`snapshot` keeps the features a customer was scored with (at most one per customer per
      ``min_gap_ms`` of event time, at most ``max_per_customer`` per customer and ``max_total`` in
      all: the oldest go first, unlabeled).
    * :meth:`on_churn` labels the customer's snapshots from the ``horizon_ms`` before the churn
      positive. Later ones (scored after churning) are dropped; older ones stay, to become negatives.
    * :meth:`advance` releases snapshots older than ``watermark - horizon_ms`` as negatives: the
      customer has had the whole horizon to churn and did not.

    The watermark must lag event time by the lateness the pipeline allows: a churn event that
    arrives after its snapshots were released as negatives cannot take them back. Customers who
    have churned (``state.churned_at`` set) should not be snapshotted any more: there is nothing
    left to predict, and their snapshots would come back as negatives.

    Everything is in event time and ordered by (snapshot time, arrival), so the same input
    sequence gives the same labels.

    >>> labeler = ChurnLabeler(horizon_ms=30 * DAY_MS)
    >>> labeler.snapshot("a", 0, {"f": 1.0}); labeler.snapshot("b", 0, {"f": 2.0})
    True
    True
    >>> labeler.advance(29 * DAY_MS)          # b's horizon has not passed yet
    []
    >>> labeler.on_churn("a", 10 * DAY_MS)    # a churned 10 days after its snapshot
    [({'f': 1.0}, True)]
    >>> labeler.advance(31 * DAY_MS)          # b did not churn within 30 days
    [({'f': 2.0}, False)]
    """

    def __init__(
        self,
        horizon_ms: int = DEFAULT_HORIZON_MS,
        min_gap_ms: int = HOUR_MS,
        max_per_customer: int = 64,
        max_total: int = 100_000,  # a snapshot of ~40 features is ~3 KB: ~300 MB at the cap
    ):
        self.horizon_ms = horizon_ms
        self.min_gap_ms = min_gap_ms
        self.max_per_customer = max_per_customer
        self.max_total = max_total
        self._pending: dict[str, dict[int, tuple[int, Features]]] = {}  # customer -> seq -> (t, x)
        self._last_t: dict[str, int] = {}  # customer -> time of its latest kept snapshot
        self._queue: list[tuple[int, int, str]] = []  # heap of (t, seq, customer); stale entries skipped
        self._seq = 0
        self.size = 0
        self.evicted = 0  # dropped unlabeled because of the caps

    def snapshot(self, customer_id: str, t_ms: int, features: Features) -> bool:
        """Keep ``features`` as scored at event time ``t_ms``; False if throttled."""
        last = self._last_t.get(customer_id)
        if last is not None and abs(t_ms - last) < self.min_gap_ms:
            return False
        pending = self._pending.get(customer_id, {})
        if len(pending) >= self.max_per_customer:
            self._drop(customer_id, min(pending, key=lambda s: (pending[s][0], s)))
            self.evicted += 1
        if self.size >= self.max_total:
            self._evict_oldest()
        self._seq += 1
        self._pending.setdefault(customer_id, {})[self._seq] = (t_ms, dict(features))
        heapq.heappush(self._queue, (t_ms, self._seq, customer_id))
        self._last_t[customer_id] = t_ms if last is None else max(last, t_ms)
        self.size += 1
        return True

    def on_churn(self, customer_id: str, t_ms: int) -> list[tuple[Features, bool]]:
        """Positives: the customer's snapshots from ``[t_ms - horizon, t_ms]``, oldest first."""
        pending = self._pending.get(customer_id)
        if not pending:
            return []
        start = t_ms - self.horizon_ms
        labeled = []
        for seq, (t, x) in sorted(pending.items(), key=lambda item: (item[1][0], item[0])):
            if t > t_ms:  # scored after churning: not a prediction of it
                self._drop(customer_id, seq)
            elif t >= start:
                labeled.append((x, True))
                self._drop(customer_id, seq)
        return labeled

    def advance(self, watermark_ms: int) -> list[tuple[Features, bool]]:
        """Negatives: every snapshot older than ``watermark_ms - horizon``, oldest first."""
        cutoff = watermark_ms - self.horizon_ms
        released = []
        while self._queue and self._queue[0][0] < cutoff:
            t, seq, customer_id = heapq.heappop(self._queue)
            entry = self._pending.get(customer_id, {}).get(seq)
            if entry is not None:
                released.append((entry[1], False))
                self._drop(customer_id, seq)
        return released

    def _evict_oldest(self) -> None:
        while self._queue:
            _, seq, customer_id = heapq.heappop(self._queue)
            if seq in self._pending.get(customer_id, {}):
                self._drop(customer_id, seq)
                self.evicted += 1
                return

    def _drop(self, customer_id: str, seq: int) -> None:
        # The heap entry, if still there, stays and is skipped when popped (lazy deletion).
        pending = self._pending[customer_id]
        del pending[seq]
        self.size -= 1
        if not pending:
            del self._pending[customer_id]
            self._last_t.pop(customer_id, None)
        if len(self._queue) > 4 * self.size + 1024:  # too many stale entries: rebuild the heap
            self._queue = [e for e in self._queue if e[1] in self._pending.get(e[2], {})]
            heapq.heapify(self._queue)

