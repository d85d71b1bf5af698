"""Online churn risk: features from the customer state, a River model, and delayed labels.

* :func:`churn_features` turns a :class:`~processors.customer.CustomerState` into a flat feature
  dict as of an event time (never the wall clock: a replay scores exactly the same).
* :class:`ChurnModel` is a River pipeline that learns from those dicts, one label at a time.
* :class:`ChurnLabeler` provides the labels: it keeps the features a customer was scored with (an
  example) and, in event time, labels the example positive if the customer churns within the horizon,
  or negative once the horizon has passed without churn.

Identifiers and personal data (customer id, names, e-mail, phone) are never features:
:func:`is_identifier` drops them from CRM attributes and from labeled files alike.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import math
import re
import zlib
from collections.abc import Mapping
from typing import Any, cast

import orjson
from river import base, compose, linear_model, optim

from processors.customer import CustomerState
from processors.models import model_version
from processors.river_internals import logistic_log_odds
from schemas.contract import CHANNELS, DAY_MS, MODEL_CHURN

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

def _days(ms: float) -> float:
    return ms / DAY_MS if ms > 0 else 0.0


def churn_features(state: CustomerState, now_ms: int) -> Features:
    """The churn model's view of a customer at event time ``now_ms``.

    Every feature compares customers of any age: rates and event-time decayed counts
    (``CustomerState.recent_rates``), gaps, shares and latest scores, never totals since the pipeline first
    saw the customer. Totals grow with the observation window; a model fed them learns *when* an
    example was scored (labels of recent examples are churns, negatives are a horizon old) instead
    of *who* churns. Tenure comes from the CRM profile: first sight is when watching began.
    Recency is measured from ``state.last_seen`` to ``now_ms`` (0 when scored on the customer's own
    touchpoint; then ``last_gap_days`` is the silence that touchpoint ended). Never uses the customer id.

    >>> s = CustomerState("c1", first_seen=0, last_seen=10 * DAY_MS, events_total=5,
    ...                   channel_events={"web": 4, "phone": 1}, orders=1, revenue=50.0,
    ...                   last_purchase_at=2 * DAY_MS, last_nps=3, profile={"plan": "gold", "name": "Jo"},
    ...                   recent={"events_7d": 2.0}, last_gap_ms=3 * DAY_MS)
    >>> x = churn_features(s, now_ms=12 * DAY_MS)
    >>> x["recency_days"], x["last_gap_days"], x["share_web"], x["days_since_purchase"], round(x["events_per_day_7d"], 3)
    (2.0, 3.0, 0.8, 10.0, 0.262)
    >>> x["nps"], x["nps_missing"], x["csat"], x["csat_missing"], x["crm_plan"], "crm_name" in x
    (3.0, 0.0, 3.0, 1.0, 'gold', False)
    """
    seen = state.events_total > 0
    recent = state.recent_rates(now_ms)
    rate_7d = recent["events_7d"] / 7.0
    rate_28d = recent["events_28d"] / 28.0
    paid = state.revenue + state.refunds
    x: Features = {
        "recency_days": _days(now_ms - state.last_seen) if seen else 0.0,
        "last_gap_days": _days(state.last_gap_ms or 0),
        "mean_gap_days": _days(state.gap_ms_avg or 0),
        "events_per_day_7d": rate_7d,
        "events_per_day_28d": rate_28d,
        "activity_trend": math.log((rate_7d + 0.1) / (rate_28d + 0.1)),  # < 0: slowing down
        "purchases_28d": recent["purchases_28d"],
        "refunds_28d": recent["refunds_28d"],
        "complaints_28d": recent["complaints_28d"],
        "contacts_14d": recent["contacts_14d"],
        # Carts left without a purchase, smoothed (one cart bought is not 100%): dissatisfied
        # customers abandon more.
        "cart_abandonment_28d": max(0.0, recent["carts_28d"] - recent["purchases_28d"]) / (recent["carts_28d"] + 1.0),
        "avg_order_value": paid / state.orders if state.orders else 0.0,
        "refund_share": state.refunds / paid if paid > 0 else 0.0,
        "never_purchased": 0.0 if state.last_purchase_at is not None else 1.0,
        "days_since_purchase": min(90.0, _days(now_ms - state.last_purchase_at)) if state.last_purchase_at is not None else 0.0,
        "open_complaints": float(len(state.open_cases)),
        "oldest_open_complaint_days": _days(now_ms - min(state.open_cases.values())) if state.open_cases else 0.0,
        "mean_resolve_hours": (state.mean_resolve_s or 0.0) / 3600.0,
        "resolve_missing": 0.0 if state.complaints_resolved else 1.0,
        "channel_switch_share": state.channel_switches / state.events_total if seen else 0.0,
        "journey_stage": state.journey_stage,
    }
    x.update(_sentiment_features(state))
    # A survey score never given is imputed (the scale's midpoint) and flagged *_missing.
    for score, default, missing, value in (("csat", 3.0, "csat_missing", state.last_csat),
                                           ("nps", 5.0, "nps_missing", state.last_nps),
                                           ("ces", 4.0, "ces_missing", state.last_ces)):
        x[score] = default if value is None else float(value)
        x[missing] = 1.0 if value is None else 0.0
    x.update(_channel_mix(state.channel_events))
    if state.profile:
        x.update(_profile_features_of(tuple(state.profile.items())))
    return x


@functools.lru_cache(maxsize=1 << 16)  # a profile changes rarely and is read at every rescore
def _profile_features_of(items: tuple[tuple[str, str], ...]) -> Features:
    return profile_features(dict(items))


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
    mix: Features = dict(_NO_SHARES)
    for channel, n in channel_events.items():
        mix[_SHARE_NAMES.get(channel) or f"share_{channel}"] = n / total
    return mix


_SHARE_NAMES = {c: f"share_{c}" for c in CHANNELS}  # names made once, not at every rescore
_NO_SHARES: Features = dict.fromkeys(_SHARE_NAMES.values(), 0.0)


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
        self._plans: dict[str, tuple[float, float, list[float] | None, Any]] = {}

    def learn_one(self, x: dict[str, Any]) -> None:  # type: ignore[override]  # features by name: river's keys are Hashable
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
        distinct = set(values)
        if len(distinct) < 2:
            return  # constant so far (a count nobody has yet): no bins until it varies
        if len(distinct) <= self.n_bins and all(v.is_integer() for v in distinct):
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
        elif (edges := self.edges[name]) is None:
            names = {}
        else:
            names = [f"{name}#{i}" for i in range(len(edges) + 1)]
        self._plans[name] = (mean, inv_std, self.edges.get(name), names)

    def transform_one(self, x: dict[str, Any]) -> dict[str, float]:  # type: ignore[override]  # as learn_one
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
                    # A new value of a discrete feature gets its own column only if it is a whole
                    # number and there are few: a column per value of a continuous feature (which
                    # looked discrete during warmup) would pick out single customers.
                    if value != int(value) or len(names) >= 2 * self.n_bins:
                        continue
                    key = names[value] = f"{name}={value:g}"
                out[key] = 1.0
        return out


# The cold-start prior: log-odds weights a CX analyst would set before any label exists (the churn
# counterpart of the sentiment seed corpus). Each is a documented churn driver: time since the last
# contact and purchase, open complaints, negative sentiment, detractor and dissatisfied scores, high
# effort, a short CRM tenure (new customers leave most); recent purchases lower it. Calibrated so an
# engaged customer sits near 10% and a customer with every warning sign near 90%; faded out by the
# learned model as labels arrive.
_PRIOR_BIAS = -2.3
_PRIOR_WEIGHTS = {
    "recency_days": 0.05, "days_since_purchase": 0.02, "open_complaints": 0.6, "oldest_open_complaint_days": 0.15,
    "sentiment_mean": -1.2, "purchases_28d": -0.15,
    # Disengagement and friction: slowing down (activity_trend < 0), a long silence just ended,
    # repeated contacts and complaints lately.
    "activity_trend": -1.0, "last_gap_days": 0.05, "contacts_14d": 0.05, "complaints_28d": 0.05,
}


_PRIOR_TENURE_WEIGHT = 0.5  # per log-month of CRM tenure, around a year
_PRIOR_TENURE_PIVOT_MONTHS = 12.0
# A CRM tenure attribute and its unit in months (``cem.customers`` sends ``tenure_months``).
_TENURE_UNITS = {"crm_tenure_months": 1.0, "crm_tenure": 1.0, "crm_tenure_days": 1 / 30.44, "crm_tenure_years": 12.0}


def _tenure_months(features: Features) -> float | None:
    """The customer's CRM tenure in months, if the profile carries one as a number.

    >>> _tenure_months({"crm_tenure_days": 365.0}), _tenure_months({"crm_tenure_months": "long"})
    (11.99..., None)
    """
    for name, months_per_unit in _TENURE_UNITS.items():
        value = features.get(name)
        if value.__class__ is float and value >= 0:
            return value * months_per_unit
    return None


def _sigmoid(log_odds: float) -> float:
    if log_odds < -500:
        return 0.0
    return 1.0 / (1.0 + math.exp(-log_odds))


def _prior_log_odds(features: Features) -> float:
    return _PRIOR_BIAS + sum(prior_contributions(features).values())


def prior_risk(features: Features) -> float:
    """Churn risk from domain priors alone (see ``_PRIOR_WEIGHTS``), for the model's cold start.

    >>> calm = {"recency_days": 1.0, "purchases_28d": 3.0, "sentiment_mean": 0.5, "nps": 9.0, "nps_missing": 0.0}
    >>> angry = {"recency_days": 20.0, "open_complaints": 2.0, "oldest_open_complaint_days": 6.0,
    ...          "sentiment_mean": -0.8, "nps": 2.0, "nps_missing": 0.0, "csat": 1.0, "csat_missing": 0.0}
    >>> round(prior_risk(calm), 2), round(prior_risk(angry), 2)
    (0.04, 0.99)
    """
    return _sigmoid(_prior_log_odds(features))


def prior_contributions(features: Features) -> dict[str, float]:
    """Each feature's term in the prior's log-odds (zero terms left out).

    >>> prior_contributions({"open_complaints": 2.0, "nps": 3.0, "nps_missing": 0.0, "csat_missing": 1.0})
    {'open_complaints': 1.2, 'nps': 1.0}
    """
    terms: dict[str, float] = {}
    for name, weight in _PRIOR_WEIGHTS.items():
        value = features.get(name)
        if value.__class__ is float and value:
            terms[name] = weight * (30.0 if value > 30.0 else value)  # min(value, 30.0) without a call (NaN stays NaN)
    months = _tenure_months(features)
    if months is not None and months != _PRIOR_TENURE_PIVOT_MONTHS:
        # New customers churn more: + up to 1.3 at zero months, - past a year, in log-months.
        terms["crm_tenure"] = _PRIOR_TENURE_WEIGHT * (math.log1p(_PRIOR_TENURE_PIVOT_MONTHS) - math.log1p(months))
    for score, missing, pivot, weight in (("nps", "nps_missing", 7.0, 0.25), ("csat", "csat_missing", 3.0, 0.6),
                                          ("ces", "ces_missing", -4.0, 0.3)):
        if not features.get(missing, 1.0):
            # Below the pivot (detractors, dissatisfied) or, for effort, above it.
            gap = pivot - float(features[score]) if pivot > 0 else float(features[score]) + pivot
            if gap > 0:
                terms[score] = weight * gap
    return terms


class ChurnModel:
    """Churn probability from a feature dict, learned online: an :class:`~processors.models.OnlineModel`
    of feature dicts, ``y`` whether the customer churned within the horizon.

    Numeric features go in scaled and binned, categorical ones one-hot (:class:`TabularEncoder`),
    into a logistic regression with AdaGrad. Until ``min_labels`` labels of both classes have been
    seen it answers the :func:`prior_risk`: a weight vector fitted to a dozen examples is noise.
    After that the prior fades rather than vanishes: the score's log-odds are the model's and the
    prior's, weighted ``n : prior_labels`` after ``n`` labels (shrinkage towards what is known, while
    the model has seen little; measured on the synthetic stream it lifts the live ranking in the
    model's first month from 0.76-0.80 to 0.80-0.84 ROC AUC).

    >>> model = ChurnModel(min_labels=4, prior_labels=0)
    >>> round(model.predict_proba_one({"recency_days": 3.0}), 3)   # the prior, before any label
    0.104
    >>> for i in range(40):
    ...     model.learn_one({"recency_days": float(i % 10), "plan": "basic" if i % 10 > 5 else "gold"}, i % 10 > 5)
    >>> risky, safe = {"recency_days": 9.0, "plan": "basic"}, {"recency_days": 1.0, "plan": "gold"}
    >>> model.predict_proba_one(risky) > 0.5 > model.predict_proba_one(safe)
    True
    >>> model.version
    'churn-v1+40'
    """

    SNAPSHOT_KIND = MODEL_CHURN
    SNAPSHOT_VERSION = 1  # also the "v1" of ``version``: snapshots of another format are refused
    SNAPSHOT_COMPRESSED = True  # weights and encoder plans keyed by feature names: they compress well

    def __init__(self, learning_rate: float = 0.1, n_bins: int = 10, warmup: int = 200, min_labels: int = 20,
                 prior_labels: int = 3000):
        self.min_labels = min_labels
        self.prior_labels = prior_labels
        self.pipeline = compose.Pipeline(
            TabularEncoder(n_bins=n_bins, warmup=warmup),
            linear_model.LogisticRegression(optimizer=optim.AdaGrad(learning_rate)),
        )
        self.n_labels = 0
        self.n_positive = 0

    @property
    def version(self) -> str:
        """Model name, format and labels learned, e.g. ``churn-v1+5210``."""
        return model_version(MODEL_CHURN, self.SNAPSHOT_VERSION, self.n_labels)

    @property
    def _cold(self) -> bool:
        """Too few labels, or one class only: the prior answers."""
        return self.n_labels < self.min_labels or not 0 < self.n_positive < self.n_labels

    @property
    def _encoder(self) -> TabularEncoder:
        return cast(TabularEncoder, self.pipeline.steps["TabularEncoder"])

    @property
    def _regression(self) -> linear_model.LogisticRegression:
        return cast(linear_model.LogisticRegression, self.pipeline.steps["LogisticRegression"])

    def predict_proba_one(self, features: Features) -> float:
        """``p(churn within the horizon | features)`` in ``[0, 1]``; the :func:`prior_risk` until
        the model has ``min_labels`` labels of both classes."""
        return self._score(features)

    def _score(self, features: Features, encoded: dict[str, float] | None = None) -> float:
        """:meth:`predict_proba_one`, on ``features`` already ``encoded`` if given: the learned
        model's log-odds (River's own, before its sigmoid) blended with the prior's."""
        if self._cold:
            return prior_risk(features)
        if encoded is None:
            encoded = self._encoder.transform_one(features)
        log_odds = logistic_log_odds(self._regression, encoded)
        w = self._prior_share
        if w:
            log_odds = (1 - w) * log_odds + w * _prior_log_odds(features)
        return _sigmoid(log_odds)

    @property
    def _prior_share(self) -> float:
        """The prior's weight in the log-odds: ``prior_labels / (labels + prior_labels)``."""
        k = self.prior_labels
        return k / (self.n_labels + k) if k else 0.0

    def contributions(self, features: Features) -> dict[str, float]:
        """Each input feature's share of the score's log-odds (weight x encoded value, summed over
        the feature's scaled value, bin and one-hot columns); what an alert cites as its drivers.

        >>> model = ChurnModel(min_labels=2, warmup=1000, prior_labels=0)
        >>> for i in range(20):
        ...     model.learn_one({"complaints": float(i % 2), "plan": "basic"}, i % 2 == 1)
        >>> c = model.contributions({"complaints": 1.0, "plan": "basic"})
        >>> sorted(c), c["complaints"] > 0
        (['complaints', 'plan'], True)
        """
        if self._cold:
            return prior_contributions(features)
        weights = self._regression.weights
        w = self._prior_share
        out: dict[str, float] = {}
        for column, value in self._encoder.transform_one(features).items():
            name = column.split("#", 1)[0].split("=", 1)[0]
            out[name] = out.get(name, 0.0) + (1 - w) * weights.get(column, 0.0) * value
        for name, term in (prior_contributions(features).items() if w else ()):
            out[name] = out.get(name, 0.0) + w * term
        return out

    def observe(self, features: Features) -> None:
        """Fit the encoder's scaling and bins on a customer as scored, label or not.

        The trainer observes every example when it arrives and learns labels with ``observe=False``:
        labels arrive a horizon after their examples, so an encoder fitted on labels alone would
        have no scale and no bins for the model's first month, and would then fix its bins on
        whichever few customers were labeled first (taking, say, their CRM tenures for the
        categories of a discrete feature).
        """
        self._encoder.learn_one(features)

    def learn_one(self, features: Features, churned: bool, *, observe: bool = True) -> None:
        """Learn one label; ``observe=False`` when :meth:`observe` has already seen ``features``."""
        if observe:
            self.observe(features)
        self._learn_encoded(self._encoder.transform_one(features), churned)

    def predict_then_learn_one(self, features: Features, churned: bool, *, observe: bool = True) -> float:
        """Test-then-train: :meth:`predict_proba_one` as of *before* learning the label, then
        :meth:`learn_one`.

        With ``observe=False`` (the trainer's way: the encoder saw the example when it arrived) the
        encoder does not move between the two, so ``features`` are encoded once for both. With
        ``observe=True`` the encoder updates its statistics first, and the learned encoding is not
        the scored one.
        """
        if observe:
            p = self.predict_proba_one(features)
            self.learn_one(features, churned)
            return p
        encoded = self._encoder.transform_one(features)
        p = self._score(features, encoded)
        self._learn_encoded(encoded, churned)
        return p

    def _learn_encoded(self, encoded: dict[str, float], churned: bool) -> None:
        self._regression.learn_one(encoded, bool(churned))
        self._count(churned)

    def _count(self, churned: bool) -> None:
        self.n_labels += 1
        self.n_positive += bool(churned)


# ---------------------------------------------------------------------------------------------------
# Delayed labels, in event time
# ---------------------------------------------------------------------------------------------------


class ChurnLabeler:
    """Churn examples waiting for their label: churned within ``horizon_ms``, or not. An example is
    the features a customer was scored with, at the event time of that score.

    * :meth:`keep` keeps an example: at most one per customer per ``min_gap_ms`` of event time
      (default: a sixtieth of the horizon, 12 h for 30 days), at most ``max_per_customer`` per
      customer (the customer's oldest goes) and ``max_total`` in all. At the total cap a new example
      is refused, not an old one evicted: the old ones are the next to be labeled, and evicting them
      would starve training of every label once the inflow per horizon exceeds the cap (more
      customers than the cap allows for).
      They are kept compressed (~0.26 KB each): the labeler holds a horizon of every customer.
    * :meth:`on_churn` marks the customer's examples from the ``horizon_ms`` before the churn
      positive. Later ones (scored after churning) are dropped; older ones stay negative.
    * :meth:`advance` releases every example older than ``watermark - horizon_ms`` with its label:
      positive if marked, else negative (the customer had the whole horizon to churn and did not).

    Both classes are released at the same age, a horizon after the example. Releasing a positive
    at the churn instead would train the model, at any moment, on recent positives against
    horizon-old negatives: whatever drifts with time (counts still warming up, how many customers
    have answered a survey yet) would separate the classes at training time and mean nothing when
    every customer is scored on the same day. It also makes the trainer's progressive AUC the AUC
    "at the horizon": each example is scored by the model of the day its label became known.

    The watermark must lag event time by the lateness the pipeline allows: a churn event that
    arrives after its examples were released cannot take them back. Customers who have churned
    (``state.churned_at`` set) give no examples any more: there is nothing left to predict.

    Everything is in event time and ordered by (scoring time, arrival), so the same input
    sequence gives the same labels.

    >>> labeler = ChurnLabeler(horizon_ms=30 * DAY_MS)
    >>> labeler.keep("a", 0, {"f": 1.0}), labeler.keep("b", 0, {"f": 2.0})
    (True, True)
    >>> labeler.on_churn("a", 10 * DAY_MS)    # a churned 10 days after its example: 1 marked
    1
    >>> labeler.advance(29 * DAY_MS)          # the horizon has not passed yet
    []
    >>> labeler.advance(31 * DAY_MS)          # a churned within 30 days, b did not
    [({'f': 1.0}, True), ({'f': 2.0}, False)]
    """

    SNAPSHOT_KIND = "labeler"
    SNAPSHOT_VERSION = 1
    SNAPSHOT_COMPRESSED = False  # its bulk, the examples' features, is compressed already

    def __init__(
        self,
        horizon_ms: int = DEFAULT_HORIZON_MS,
        min_gap_ms: int | None = None,
        max_per_customer: int = 64,
        max_total: int = 100_000,  # keeps a full trainer checkpoint under MODEL_MAX_BYTES
    ):
        self.horizon_ms = horizon_ms
        self.min_gap_ms = horizon_ms // 60 if min_gap_ms is None else min_gap_ms
        self.max_per_customer = max_per_customer
        self.max_total = max_total
        self._zdict = _feature_names()  # pickled with the labeler: its blobs need this very dictionary
        # customer -> seq -> (t, compressed features, churned)
        self._pending: dict[str, dict[int, tuple[int, bytes, bool]]] = {}
        self._last_t: dict[str, int] = {}  # customer -> time of its latest kept example
        self._queue: list[tuple[int, int, str]] = []  # heap of (t, seq, customer); stale entries skipped
        self._seq = 0
        self.size = 0
        self.evicted = 0  # dropped unlabeled because of the per-customer cap
        self.refused = 0  # not kept because the labeler was full

    def keep(self, customer_id: str, t_ms: int, features: Features) -> bool:
        """Keep ``features`` as scored at event time ``t_ms``; False if throttled or full."""
        last = self._last_t.get(customer_id)
        if last is not None and abs(t_ms - last) < self.min_gap_ms:
            return False
        pending = self._pending.get(customer_id, {})
        if len(pending) >= self.max_per_customer:
            self._drop(customer_id, min(pending, key=lambda s: (pending[s][0], s)))
            self.evicted += 1
        if self.size >= self.max_total:
            self.refused += 1
            return False
        self._seq += 1
        # A tuple of atomic values: untracked by the garbage collector, and there are ~100k of them.
        self._pending.setdefault(customer_id, {})[self._seq] = (t_ms, _compress(features, self._zdict), False)
        heapq.heappush(self._queue, (t_ms, self._seq, customer_id))
        self._last_t[customer_id] = t_ms if last is None else max(last, t_ms)
        self.size += 1
        return True

    def on_churn(self, customer_id: str, t_ms: int) -> int:
        """Mark the customer's examples from ``[t_ms - horizon, t_ms]`` positive; returns how many."""
        pending = self._pending.get(customer_id)
        if not pending:
            return 0
        start, marked = t_ms - self.horizon_ms, 0
        for seq, entry in list(pending.items()):
            if entry[0] > t_ms:  # scored after churning: not a prediction of it
                self._drop(customer_id, seq)
            elif entry[0] >= start:
                pending[seq] = (entry[0], entry[1], True)
                marked += 1
        return marked

    def forget(self, customer_id: str) -> int:
        """Drop every example of an erased customer (its features are personal data); returns how many.

        >>> labeler = ChurnLabeler(horizon_ms=30 * DAY_MS)
        >>> labeler.keep("a", 0, {"f": 1.0}), labeler.forget("a"), labeler.advance(31 * DAY_MS)
        (True, 1, [])
        """
        seqs = list(self._pending.get(customer_id, {}))
        for seq in seqs:
            self._drop(customer_id, seq)
        return len(seqs)

    def advance(self, watermark_ms: int) -> list[tuple[Features, bool]]:
        """Labels: every example older than ``watermark_ms - horizon``, oldest first."""
        cutoff = watermark_ms - self.horizon_ms
        released = []
        while self._queue and self._queue[0][0] < cutoff:
            t, seq, customer_id = heapq.heappop(self._queue)
            entry = self._pending.get(customer_id, {}).get(seq)
            if entry is not None:
                released.append((_decompress(entry[1], self._zdict), entry[2]))
                self._drop(customer_id, seq)
        return released

    def __getstate__(self) -> dict[str, Any]:
        # The pending examples are the state; the time index and the per-customer latest time are
        # derived from them, so a pickle leaves them out (pickling ~100k tuples less: pickle
        # holds the GIL, and the worker's event loop waits for it).
        return {k: v for k, v in self.__dict__.items() if k not in ("_queue", "_last_t")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._queue = [(entry[0], seq, customer_id) for customer_id, pending in self._pending.items()
                       for seq, entry in pending.items()]
        heapq.heapify(self._queue)
        self._last_t = {customer_id: max(entry[0] for entry in pending.values())
                        for customer_id, pending in self._pending.items()}

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


def _compress(features: Features, zdict: bytes) -> bytes:
    """~260 bytes for a customer's ~46 features: numbers kept to 6 significant digits (beyond what a
    binned, scaled feature can use) and zlib primed with the feature names (``zdict``)."""
    rounded = {k: float(f"{v:.6g}") if v.__class__ is float else v for k, v in features.items()}
    packer = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, zdict)
    return packer.compress(orjson.dumps(rounded)) + packer.flush()


def _decompress(blob: bytes, zdict: bytes) -> Features:
    unpacker = zlib.decompressobj(15, zdict)
    return cast(Features, orjson.loads(unpacker.decompress(blob) + unpacker.flush()))


@functools.lru_cache(maxsize=1)
def _feature_names() -> bytes:
    """The churn features of an empty customer as JSON: the words every example repeats."""
    return orjson.dumps(churn_features(CustomerState("", profile={"plan": "", "region": "", "tenure_months": ""}), 0))
