"""Synthetic multi-channel customer journeys: a seedable, deterministic touchpoint generator.

:class:`JourneyGenerator` simulates ``customers`` customers on one global event-time clock and
yields JSON-form touchpoints (``occurred_at`` in epoch ms) in non-decreasing event time. Nothing
reads the wall clock and every random draw comes from one ``random.Random(seed)``, so the same
arguments give byte-identical output, on any machine, at any time.

What is simulated, and why it looks the way it does:

* Every customer has a latent satisfaction in [-1, 1]: an Ornstein-Uhlenbeck random walk around
  a personal mean (mean reversion, so one bad week fades), pushed down by service failures (late
  delivery, app crash, billing error...) and partly back up when a complaint is resolved.
* Activities (browsing sessions, e-mail campaigns, store visits, surveys, feedback, chats, calls,
  failures) arrive as a non-homogeneous Poisson process with a day/night profile; most emit several
  events (a session is login, page views, search, add to cart, maybe a purchase; sometimes the
  session continues on another channel with the same ``session_id``).
* Complaints (``complaint_opened`` on phone/chat/email with a ``case_id``) are resolved after a
  channel-typical delay with a long tail (SLA breaches) and sometimes never.
* Churners (``churn_rate`` of the customers, chosen by the seed) decline for one to two weeks
  before they churn: their mean satisfaction slides, their gaps grow, failures, complaints and
  negative feedback rise; they end with ``subscription_cancelled`` or ``account_closed`` and emit
  nothing after it.
* Scores and texts follow satisfaction: NPS/CSAT/CES are noisy functions of it and survey comments,
  feedback and chat texts are drawn from template sentences whose tone matches the scores.
* Identity (``identity`` of the customers, chosen by the seed; off by default): these customers have
  a device id, an e-mail and a phone, and their channels know them by those. They browse anonymously
  (``anonymous_id``, no ``customer_id``) until they sign up or log in (an ``identify`` touchpoint);
  e-mail opens and clicks then carry only the e-mail, SMS only the phone, some calls only the phone.
  A few share a device, and a few identifier-only touchpoints carry junk (see
  :meth:`JourneyGenerator.ground_truth`).

:func:`kpi_totals` is the ground truth for ``cem.kpi_minute``; :func:`inject_bad_records` gives one
record per dead-letter reason.

>>> gen = JourneyGenerator(customers=20, seed=7)
>>> events = list(gen.events(200))
>>> len(events), events[0]["event_id"], events[0]["customer_id"].startswith("cust-")
(200, '7-0', True)
>>> all(a["occurred_at"] <= b["occurred_at"] for a, b in zip(events, events[1:]))
True
>>> [e["event_id"] for e in JourneyGenerator(customers=20, seed=7).events(3)] == [e["event_id"] for e in events[:3]]
True
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from processors.kpi import csat_satisfied, is_detractor, is_promoter
from schemas.contract import DAY_MS, HOUR_MS, MAX_RECORD_BYTES, MINUTE_MS, Reason

DEFAULT_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z

# Columns of the ``cem.kpi_minute`` view that a generator can know exactly (no model outputs).
KPI_COLUMNS: tuple[str, ...] = (
    "events", "revenue", "refunds", "csat_responses", "csat_satisfied", "nps_responses", "promoters",
    "detractors", "ces_responses", "ces_sum", "complaints_opened", "complaints_resolved",
)
_MONEY = frozenset({"revenue", "refunds"})

# Heap entry kinds. Events are concrete dicts; the others are decisions taken when their time
# comes, because what they do depends on the customer's state then (churned? how unhappy?).
_EVENT, _ACTIVITY, _ACTION, _CHURN = 0, 1, 2, 3

# Satisfaction dynamics (per day): reversion rate and stationary spread of the random walk.
_THETA = 0.15
_SPREAD = 0.15
_DECLINE_FLOOR = -0.75  # where a churner's mean satisfaction slides to

# Day/night activity profile by UTC hour (customers are in Europe); thinning keeps it Poisson.
_DIURNAL = (0.15, 0.1, 0.08, 0.07, 0.08, 0.15, 0.35, 0.6, 0.8, 0.9, 0.95, 1.0,
            1.0, 0.95, 0.9, 0.9, 0.95, 1.0, 1.0, 0.95, 0.85, 0.7, 0.5, 0.3)
_DIURNAL_MEAN = sum(_DIURNAL) / 24
# Mean events per activity (deferred ones included), measured on the default mix (5 seeds x 100k
# events, no churn); converts the events-per-day knob into an activity rate.
_EVENTS_PER_ACTIVITY = 2.64

# Complaint handling: median resolution hours by channel (the pipeline's SLAs are chat 4 h,
# phone 24 h, e-mail 48 h), the chance of a long tail (x4-12) and of never being resolved.
_RESOLVE_MEDIAN_H = {"chat": 1.5, "phone": 7.0, "email": 20.0}
_RESOLVE_SIGMA = 0.8
_P_LONG_TAIL = 0.12
_P_NEVER = 0.07

_PLANS = (("basic", 0.45), ("standard", 0.38), ("premium", 0.17))
_REGIONS = ("north", "south", "east", "west", "central")
_AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
_CHANNEL_PREFS = ("web", "mobile_app", "in_store", "email")
_ISSUES = {  # service failure -> the text topic it is talked about with
    "late_delivery": "delivery", "damaged_item": "product_quality", "wrong_item": "delivery",
    "app_crash": "app", "billing_error": "billing", "long_wait": "waiting_time",
    "rude_staff": "staff", "refund_delay": "refunds",
}
_ORDER_ISSUES = ("late_delivery", "late_delivery", "damaged_item", "wrong_item")
_OTHER_ISSUES = ("app_crash", "billing_error", "long_wait", "rude_staff", "refund_delay", "app_crash")
_PAGES = ("/", "/search", "/offers", "/account", "/help", "/cart", "/orders", "/category/home",
          "/category/electronics", "/category/fashion", "/category/sports")
_QUERIES = ("headphones", "winter jacket", "coffee machine", "phone case", "running shoes", "blender",
            "desk lamp", "backpack", "gift card", "return policy", "delivery times")

# Identity stitching. Names and domains only build plausible, distinct addresses; the domains use the
# reserved ``.example`` TLD (RFC 2606), so no address belongs to a real inbox.
_IDENTIFIER_KINDS = ("email", "phone", "anonymous_id")
_FIRST_NAMES = ("anna", "marco", "sofia", "lukas", "emma", "noah", "mia", "leon", "lea", "hugo", "ines", "finn")
_LAST_NAMES = ("meyer", "rossi", "martin", "jansen", "garcia", "murphy", "schmidt", "dubois", "bakker", "lopez")
_MAIL_DOMAINS = ("post.example", "mailbox.example", "inbox.example")
# Country code, area codes, digits of the national number (without trunk 0), whether the country
# writes a trunk 0 ("+44 (0)20 ..."). Every written form keeps the country code: never ambiguous.
_PHONE_PLANS = (
    ("44", ("20", "161", "113"), 10, True), ("49", ("30", "89", "221"), 11, True), ("33", ("1", "4", "6"), 9, True),
    ("31", ("20", "10", "6"), 9, True), ("34", ("91", "93", "6"), 9, False), ("353", ("1", "21", "87"), 9, True),
)
# Values trackers and forms send when they have nothing (processors.identity refuses them all).
_JUNK = {
    "anonymous_id": ("null", "undefined", "0", "00000000-0000-0000-0000-000000000000"),
    "email": ("test@example.com", "noreply@shop.example", "null", "undefined"),
    "phone": ("0000000000", "null", "0", "undefined"),
}
_WEB_CHANNELS = frozenset({"web", "mobile_app"})
# Account actions need a logged-in customer: they carry customer_id whatever the channel knows.
_ACCOUNT_TYPES = frozenset({"identify", "refund", "complaint_opened", "complaint_resolved", "subscription_cancelled",
                            "account_closed"})
# (channel, type) -> the one identifier that channel's system knows the customer by, and how often
# it is all the touchpoint carries once the customer has identified.
_CONTACT_ONLY = {("email", "email_open"): ("email", 1.0), ("email", "email_click"): ("email", 1.0),
                 ("sms", "other"): ("phone", 1.0), ("phone", "call"): ("phone", 0.5),
                 ("phone", "support_contact"): ("phone", 0.5)}
# Before a customer's identify its contact touchpoints mostly carry customer_id (systems fed by the
# CRM) and this often only the identifier: ~10% of a ten-day run's identifier-only contact touchpoints
# come before the identify (fewer in longer runs), and these nobody can attribute when they arrive.
_P_EARLY_CONTACT = 0.3
_P_SHARED_DEVICE = 0.05  # of identity customers: uses another identity customer's device (a family tablet)
# How often an identify gives the e-mail and the phone: the sign-up form asks for both (the phone is
# optional), a later login sends them only sometimes.
_P_IDENTIFY_EMAIL = {"sign_up": 1.0, "login": 0.5}
_P_IDENTIFY_PHONE = {"sign_up": 0.9, "login": 0.15}
_P_KEEP_DEVICE = 0.5  # a logged-in web/app touchpoint still carries the device id
_P_JUNK_ONLY, _P_JUNK_EXTRA = 0.01, 0.05  # identifier-only touchpoints: only junk / junk beside the good one

# ---------------------------------------------------------------------------------------------
# Text: template sentences by tone and topic. Placeholders are filled lazily by _Fill.
# ---------------------------------------------------------------------------------------------

_POSITIVE = {
    "delivery": ("Delivery was {fast}, the parcel arrived {early}.", "The courier was friendly and right on time.",
                 "Parcel came {early} and was packed really well.", "Super quick delivery, thank you!"),
    "billing": ("Billing is clear and the invoice was correct.", "Paying was easy, no hidden fees.",
                "The new invoice layout is much clearer, well done."),
    "app": ("The app is {good}, checkout took seconds.", "Love the new app update, much smoother.",
            "Ordering in the app is quick and easy."),
    "staff": ("The staff in the store were {good} and helpful.", "{agent} on the phone was really patient and sorted it out.",
              "Friendly staff, they took their time to explain everything."),
    "waiting_time": ("Hardly any waiting time, got through to someone straight away.", "No queue at all, served within a minute.",
                     "Chat answered in seconds, impressive."),
    "product_quality": ("The {product} is {good} quality, exactly as described.", "Really happy with the {product}, works perfectly.",
                        "Great value, the {product} feels solid."),
    "refunds": ("Refund came back to my card within {n} days.", "Returning the {product} was painless and the refund was quick.",
                "Refund processed without any questions, great service."),
}
_POSITIVE_GENERAL = ("Wasn't bad at all.", "No complaints.", "Couldn't be happier.", "I can't fault it.",
                     "Not a single problem so far.", "Would recommend to friends.", "Excellent service as always.",
                     "Very happy customer.", "Keep up the good work!")
_NEGATIVE = {
    "delivery": ("My parcel is {n} days late and nobody tells me why.", "Delivery was a disaster, the box arrived crushed.",
                 "The courier never showed up.", "Still waiting for my order after {n} days.",
                 "They sent the wrong item and I need it for the weekend."),
    "billing": ("I was charged twice for the same order.", "The invoice is wrong again and nobody fixes it.",
                "Hidden fees on my bill, not happy at all.", "My card was charged but the order was cancelled."),
    "app": ("The app keeps crashing at checkout.", "Can't log in to the app since the update.",
            "The app is slow and buggy, I gave up.", "The app froze and lost my basket."),
    "staff": ("The staff were rude and unhelpful.", "The agent hung up on me.",
              "Nobody in the store could answer a simple question.", "{agent} promised a call back that never came."),
    "waiting_time": ("I was on hold for {mins} minutes.", "Waited {mins} minutes in the chat queue for nothing.",
                     "The waiting time is ridiculous.", "Third time calling and still no answer."),
    "product_quality": ("The {product} broke after {n} days.", "Poor quality {product}, not worth the money.",
                        "The {product} looks nothing like the pictures.", "Cheap {product}, it fell apart."),
    "refunds": ("Still no refund after {n} weeks.", "They refused my refund for a faulty {product}.",
                "The refund was less than what I paid.", "Nobody answers about my refund."),
}
_NEGATIVE_GENERAL = ("Never again.", "Not happy.", "Really disappointed.", "Worst service I have ever had.",
                     "Not impressed.", "I'm thinking about cancelling.", "Not acceptable.", "Very frustrating experience.")
_NEUTRAL = ("The {product} arrived on {weekday}.", "I changed my delivery address.", "Question about my last invoice.",
            "Ordered a {product} for my {relative}.", "It was okay, nothing special.",
            "Delivery was on time, the packaging could be better.", "Average experience overall.",
            "The app works, but the search could be better.", "Fine, does what it says.", "Not bad, not great either.")
_CHAT_QUESTIONS = ("Hi, where is my order {order}?", "Can I change my delivery address?", "How do I reset my password?",
                   "Do you have the {product} in stock?", "Can I pay by invoice?", "What is your return policy?",
                   "Is there a discount on the {product}?")
_CHAT_THANKS = ("Thanks, that helps!", "Great, thank you :)", "Perfect, thanks for the quick answer.", "Ok, thanks.")
_RESOLUTIONS = ("Replacement sent, case closed.", "Refund issued for order {order}.", "Apologised and applied a {pct}% voucher.",
                "Issue fixed, customer informed.", "Invoice corrected and confirmed by e-mail.", "Escalated and resolved by the team lead.")
_CANCEL_TEXTS = ("Cancelling, the service went downhill.", "Found a cheaper provider.", "Too many problems lately, I'm out.",
                 "Please close my account.", "Never again, cancel everything.")
_POS_TAILS = (" :)", " 👍", " 😊", "", "", "", "", "")
_NEG_TAILS = (" :(", " 😡", " 👎", "", "", "", "", "")
_FILL: dict[str, tuple[str, ...]] = {
    "fast": ("fast", "quick", "lightning fast", "really quick"),
    "early": ("a day early", "the next morning", "on time", "earlier than promised"),
    "good": ("great", "excellent", "brilliant", "really good", "superb"),
    "agent": ("Anna", "Marco", "Sofia", "Lukas", "Emma", "the agent"),
    "product": ("headphones", "jacket", "coffee machine", "phone case", "running shoes", "blender", "desk lamp", "backpack"),
    "weekday": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"),
    "relative": ("sister", "father", "partner", "son", "friend"),
}


class _Fill(dict[str, str]):
    """A ``format_map`` mapping that draws only the placeholders a template uses."""

    def __init__(self, rng: random.Random):
        super().__init__()
        self.rng = rng

    def __missing__(self, key: str) -> str:
        rng = self.rng
        if key == "n":
            return str(rng.randint(2, 9))
        if key == "mins":
            return str(rng.choice((20, 35, 45, 60, 90)))
        if key == "pct":
            return str(rng.choice((10, 15, 20)))
        if key == "order":
            return f"#{rng.randint(100000, 999999)}"
        return rng.choice(_FILL[key])


def make_text(rng: random.Random, tone: str, topic: str | None = None) -> str:
    """A free-text comment of ``tone`` (``positive``, ``neutral``, ``negative``) about ``topic``.

    >>> rng = random.Random(3)
    >>> isinstance(make_text(rng, "negative", "delivery"), str)
    True
    >>> make_text(random.Random(1), "positive", "app") == make_text(random.Random(1), "positive", "app")
    True
    """
    fill = _Fill(rng)
    choice = rng.choice
    if tone == "neutral":
        return choice(_NEUTRAL).format_map(fill)
    topical, general, tails = (_POSITIVE, _POSITIVE_GENERAL, _POS_TAILS) if tone == "positive" else (
        _NEGATIVE, _NEGATIVE_GENERAL, _NEG_TAILS)
    topic = topic or choice(tuple(topical))
    r = rng.random()
    if r < 0.2:  # a short general verdict alone ("Never again.", "Wasn't bad at all.")
        text = choice(general)
    elif r < 0.55:
        text = choice(topical[topic]).format_map(fill) + " " + choice(general)
    else:
        text = choice(topical[topic]).format_map(fill)
    return text + choice(tails)


def tone_of(score: float, rng: random.Random, spread: float = 0.3) -> str:
    """The tone of a comment from a satisfaction-like ``score`` in [-1, 1], with some noise.

    >>> tone_of(0.9, random.Random(0), spread=0.0), tone_of(-0.9, random.Random(0), spread=0.0)
    ('positive', 'negative')
    """
    x = score + rng.gauss(0.0, spread) if spread else score
    return "positive" if x > 0.3 else "negative" if x < -0.05 else "neutral"


# ---------------------------------------------------------------------------------------------
# The simulation
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Customer:
    """Simulation state of one customer (never emitted as such)."""

    idx: int
    cid: str
    churner: bool
    churn_at: int  # planned churn time (0 for non-churners)
    decline_from: int  # when a churner's decline starts
    mu: float  # personal mean satisfaction
    sat: float
    sat_at: int  # time of the last satisfaction update
    activity: float  # personal activity multiplier
    app_user: bool  # browses on the mobile app rather than the web
    plan: str
    tenure_months: int
    region: str
    age_band: str
    preferred_channel: str
    opt_in: bool
    stopping: bool = False  # churn decided: no new activities or decisions
    churned_at: int | None = None  # time of the terminal event
    final: dict[str, Any] | None = None  # the terminal event (the only event allowed at churned_at)
    ident: _Identity | None = None  # identifiers, for customers whose traffic uses them (``identity``)
    touchpoints: int = 0  # emitted and attributable to it (identifier-only ones too, junk-only ones not)


@dataclass(slots=True)
class _Identity:
    """The identifiers a customer's channels know it by, in canonical form, and its identify progress."""

    anonymous_id: str  # device or cookie; shared with another customer on a shared device
    email: str  # lower case
    phone: tuple[str, str, str, bool]  # country code, area code, subscriber number, trunk 0 written
    anonymous_sessions: int  # web/app sessions before the one that identifies
    identify_queued: bool = False
    identified_at: int | None = None  # event time of its first emitted identify

    def canonical(self, kind: str) -> str:
        if kind == "email":
            return self.email
        if kind == "phone":
            return "+" + "".join(self.phone[:3])
        return self.anonymous_id


def _written_email(rng: random.Random, email: str) -> str:
    """``email`` as someone typed it into a form: the case and stray whitespace vary.

    >>> from processors.identity import normalise
    >>> rng = random.Random(0)
    >>> {normalise("email", _written_email(rng, "anna.meyer7@post.example")) for _ in range(40)}
    {'anna.meyer7@post.example'}
    """
    r = rng.random()
    if r < 0.2:
        email = email.title()
    elif r < 0.3:
        email = email.upper()
    elif r < 0.4:
        local, domain = email.split("@")
        email = local.capitalize() + "@" + domain
    if rng.random() < 0.15:
        email = rng.choice((" {} ", "{} ", "\t{}", "{}\n")).format(email)
    return email


def _written_phone(rng: random.Random, phone: tuple[str, str, str, bool]) -> str:
    """``phone`` as some channel system writes it; every form keeps the country code.

    >>> from processors.identity import normalise
    >>> rng = random.Random(0)
    >>> {normalise("phone", _written_phone(rng, ("44", "20", "79460958", True))) for _ in range(40)}
    {'+442079460958'}
    """
    cc, area, number, trunk = phone
    half = len(number) // 2
    a, b = number[:half], number[half:]
    forms = [f"+{cc} {area} {a} {b}", f"00{cc} {area} {a} {b}", f"+{cc}{area}{number}", f"+{cc}-{area}-{a}-{b}",
             f"(+{cc}) {area} {number}"]
    if trunk:  # the national trunk 0 in brackets, as on letterheads
        forms.append(f"+{cc} (0){area} {a}-{b}")
    return rng.choice(forms)


class JourneyGenerator:
    """Deterministic customer journeys on one event-time clock.

    ``events_per_customer_per_day`` is the mean rate of a healthy customer (churners in decline
    slow down); ``churn_within_days``: planned churn times are spread over ``[0.25, 1] x`` this
    many days after ``start_ms``. ``label_text`` adds ``attributes["synthetic_tone"]`` (the tone
    a text was written with) to events with text, for evaluating a sentiment model. ``identity``
    is the share of customers whose traffic uses identifiers instead of (or beside) ``customer_id``
    (see the module docstring and :meth:`ground_truth`); at 0.0 nothing changes, draw for draw.

    >>> gen = JourneyGenerator(customers=5, seed=1, churn_rate=0.0)
    >>> sorted({e["type"] for e in gen.events(300)} & {"page_view", "purchase"})
    ['page_view', 'purchase']
    >>> gen.ground_truth()["events"]
    300
    >>> gen = JourneyGenerator(customers=20, seed=3, identity=0.5)
    >>> events = list(gen.events(3000))
    >>> unkeyed = [e for e in events if "customer_id" not in e]
    >>> len(unkeyed) > 0, all({"anonymous_id", "email", "phone"} & set(e) for e in unkeyed)
    (True, True)
    >>> truth = gen.ground_truth()["identity"]
    >>> set(truth["events"]) == {e["event_id"] for e in unkeyed}
    True
    """

    def __init__(
        self,
        customers: int = 1000,
        seed: int = 0,
        start_ms: int = DEFAULT_START_MS,
        churn_rate: float = 0.15,
        events_per_customer_per_day: float = 4.0,
        churn_within_days: float = 28.0,
        label_text: bool = False,
        run: str = "",
        identity: float = 0.0,
    ):
        if customers < 1:
            raise ValueError("customers must be >= 1")
        if not 0.0 <= churn_rate <= 1.0:
            raise ValueError("churn_rate must be in [0, 1]")
        if not 0.0 <= identity <= 1.0:
            raise ValueError("identity must be in [0, 1]")
        if events_per_customer_per_day <= 0 or churn_within_days <= 0:
            raise ValueError("events_per_customer_per_day and churn_within_days must be > 0")
        self.seed = seed
        self.run = run  # prefixes event ids: runs of the same seed on the same customers stay apart
        self.start_ms = start_ms
        self.label_text = label_text
        self.rng = random.Random(seed)
        # Mean gap between activities at peak hour: thinning by _DIURNAL brings it to the target.
        self._peak_gap_ms = DAY_MS * _EVENTS_PER_ACTIVITY * _DIURNAL_MEAN / events_per_customer_per_day
        self._heap: list[tuple[int, int, int, _Customer, Any]] = []
        self._seq = itertools.count()
        self._ids = itertools.count()  # sessions, orders, cases
        self._emitted = 0
        self._now = start_ms
        self._kpi: dict[str, list[int]] = {}
        self._churned: dict[str, int] = {}
        self._cases: dict[str, dict[str, Any]] = {}
        self._daily: list[dict[str, float | None]] = []
        self._next_day = start_ms
        # Identity ground truth, filled as events are emitted (see ground_truth()).
        self._identifier_only: dict[str, str | None] = {}  # event id -> true customer (None: junk only)
        self._unlinked_at_arrival: list[str] = []
        self._links: dict[str, str] = {}  # "kind:canonical value" -> first customer to identify with it
        self._shared_devices: dict[str, list[str]] = {}
        self._customers = self._make_customers(customers, churn_rate, churn_within_days)
        if identity > 0:  # no draw at all otherwise: the default output stays what it always was
            self._give_identifiers(identity)
        for c in self._customers:
            self._schedule_activity(c, start_ms)
            if c.churner:
                self._push(c.churn_at, _CHURN, c, None)

    # -- setup ---------------------------------------------------------------------------------
    def _make_customers(self, n: int, churn_rate: float, within_days: float) -> list[_Customer]:
        rng = self.rng
        # Exactly round(n * churn_rate) churners, chosen by the seed (not a Bernoulli per customer,
        # so tests can rely on the count).
        churners = set(rng.sample(range(n), round(n * churn_rate)))
        out = []
        for i in range(n):
            churner = i in churners
            churn_at = decline_from = 0
            if churner:
                churn_at = self.start_ms + int(rng.uniform(0.25, 1.0) * within_days * DAY_MS)
                decline_from = max(self.start_ms, churn_at - int(rng.uniform(7, 14) * DAY_MS))
            # Churners skew to the basic plan and short tenure: a realistic signal for churn models.
            plan = _weighted(rng, _PLANS if not churner else (("basic", 0.65), ("standard", 0.28), ("premium", 0.07)))
            tenure = int(rng.expovariate(1 / (30 if not churner else 12)))
            mu = _clip(rng.gauss(0.35 if not churner else 0.1, 0.2), -0.4, 0.9)
            out.append(_Customer(
                idx=i, cid=f"cust-{i:06d}", churner=churner, churn_at=churn_at, decline_from=decline_from,
                mu=mu, sat=_clip(mu + rng.gauss(0, _SPREAD), -1.0, 1.0), sat_at=self.start_ms,
                activity=rng.lognormvariate(-0.125, 0.5), app_user=rng.random() < 0.45,  # activity: mean 1
                plan=plan, tenure_months=min(tenure, 240), region=rng.choice(_REGIONS),
                age_band=rng.choice(_AGE_BANDS), preferred_channel=rng.choice(_CHANNEL_PREFS),
                opt_in=rng.random() < 0.7,
            ))
        return out

    def _give_identifiers(self, share: float) -> None:
        """Identifiers for exactly ``round(n * share)`` customers, chosen by the seed; a few share a device."""
        rng = self.rng
        chosen = sorted(rng.sample(range(len(self._customers)), round(len(self._customers) * share)))
        taken: set[str] = set()  # device ids and phones are unique unless shared on purpose
        people = []
        for i in chosen:
            c = self._customers[i]
            c.ident = self._new_identity(c, taken)
            people.append((c.cid, c.ident))
        pairs = min(len(people) // 2, max(1, round(len(people) * _P_SHARED_DEVICE)))
        picked = rng.sample(people, 2 * pairs)
        for (owner, owner_ids), (guest, guest_ids) in zip(picked[::2], picked[1::2], strict=True):
            guest_ids.anonymous_id = owner_ids.anonymous_id  # the guest's own device is never used; both identify on this one
            self._shared_devices[owner_ids.anonymous_id] = sorted((owner, guest))

    def _new_identity(self, c: _Customer, taken: set[str]) -> _Identity:
        rng = self.rng
        device = f"dev-{rng.getrandbits(64):016x}"
        while device in taken:
            device = f"dev-{rng.getrandbits(64):016x}"
        taken.add(device)
        # The customer index makes every address distinct, whatever the names drawn.
        email = f"{rng.choice(_FIRST_NAMES)}.{rng.choice(_LAST_NAMES)}{c.idx}@{rng.choice(_MAIL_DOMAINS)}"
        cc, areas, digits, trunk = rng.choice(_PHONE_PLANS)
        area = rng.choice(areas)
        width = digits - len(area)
        while True:
            number = str(rng.randrange(2 * 10 ** (width - 1), 10**width))  # subscriber numbers start 2-9
            if cc + area + number not in taken:
                break
        taken.add(cc + area + number)
        return _Identity(device, email, (cc, area, number, trunk), anonymous_sessions=1 + int(rng.expovariate(0.7)))

    def profiles(self) -> Iterator[dict[str, Any]]:
        """CRM profiles for ``cem.customers``: ``{customer_id, attributes}`` (all values strings).

        >>> next(JourneyGenerator(customers=2, seed=0).profiles())["customer_id"]
        'cust-000000'
        """
        for c in self._customers:
            yield {
                "customer_id": c.cid,
                "attributes": {
                    "plan": c.plan,
                    "tenure_months": str(c.tenure_months),
                    "region": c.region,
                    "age_band": c.age_band,
                    "preferred_channel": c.preferred_channel,
                    "marketing_opt_in": "true" if c.opt_in else "false",
                },
            }

    # -- the clock -----------------------------------------------------------------------------
    def _push(self, t: int, kind: int, c: _Customer, payload: Any) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, c, payload))

    def _event(self, c: _Customer, t: int, channel: str, type_: str, **fields: Any) -> dict[str, Any]:
        """Queue one event at ``t``; ``event_id`` is assigned when it is emitted (no gaps)."""
        event = {"event_id": None, "customer_id": c.cid, "occurred_at": t, "channel": channel, "type": type_}
        event.update(fields)
        heapq.heappush(self._heap, (t, next(self._seq), _EVENT, c, event))
        return event

    def _text_event(self, c: _Customer, t: int, channel: str, type_: str, tone: str, topic: str | None = None,
                    **fields: Any) -> dict[str, Any]:
        text = make_text(self.rng, tone, topic)
        if self.label_text:
            fields["attributes"] = {**fields.get("attributes", {}), "synthetic_tone": tone}
        return self._event(c, t, channel, type_, text=text, **fields)

    def _later(self, t: int, c: _Customer, fn: Callable[..., None], *args: Any) -> None:
        """Decide ``fn(c, t, *args)`` at time ``t``, with the customer's state as of then."""
        self._push(t, _ACTION, c, (fn, args))

    def _schedule_activity(self, c: _Customer, now: int) -> None:
        # Thinning: candidate gaps at the peak rate, accepted with the hour's weight.
        rng = self.rng
        gap = self._peak_gap_ms / c.activity
        if c.churner and now > c.decline_from:  # engagement falls as churn approaches
            gap *= 1.0 + 3.0 * self._decline(c, now)
        t = now
        while True:
            t += int(rng.expovariate(1.0) * gap) + 1
            if rng.random() < _DIURNAL[(t // HOUR_MS) % 24]:
                break
        self._push(t, _ACTIVITY, c, None)

    def events(self, n: int | None = None) -> Iterator[dict[str, Any]]:
        """Yield the next ``n`` events (forever if ``None``) in non-decreasing ``occurred_at``.

        The simulation continues across calls: ``events(5)`` twice gives the same ten events as
        ``events(10)`` once. Events are fresh dicts owned by the caller.
        """
        heap, pop = self._heap, heapq.heappop
        kpi, prefix = self._kpi, f"{self.run}{self.seed}"
        while n is None or n > 0:
            if not heap:
                return  # everyone churned
            t, _, kind, c, payload = pop(heap)
            if t >= self._next_day:
                self._summarise_days(t)
            if kind == _EVENT:
                if c.churned_at is not None and payload is not c.final and t >= c.churned_at:
                    continue  # queued before the churn decision: a cancelled customer says nothing more
                payload["event_id"] = f"{prefix}-{self._emitted}"
                self._emitted += 1
                self._now = t
                _accumulate(kpi, payload)
                type_ = payload["type"]
                if type_ == "complaint_opened" or type_ == "complaint_resolved" or payload is c.final:
                    self._record_case_or_churn(c, t, payload)
                ident = c.ident
                if ident is None or self._as_channel_knows_it(c, ident, t, payload):
                    c.touchpoints += 1
                if n is not None:
                    n -= 1
                yield payload
            elif c.stopping:
                continue
            elif kind == _ACTIVITY:
                self._activity(c, t)
                self._schedule_activity(c, t)
            elif kind == _ACTION:
                fn, args = payload
                fn(c, t, *args)
            else:
                self._churn(c, t)

    def _record_case_or_churn(self, c: _Customer, t: int, event: dict[str, Any]) -> None:
        if event is c.final:
            self._churned[c.cid] = t
        elif event["type"] == "complaint_opened":
            self._cases[event["case_id"]] = {
                "customer_id": c.cid, "channel": event["channel"], "opened_at": t, "resolved_at": None}
        else:
            case = self._cases.get(event["case_id"])
            if case is not None:
                case["resolved_at"] = t

    # -- identity ------------------------------------------------------------------------------
    def _as_channel_knows_it(self, c: _Customer, ident: _Identity, t: int, event: dict[str, Any]) -> bool:
        """Give an identity customer's touchpoint the identifiers its channel knows, as of its emission.

        Decided when emitted, so "before / after the identify" follows emission order exactly.
        Returns False if only junk is left (the pipeline dead-letters it: nobody to attribute it to).
        """
        if event["type"] == "identify":
            self._record_identify(c, t, event, ident)
            return True
        kind = self._identifier_only_kind(ident, event)
        if kind is None:
            if (event["channel"] in _WEB_CHANNELS and ident.identified_at is not None
                    and self.rng.random() < _P_KEEP_DEVICE):
                event["anonymous_id"] = ident.anonymous_id  # the logged-in app still sends its device id
            return True
        del event["customer_id"]  # dropped, not None: the channel does not know the customer
        event[kind] = self._written(ident, kind)
        return self._record_identifier_only(c, event, ident, kind)

    def _identifier_only_kind(self, ident: _Identity, event: dict[str, Any]) -> str | None:
        """The one identifier a touchpoint carries instead of ``customer_id``, or None to keep it."""
        channel, type_ = event["channel"], event["type"]
        if type_ in _ACCOUNT_TYPES:
            return None
        if channel in _WEB_CHANNELS:  # browsing: anonymous until the customer identifies
            return "anonymous_id" if ident.identified_at is None else None
        contact = _CONTACT_ONLY.get((channel, type_))
        if contact is None:
            return None
        kind, p = contact
        # Contact systems are linked to the customer by its identify; a few touchpoints come before it.
        return kind if self.rng.random() < (p if ident.identified_at is not None else _P_EARLY_CONTACT) else None

    def _written(self, ident: _Identity, kind: str) -> str:
        if kind == "email":
            return _written_email(self.rng, ident.email)
        if kind == "phone":
            return _written_phone(self.rng, ident.phone)
        return ident.anonymous_id

    def _record_identify(self, c: _Customer, t: int, event: dict[str, Any], ident: _Identity) -> None:
        if ident.identified_at is None:
            ident.identified_at = t
        for kind in _IDENTIFIER_KINDS:
            if kind in event:  # the first customer to identify with an identifier keeps it
                self._links.setdefault(f"{kind}:{ident.canonical(kind)}", c.cid)

    def _record_identifier_only(self, c: _Customer, event: dict[str, Any], ident: _Identity, kind: str) -> bool:
        rng = self.rng
        r = rng.random()
        if r < _P_JUNK_ONLY:  # the tracker lost the value: nothing usable is left
            event[kind] = rng.choice(_JUNK[kind])
            self._identifier_only[event["event_id"]] = None
            return False
        if r < _P_JUNK_ONLY + _P_JUNK_EXTRA:  # a junk value beside the good one must not link anything
            extra = rng.choice([k for k in _IDENTIFIER_KINDS if k != kind])
            event[extra] = rng.choice(_JUNK[extra])
        self._identifier_only[event["event_id"]] = c.cid
        if f"{kind}:{ident.canonical(kind)}" not in self._links:
            self._unlinked_at_arrival.append(event["event_id"])
        return True

    def _summarise_days(self, t: int) -> None:
        """Daily mean satisfaction of customers not yet churned (a trajectory summary)."""
        while self._next_day <= t:
            active = [c for c in self._customers if c.churned_at is None]
            churners = [c.sat for c in active if c.churner]
            others = [c.sat for c in active if not c.churner]
            self._daily.append({
                "day_ms": self._next_day,
                "active": len(active),
                "mean": _mean([c.sat for c in active]),
                "churners_mean": _mean(churners),
                "non_churners_mean": _mean(others),
            })
            self._next_day += DAY_MS

    # -- satisfaction --------------------------------------------------------------------------
    def _decline(self, c: _Customer, t: int) -> float:
        """How far into its decline a churner is, 0..1."""
        if not c.churner or t <= c.decline_from:
            return 0.0
        return min(1.0, (t - c.decline_from) / max(1, c.churn_at - c.decline_from))

    def _drift(self, c: _Customer, t: int) -> float:
        """Move satisfaction on to ``t`` (exact OU transition) and return it."""
        dt = (t - c.sat_at) / DAY_MS
        if dt > 0:
            mu = c.mu
            if c.churner and t > c.decline_from:
                mu += (_DECLINE_FLOOR - mu) * self._decline(c, t)
            decay = math.exp(-_THETA * dt)
            noise = _SPREAD * math.sqrt(1.0 - decay * decay) * self.rng.gauss(0.0, 1.0)
            c.sat = _clip(mu + (c.sat - mu) * decay + noise, -1.0, 1.0)
            c.sat_at = t
        return c.sat

    def _shift(self, c: _Customer, t: int, delta: float) -> None:
        self._drift(c, t)
        c.sat = _clip(c.sat + delta, -1.0, 1.0)

    # -- activities ----------------------------------------------------------------------------
    def _activity(self, c: _Customer, t: int) -> None:
        rng = self.rng
        sat = self._drift(c, t)
        decline = self._decline(c, t)
        # Unhappy customers give feedback and hit problems more often; declining churners most.
        fail_w = 0.03 * (2.0 if c.churner else 1.0) * (1.0 + 3.0 * decline)
        feedback_w = 0.03 + 0.04 * max(0.0, -sat) + 0.03 * decline
        r = rng.random() * (0.97 + fail_w + feedback_w)
        if r < 0.55:
            self._session(c, t, "mobile_app" if c.app_user else "web")
        elif r < 0.70:
            self._email_campaign(c, t)
        elif r < 0.76:
            self._store_visit(c, t)
        elif r < 0.80:
            self._survey(c, t, "relationship")
        elif r < 0.85:
            self._support_chat(c, t)
        elif r < 0.89:
            self._call(c, t)
        elif r < 0.92:
            self._event(c, t, "sms", "other", attributes={"kind": "promotion"})
        elif r < 0.97:
            self._session(c, t, "web" if c.app_user else "mobile_app")
        elif r < 0.97 + fail_w:
            self._failure(c, t, rng.choice(_OTHER_ISSUES), None)
        else:
            self._feedback(c, t)

    def _session(self, c: _Customer, t: int, channel: str) -> None:
        """A browsing session: login?, page views, searches, add to cart, maybe a purchase."""
        rng = self.rng
        sid = f"s{self.seed}-{next(self._ids)}"
        if c.ident is not None and not c.ident.identify_queued:
            t = self._anonymous_session_start(c, c.ident, t, channel, sid)
        elif rng.random() < 0.3:
            self._log_in(c, t, channel, sid)
            t += 2000 + int(rng.expovariate(1 / 8000))
        other = "web" if channel == "mobile_app" else "mobile_app"
        switch_at = rng.randint(1, 4) if rng.random() < 0.08 else -1
        views = 1 + int(rng.expovariate(0.5))
        for i in range(views):
            if i == switch_at:  # the customer picks the session up on the other device
                channel, other = other, channel
            if rng.random() < 0.25:
                self._event(c, t, channel, "search", session_id=sid, attributes={"query": rng.choice(_QUERIES)})
            else:
                self._event(c, t, channel, "page_view", session_id=sid, attributes={"page": rng.choice(_PAGES)})
            t += 3000 + int(rng.expovariate(1 / 30000))
        sat = c.sat
        if rng.random() < 0.03 + 0.04 * max(0.0, -sat):  # stuck: asks the website chat, same session
            self._text_event(c, t, "chat", "chat_message", tone_of(sat - 0.2, rng), session_id=sid)
            t += 20000 + int(rng.expovariate(1 / 60000))
        if rng.random() < 0.35:
            self._event(c, t, channel, "add_to_cart", session_id=sid)
            t += 5000 + int(rng.expovariate(1 / 40000))
            if rng.random() < 0.45 + 0.35 * sat:
                self._purchase(c, t, channel, sid)

    def _log_in(self, c: _Customer, t: int, channel: str, sid: str) -> None:
        if c.ident is None:
            self._event(c, t, channel, "login", session_id=sid)
        else:  # a login that sends the device id (and maybe the contacts) links them again
            self._identify(c, c.ident, t, channel, sid, "login")

    def _anonymous_session_start(self, c: _Customer, ident: _Identity, t: int, channel: str, sid: str) -> int:
        """Browse anonymously for the first sessions, then sign up; returns when browsing starts."""
        ident.anonymous_sessions -= 1
        if ident.anonymous_sessions >= 0:
            return t
        ident.identify_queued = True
        self._identify(c, ident, t, channel, sid, "sign_up")
        return t + 2000 + int(self.rng.expovariate(1 / 8000))

    def _identify(self, c: _Customer, ident: _Identity, t: int, channel: str, sid: str, method: str) -> None:
        rng = self.rng
        fields: dict[str, Any] = {"session_id": sid, "anonymous_id": ident.anonymous_id, "attributes": {"method": method}}
        if rng.random() < _P_IDENTIFY_EMAIL[method]:
            fields["email"] = _written_email(rng, ident.email)
        if rng.random() < _P_IDENTIFY_PHONE[method]:
            fields["phone"] = _written_phone(rng, ident.phone)
        self._event(c, t, channel, "identify", **fields)

    def _purchase(self, c: _Customer, t: int, channel: str, session_id: str | None) -> None:
        rng = self.rng
        cents = max(99, int(rng.lognormvariate(3.4, 0.8) * 100 + 0.5))
        order = f"o{self.seed}-{next(self._ids)}"
        fields: dict[str, Any] = {"amount": cents / 100, "currency": "EUR",
                                  "attributes": {"order_id": order, "items": str(1 + int(rng.expovariate(0.8)))}}
        if session_id is not None:
            fields["session_id"] = session_id
        self._event(c, t, channel, "purchase", **fields)
        if channel == "in_store":
            return
        # Fulfilment is decided later: whether it goes wrong depends on who the customer is then.
        self._later(t + int(rng.uniform(1, 4) * DAY_MS), c, self._delivery, order, cents, channel)

    def _delivery(self, c: _Customer, t: int, order: str, cents: int, channel: str) -> None:
        rng = self.rng
        p_fail = 0.06 * (2.0 if c.churner else 1.0) * (1.0 + 2.0 * self._decline(c, t))
        if rng.random() < p_fail:
            self._failure(c, t, rng.choice(_ORDER_ISSUES), (order, cents, channel))
            return
        if rng.random() < 0.4:
            self._event(c, t, "sms", "other", attributes={"kind": "delivery_update", "order_id": order})
        if rng.random() < 0.03:  # changed their mind: plain return
            self._later(t + int(rng.uniform(2, 10) * DAY_MS), c, self._refund, order, cents, channel)
        elif rng.random() < 0.12:  # transactional CSAT after delivery
            self._later(t + int(rng.uniform(1, 24) * HOUR_MS), c, self._survey, "transactional")

    def _refund(self, c: _Customer, t: int, order: str, cents: int, channel: str) -> None:
        rng = self.rng
        if rng.random() > 0.7:  # partial refund
            cents = max(1, int(cents * rng.uniform(0.2, 0.8)))
        refund_channel = channel if rng.random() < 0.6 else rng.choice(("web", "phone", "email"))
        self._event(c, t, refund_channel, "refund", amount=cents / 100, currency="EUR", attributes={"order_id": order})

    def _failure(self, c: _Customer, t: int, issue: str, order: tuple[str, int, str] | None) -> None:
        """A service failure: satisfaction drops; a complaint, a feedback or a contact may follow."""
        rng = self.rng
        self._shift(c, t, -rng.uniform(0.15, 0.45))
        sat = c.sat
        if issue == "app_crash":
            self._event(c, t, "mobile_app", "other", attributes={"kind": "app_crash"})
        if order is not None and rng.random() < 0.5:
            self._later(t + int(rng.uniform(2, 10) * DAY_MS), c, self._refund, *order)
        r = rng.random()
        p_complaint = 0.35 + 0.4 * max(0.0, -sat)
        at = t + int(rng.uniform(5 * MINUTE_MS, 2 * DAY_MS))
        if r < p_complaint:
            self._later(at, c, self._complaint, issue)
        elif r < p_complaint + 0.3:
            self._later(at, c, self._feedback, _ISSUES[issue])
        elif r < p_complaint + 0.5:
            channel = rng.choice(("phone", "chat", "email"))
            self._later(at, c, self._contact, channel, _ISSUES[issue])

    def _contact(self, c: _Customer, t: int, channel: str, topic: str) -> None:
        tone = tone_of(min(c.sat, 0.0), self.rng)
        self._text_event(c, t, channel, "support_contact", tone, topic)

    def _complaint(self, c: _Customer, t: int, issue: str) -> None:
        rng = self.rng
        channel = _weighted(rng, (("phone", 0.35), ("chat", 0.35), ("email", 0.3)))
        case = f"case-{self.seed}-{next(self._ids)}"
        if channel == "phone":  # the complaint is logged during a call
            self._event(c, t, "phone", "call", attributes={"duration_s": str(60 + int(rng.expovariate(1 / 400)))})
        self._text_event(c, t, channel, "complaint_opened", "negative", _ISSUES[issue], case_id=case,
                         attributes={"issue": issue})
        never = _P_NEVER * (2.0 if c.churner else 1.0)
        r = rng.random()
        if r < never:
            return
        hours = _RESOLVE_MEDIAN_H[channel] * rng.lognormvariate(0.0, _RESOLVE_SIGMA)
        if r < never + _P_LONG_TAIL:
            hours *= rng.uniform(4, 12)  # stuck in a queue: the SLA breaches
        self._later(t + int(hours * HOUR_MS) + 1, c, self._resolve, case, channel, hours)

    def _resolve(self, c: _Customer, t: int, case: str, channel: str, hours: float) -> None:
        rng = self.rng
        fill = _Fill(rng)
        self._event(c, t, channel, "complaint_resolved", case_id=case, text=rng.choice(_RESOLUTIONS).format_map(fill))
        # A quick fix wins back some goodwill; a slow one hardly any.
        self._shift(c, t, rng.uniform(0.1, 0.3) / (1.0 + hours / 24))
        if rng.random() < 0.5:
            self._later(t + int(rng.uniform(1, 24) * HOUR_MS), c, self._survey, "case")

    def _survey(self, c: _Customer, t: int, kind: str) -> None:
        """A survey answer: NPS for relationship surveys, CSAT (+ CES) after a purchase or case."""
        rng = self.rng
        sat = self._drift(c, t)
        gauss = rng.gauss
        fields: dict[str, Any] = {}
        if kind == "relationship":
            fields["nps"] = _clip(round(6.6 + 3.6 * sat + gauss(0, 1.3)), 0, 10)
            if rng.random() < 0.4:
                fields["csat"] = _clip(round(3.4 + 1.7 * sat + gauss(0, 0.7)), 1, 5)
            if rng.random() < 0.25:
                fields["ces"] = _clip(round(3.2 - 2.0 * sat + gauss(0, 0.9)), 1, 7)
        else:
            fields["csat"] = _clip(round(3.4 + 1.7 * sat + gauss(0, 0.7)), 1, 5)
            if kind == "case" or rng.random() < 0.3:
                fields["ces"] = _clip(round(3.2 - 2.0 * sat + gauss(0, 0.9)), 1, 7)
        fields["attributes"] = {"survey": kind}
        channel = "survey" if rng.random() < 0.6 else "email"
        if rng.random() < 0.75:  # a comment, in the tone of the scores
            score = _score_tone(fields)
            self._text_event(c, t, channel, "survey_response", tone_of(score, rng, 0.15), **fields)
        else:
            self._event(c, t, channel, "survey_response", **fields)

    def _feedback(self, c: _Customer, t: int, topic: str | None = None) -> None:
        rng = self.rng
        sat = self._drift(c, t)
        channel = _weighted(rng, (("web", 0.3), ("mobile_app", 0.25), ("social", 0.25), ("email", 0.2)))
        tone = tone_of(sat if topic is None else min(sat, -0.1), rng)
        self._text_event(c, t, channel, "feedback", tone, topic)

    def _support_chat(self, c: _Customer, t: int) -> None:
        rng = self.rng
        sid = f"s{self.seed}-{next(self._ids)}"
        fill = _Fill(rng)
        self._event(c, t, "chat", "chat_message", session_id=sid, text=rng.choice(_CHAT_QUESTIONS).format_map(fill))
        for _ in range(int(rng.expovariate(1.0))):
            t += 30000 + int(rng.expovariate(1 / 60000))
            self._text_event(c, t, "chat", "chat_message", tone_of(self._drift(c, t), rng), session_id=sid)
        if rng.random() < 0.5:
            t += 20000 + int(rng.expovariate(1 / 30000))
            self._event(c, t, "chat", "chat_message", session_id=sid, text=rng.choice(_CHAT_THANKS))

    def _call(self, c: _Customer, t: int) -> None:
        rng = self.rng
        attributes = {"duration_s": str(30 + int(rng.expovariate(1 / 240))), "direction": "inbound"}
        if rng.random() < 0.4:  # a transcript snippet
            self._text_event(c, t, "phone", "call", tone_of(self._drift(c, t) - 0.1, rng), attributes=attributes)
        else:
            self._event(c, t, "phone", "call", attributes=attributes)

    def _email_campaign(self, c: _Customer, t: int) -> None:
        rng = self.rng
        if not c.opt_in and rng.random() < 0.7:
            self._event(c, t, "email", "email_open", attributes={"campaign": "service"})
            return
        campaign = f"cmp-{(t - self.start_ms) // (7 * DAY_MS)}"  # one campaign a week
        self._event(c, t, "email", "email_open", attributes={"campaign": campaign})
        if rng.random() < 0.3 * (1.0 - self._decline(c, t)):
            t += 5000 + int(rng.expovariate(1 / 30000))
            self._event(c, t, "email", "email_click", attributes={"campaign": campaign})
            if rng.random() < 0.5:
                self._session(c, t + 2000 + int(rng.expovariate(1 / 5000)), "mobile_app" if c.app_user else "web")

    def _store_visit(self, c: _Customer, t: int) -> None:
        rng = self.rng
        if rng.random() < 0.7:
            self._purchase(c, t, "in_store", None)
        elif rng.random() < 0.5:
            self._text_event(c, t, "in_store", "feedback", tone_of(self._drift(c, t), rng), "staff")
        else:
            self._event(c, t, "in_store", "other", attributes={"kind": "visit"})

    def _churn(self, c: _Customer, t: int) -> None:
        """The end of a churner: maybe a last complaint in words, then the cancellation."""
        rng = self.rng
        c.stopping = True
        if rng.random() < 0.4:
            self._text_event(c, t, rng.choice(("web", "email", "social")), "feedback", "negative")
        t += int(rng.uniform(2, 30) * MINUTE_MS)
        type_ = "subscription_cancelled" if rng.random() < 0.75 else "account_closed"
        channel = _weighted(rng, (("web", 0.4), ("phone", 0.3), ("email", 0.2), ("mobile_app", 0.1)))
        fields: dict[str, Any] = {"attributes": {"reason": rng.choice(("service", "price", "competitor", "moved"))}}
        if rng.random() < 0.5:
            fields["text"] = rng.choice(_CANCEL_TEXTS)
        c.final = self._event(c, t, channel, type_, **fields)
        c.churned_at = t

    # -- ground truth --------------------------------------------------------------------------
    def ground_truth(self) -> dict[str, Any]:
        """What the events generated so far must add up to.

        * ``kpi``: per channel, the columns of ``cem.kpi_minute`` summed over all minutes (same as
          :func:`kpi_totals` over the same events);
        * ``churned``: customer id -> ``occurred_at`` of its terminal event; ``churners``: every
          customer planned to churn (some may not have yet);
        * ``cases``: case id -> customer, channel, opened_at, resolved_at (None if still open);
        * ``satisfaction``: current means and a daily trajectory of mean latent satisfaction;
        * ``identity``: identity stitching (empty maps and lists but ``touchpoints`` when ``identity``
          is 0):

          - ``identifiers``: customer id -> its canonical ``anonymous_id``, ``email`` (lower case) and
            ``phone`` (E.164), for every customer whose traffic uses identifiers;
          - ``events``: event id -> true customer id of every identifier-only touchpoint (no
            ``customer_id``); None for the junk-only ones, which a pipeline must dead-letter as
            missing an identifier (``kpi`` still counts them: it counts every emitted event);
          - ``unlinked_at_arrival``: the identifier-only event ids whose identifier no emitted
            ``identify`` had carried yet when they arrived;
          - ``identified``: the customers that have emitted an ``identify`` (the stitched ones);
          - ``shared_anonymous_ids``: device id -> the customers that use it (both identify with it);
          - ``touchpoints``: customer id -> its touchpoints so far, identifier-only ones included and
            junk-only ones not: what a perfect stitcher attributes to each customer in the end.

        What stitching can recover: an identifier-only touchpoint whose identifier an earlier
        ``identify`` linked is attributable when it arrives; one in ``unlinked_at_arrival`` cannot
        be, only afterwards, once an ``identify`` links its identifier (if ever: some customers never
        identify, and an ``identify`` gives the e-mail or the phone only sometimes). A shared device
        belongs to whoever identified with it first, so the other customer's anonymous touchpoints
        on it are misattributed (or, under a refuse policy, unattributed); and a junk-only
        touchpoint names nobody at all.
        """
        active = [c for c in self._customers if c.churned_at is None]
        return {
            "events": self._emitted,
            "event_time_ms": self._now,
            "kpi": {ch: _kpi_row(row) for ch, row in sorted(self._kpi.items())},
            "churned": dict(self._churned),
            "churners": sorted(c.cid for c in self._customers if c.churner),
            "cases": {k: dict(v) for k, v in self._cases.items()},
            "satisfaction": {
                "mean": _mean([c.sat for c in active]),
                "churners_mean": _mean([c.sat for c in self._customers if c.churner]),
                "non_churners_mean": _mean([c.sat for c in self._customers if not c.churner]),
                "daily": [dict(d) for d in self._daily],
            },
            "identity": self._identity_truth(),
        }

    def _identity_truth(self) -> dict[str, Any]:
        identifiers = {}
        identified = []
        for c in self._customers:
            if c.ident is not None:
                identifiers[c.cid] = {kind: c.ident.canonical(kind) for kind in ("anonymous_id", "email", "phone")}
                if c.ident.identified_at is not None:
                    identified.append(c.cid)
        return {
            "identifiers": identifiers,
            "events": dict(self._identifier_only),
            "unlinked_at_arrival": list(self._unlinked_at_arrival),
            "identified": identified,
            "shared_anonymous_ids": {device: list(cids) for device, cids in self._shared_devices.items()},
            "touchpoints": {c.cid: c.touchpoints for c in self._customers},
        }


# ---------------------------------------------------------------------------------------------
# KPI ground truth
# ---------------------------------------------------------------------------------------------


def _cents(amount: float) -> int:
    return round(amount * 100)


def _decimal(amount: float) -> Decimal:
    return Decimal(str(amount))  # what clickhouse-connect writes into a Decimal column


def _accumulate(kpi: dict[str, list[Any]], e: dict[str, Any], money: Callable[[float], Any] = _cents, zero: Any = 0) -> None:
    """Add one event to its channel's row of ``KPI_COLUMNS`` counters, by the rules of :func:`kpi_totals`.

    Amounts count as ``money(amount)``: by default integer cents (exact for 2-decimal amounts); a
    new row's money columns start at ``zero``.
    """
    row = kpi.get(e["channel"])
    if row is None:
        row = kpi[e["channel"]] = [zero if col in _MONEY else 0 for col in KPI_COLUMNS]
    row[0] += 1
    type_ = e["type"]
    if type_ == "purchase" or type_ == "refund":
        amount = e.get("amount")
        if amount is not None:
            value = money(amount)
            if type_ == "purchase":
                row[1] += value
            else:
                row[1] -= value
                row[2] += value
    elif type_ == "complaint_opened":
        row[10] += 1
    elif type_ == "complaint_resolved":
        row[11] += 1
    csat, nps, ces = e.get("csat"), e.get("nps"), e.get("ces")
    if csat is not None:
        row[3] += 1
        row[4] += csat_satisfied(csat)
    if nps is not None:
        row[5] += 1
        row[6] += is_promoter(nps)
        row[7] += is_detractor(nps)
    if ces is not None:
        row[8] += 1
        row[9] += ces


def _kpi_row(row: list[int]) -> dict[str, int | float]:
    return {col: (row[i] / 100 if col in _MONEY else row[i]) for i, col in enumerate(KPI_COLUMNS)}


def kpi_totals(events: Iterable[dict[str, Any]], exact: bool = False) -> dict[str, dict[str, int | float | Decimal]]:
    """Per-channel totals of the ``cem.kpi_minute`` columns over ``events``, as ClickHouse computes them.

    Revenue is purchase amounts minus refund amounts, refunds the refund amounts (only for those
    two types, like the materialized view); scores count wherever they appear, whatever the type
    (the generator's ground truth adds events up the same way). Money is summed as
    ``Decimal(str(amount))`` (what clickhouse-connect writes into the Decimal column), returned as
    a float of the exact 2-decimal sum, or as ``Decimal`` if ``exact``.

    >>> evs = [{"channel": "web", "type": "purchase", "amount": 0.1},
    ...        {"channel": "web", "type": "purchase", "amount": 0.2},
    ...        {"channel": "web", "type": "refund", "amount": 0.05, "nps": 10},
    ...        {"channel": "phone", "type": "complaint_opened", "csat": 2, "ces": 6}]
    >>> t = kpi_totals(evs)
    >>> t["web"]["revenue"], t["web"]["refunds"], t["web"]["promoters"], t["phone"]["ces_sum"]
    (0.25, 0.05, 1, 6)
    >>> kpi_totals(evs, exact=True)["web"]["revenue"]
    Decimal('0.25')
    """
    rows: dict[str, list[Any]] = {}
    zero = Decimal(0)
    for e in events:
        _accumulate(rows, e, _decimal, zero)
    out = {channel: dict(zip(KPI_COLUMNS, row, strict=True)) for channel, row in rows.items()}
    if not exact:
        for row in out.values():
            for col in _MONEY:
                row[col] = round(float(row[col]), 2)
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------
# Files and bad records
# ---------------------------------------------------------------------------------------------


def write_jsonl(path: str | Path, events: Iterable[dict[str, Any]]) -> int:
    """Write events as JSON lines (UTF-8, compact, key order kept); returns how many.

    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     write_jsonl(os.path.join(d, "e.jsonl"), JourneyGenerator(customers=3, seed=2).events(10))
    10
    """
    count = 0
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for e in events:
            fh.write(json.dumps(e, ensure_ascii=False, separators=(",", ":")))
            fh.write("\n")
            count += 1
    return count


def inject_bad_records(reference_ms: int = DEFAULT_START_MS, seed: int = 0) -> list[tuple[bytes | None, bytes, str]]:
    """One bad ``(key, value, expected_reason)`` record per dead-letter reason, varied by ``seed``.

    Send them with Kafka record timestamp ``reference_ms`` (e.g. now, for a live broker): the
    ``future_timestamp`` record is 48 h after it, every other record is at it. Values are JSON
    unless the reason is about framing (``unknown_schema`` is Avro single-object framing with an
    unregistered fingerprint).

    >>> bad = inject_bad_records(1_767_225_600_000, seed=1)
    >>> from schemas.contract import INPUT_REASONS
    >>> sorted(r for _, _, r in bad) == sorted(m.value for m in INPUT_REASONS)
    True
    >>> inject_bad_records(seed=1) == bad   # reference_ms defaults to 2026-01-01T00:00Z
    True
    """
    rng = random.Random(f"bad-records-{seed}")
    cid = f"cust-{rng.randrange(1_000_000):06d}"
    key = cid.encode()

    def good(**changes: Any) -> dict[str, Any]:
        record = {"event_id": f"bad-{seed}-{rng.randrange(10**9)}", "customer_id": cid, "occurred_at": reference_ms,
                  "channel": rng.choice(("web", "mobile_app", "survey")), "type": "survey_response"}
        record.update(changes)
        return {k: v for k, v in record.items() if v is not _DROP}

    def js(record: dict[str, Any]) -> bytes:
        return json.dumps(record, separators=(",", ":")).encode()

    truncated = js(good())[: rng.randint(5, 30)]
    undecodable = rng.choice((truncated, b"\x02" + rng.randbytes(12), b"[1, 2, 3]", b"\x01garbage"))
    fingerprint = rng.randbytes(8)  # an unregistered writer schema (2^-64 chance of colliding)
    oversize_text = "x" * (MAX_RECORD_BYTES + rng.randint(1, 4096))
    records: list[tuple[bytes | None, bytes, Reason]] = [
        (key, undecodable, Reason.UNDECODABLE),
        (key, b"\xc3\x01" + fingerprint + rng.randbytes(24), Reason.UNKNOWN_SCHEMA),
        (key, js(good(**{rng.choice(("channel", "type", "occurred_at", "event_id")): _DROP})), Reason.MISSING_FIELD),
        (key, js(good(event_id=rng.choice(("", "   ")))), Reason.EMPTY_FIELD),
        (key, js(good(**rng.choice(({"nps": "nine"}, {"csat": 4.5}, {"amount": "12.50"}, {"customer_id": 123})))),
         Reason.WRONG_TYPE),
        (key, js(good(**rng.choice(({"nps": 11}, {"csat": 0}, {"ces": 8}, {"amount": -5.0})))), Reason.OUT_OF_RANGE),
        (key, js(good(occurred_at=rng.choice(("2026-01-01T10:00:00", "yesterday", -1)))), Reason.BAD_TIMESTAMP),
        (key, js(good(occurred_at=reference_ms + 48 * HOUR_MS)), Reason.FUTURE_TIMESTAMP),
        (key, js(good(text=oversize_text)), Reason.OVERSIZE),
        (key, js(good(**rng.choice(({"channel": "fax"}, {"type": "teleport"}, {"channel": "WEB"})))), Reason.UNKNOWN_ENUM),
        (f"cust-{rng.randrange(1_000_000, 2_000_000)}".encode(), js(good()), Reason.KEY_MISMATCH),
        (key, js(good(**rng.choice(({"event_id": "e" * 300}, {"session_id": "s" * 300}, {"currency": "x" * 65},
                                    {"attributes": {f"k{i}": "v" for i in range(65)}})))), Reason.TOO_LONG),
    ]
    return [(k, v, r.value) for k, v, r in records]


_DROP = object()  # marks a field to leave out of a bad record


@dataclass(frozen=True)
class Poison:
    """One record that once halted the pipeline, and where it must end now."""

    name: str
    key: bytes | None
    value: bytes
    timestamp_ms: int
    reason: Reason | None  # its dead letter's reason; None: a valid touchpoint (``event``) to process
    event: dict[str, Any] | None = None


def poison_records(reference_ms: int = DEFAULT_START_MS) -> list[Poison]:
    """Each class of record that could halt a partition if the per-record step were not total,
    as JSON a producer could send: NaN/Infinity scores, nesting 100,000 deep, lone surrogates,
    amounts no column holds, times in the year 9999 (record timestamp too), valid touchpoints that
    span more than 100 months, undecodable records whose record timestamps span 101 months.

    >>> poisons = poison_records()
    >>> sorted({p.reason.value if p.reason else "valid" for p in poisons})
    ['bad_timestamp', 'out_of_range', 'undecodable', 'valid']
    """
    def record(name: str, **fields: Any) -> dict[str, Any]:
        return {"event_id": f"poison-{name}", "customer_id": f"poison-{name}", "occurred_at": reference_ms,
                "channel": "survey", "type": "survey_response", **fields}

    def raw(event: dict[str, Any], **literal: str) -> bytes:
        # JSON that Python's json module writes (NaN) or only a hostile producer would (literal text).
        text = json.dumps(event, separators=(",", ":"))
        for name, value in literal.items():
            text = text[:-1] + f',"{name}":{value}}}'
        return text.encode()

    year_9999 = 253_370_764_800_000
    out: list[Poison] = []
    for score in ("csat", "nps", "ces"):
        for literal in ("NaN", "Infinity", "-Infinity"):
            name = f"{score}-{literal.strip('-').lower()}{'-neg' if literal[0] == '-' else ''}"
            e = record(name)
            out.append(Poison(name, e["customer_id"].encode(), raw(e, **{score: literal}), reference_ms, Reason.UNDECODABLE))
    deep = record("deep")
    out.append(Poison("deep", b"poison-deep", raw(deep, extra="[" * 100_000 + "]" * 100_000), reference_ms, Reason.UNDECODABLE))
    for field in ("text", "event_id"):
        e = record(f"surrogate-{field}")
        out.append(Poison(f"surrogate-{field}", e["customer_id"].encode(),
                          raw({k: v for k, v in e.items() if k != field}, **{field: '"\\ud800"'}), reference_ms,
                          Reason.UNDECODABLE))
    big = record("amount-1e20", type="purchase", amount=1e20)
    out.append(Poison("amount-1e20", b"poison-amount-1e20", json.dumps(big).encode(), reference_ms, Reason.OUT_OF_RANGE))
    far = record("year-9999", occurred_at=year_9999)
    out.append(Poison("year-9999", b"poison-year-9999", json.dumps(far).encode(), year_9999, Reason.BAD_TIMESTAMP))
    for month in range(101):  # valid touchpoints, one a month back from the reference: > 100 months in a batch
        e = record(f"month-{month}", type="page_view", channel="web", occurred_at=reference_ms - month * 31 * DAY_MS)
        out.append(Poison(e["event_id"], e["customer_id"].encode(), json.dumps(e).encode(), e["occurred_at"], None, e))
    for month in range(101):  # undecodable, with record timestamps across 101 months
        out.append(Poison(f"garbage-{month}", b"poison-garbage", b"\x01not a record", reference_ms - month * 31 * DAY_MS,
                          Reason.UNDECODABLE))
    return out


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

_Number = TypeVar("_Number", int, float)


def _clip(x: _Number, low: _Number, high: _Number) -> _Number:
    return low if x < low else high if x > high else x


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None


def _weighted(rng: random.Random, options: tuple[tuple[str, float], ...]) -> str:
    """Pick from ``(value, weight)`` pairs whose weights sum to 1."""
    r = rng.random()
    for value, weight in options:
        r -= weight
        if r < 0:
            return value
    return options[-1][0]


def _score_tone(fields: dict[str, Any]) -> float:
    """A [-1, 1] score from survey answers, so a comment agrees with the numbers beside it.

    >>> _score_tone({"nps": 10}), _score_tone({"csat": 1}), _score_tone({"nps": 8, "ces": 1})
    (1.0, -1.0, 0.7143)
    """
    parts = []
    if "nps" in fields:
        parts.append((fields["nps"] - 6.5) / 3.5)
    if "csat" in fields:
        parts.append((fields["csat"] - 3) / 2)
    if "ces" in fields:
        parts.append((4 - fields["ces"]) / 3)
    return round(float(_clip(sum(parts) / len(parts), -1.0, 1.0)), 4)
