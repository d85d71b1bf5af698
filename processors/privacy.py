"""Redaction of personal data typed into customers' free text, before anything stores or publishes it.

Customers type e-mail addresses, phone numbers, card numbers and IBANs into survey comments, chats and
call transcripts. :class:`Redactor` replaces each one by a typed placeholder (:data:`PLACEHOLDERS`)
and leaves everything else byte for byte as it was, so order numbers, dates, amounts and the
sentiment of the text survive:

>>> redact("Call me on +44 20 7946 0958 or write to jane.doe+cem@example.co.uk, order #123456789")
'Call me on [phone] or write to [email], order #123456789'
>>> redact("Card 4111 1111 1111 1111, refund to DE89 3704 0044 0532 0130 00 by 15.01.2026 please")
'Card [card], refund to [iban] by 15.01.2026 please'

What each recogniser covers, and deliberately does not:

* **e-mail**: ``local@domain.tld`` with plus-addressing, dots, subdomains, any case, Unicode (IDN)
  labels; and the obfuscations customers type: ``jane (at) example (dot) com``, ``jane[at]example.com``,
  ``jane @ example.com``, ``jane@example dot com``, and the bare word form ``name dot surname at gmail
  dot com`` -- the last only when the domain is a common mail provider, because "I shopped at amazon dot
  com" is not an address. Not covered: addresses without a dot in the domain (``jane@localhost``),
  quoted local parts, IP-literal domains.
* **IBAN**: a country of the SWIFT IBAN registry, its two check digits and the BBAN, compact or in
  groups (spaces or dashes), any case; **mod-97 checked** and exactly the registry's length for that
  country, so an invalid or truncated one is left alone. Not covered: countries the table below does
  not list (a country that joins the registry needs a line in ``_IBAN_LENGTHS``).
* **card**: 13-19 digits, compact or grouped by spaces, dashes or (in fours) dots, **Luhn-checked**,
  never starting with 0 (no network issues those; national phone numbers do). Context is ignored on
  purpose: "order 4111111111111111" is redacted, because a real card number must never survive and a
  Luhn-valid order number is a small loss. The exceptions are narrow: a number named as an
  identifier with a check digit of its own (IMEI, EAN, GTIN, UPC, ISBN, SKU, barcode); a compact
  13-digit number not starting with 4 (only Visa issued those; a millisecond timestamp or a barcode
  is likelier); grouped numbers that do not look issued -- they need a first group of four (4-4-4-4,
  Amex 4-6-5, 4-4-4-4-3) or to be the whole digit run with groups of three or more, and a network's
  first digit (2-6; 1 with 15 digits for UATP; 9792 for Troy), so grouped tracking numbers (USPS
  9400..., FedEx 7...) are not cards. A card followed by its expiry or CVV in the same digit run is
  found. Not covered: a card glued to other digits with no separator (a different, longer number).
* **phone**: 7-15 digits, E.164 (``+4915112345678``), with spaces, dashes, dots, slashes and
  parentheses (``+44 (0)20 7946 0958``, ``(555) 123-4567``, ``06 12 34 56 78``), ``00`` prefixes,
  digits read out one by one in transcripts (``0 7 7 0 0 9 0 0 1 2 3``). Not phones: numbers after a
  word that names them otherwise (order, ref, invoice, ticket, case, tracking, account, version...),
  dates (2026-01-15, 15/01/2026, 15.01.2026, also inside a longer run), times, amounts (currency
  before or after, decimals, thousands grouping such as ``2 500 000`` or ``1.234.567``), IPv4
  addresses, version numbers, ZIP+4 codes, lists of years, numbers glued to letters or ``#``, the
  digits of a mistyped IBAN, and a number written exactly like one named otherwise earlier in the
  text ("item no. 55-123-4567 but got 55-123-4568"). A compact 7-9 digit number not starting with 0
  is a phone only after a word like "call", "phone", "number" or "mobile" (otherwise it is far more
  often a reference); so is a compact one starting with 1, unless it has 11 digits (1 + a North
  American number): 1767225600 is a Unix time. Not covered: numbers spelled in words ("oh seven
  seven..."), extensions ("x204" stays).
* **extras**: configured regexes (:meth:`Redactor.from_spec`), replaced by ``[name]``.

Passes run in this order, each on the previous one's output: e-mail, IBAN, card, phone, extras.
Placeholders contain no digit and no ``@``, so a later pass cannot match inside an earlier span, and
extras never match across a placeholder: every span gets exactly one placeholder, and the output is
the input with whole spans replaced. A placeholder is a new neighbour for the text beside it, so the
passes run again, where they may now decide otherwise, until nothing changes: redacting the output
again changes nothing (rarely a second round finds anything).

Raw payloads (:meth:`Redactor.redact_bytes`): binary framing glues bytes that read as digits,
letters or "+" to the text (an Avro string's length prefix), so there IBANs and card numbers may
touch anything and a card may carry up to two stray digits at either end.

Cost: most texts hold no personal data, and a text without ``@``, without seven digits and without
a spelled "at" is returned as it is after three cheap scans (``benchmarks/privacy.py`` measures it).
Every pattern is linear in the text (possessive or bounded repetition, windows of bounded size), so
no input can stall the stream; :meth:`Redactor.redact` never raises for any ``str``.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import NamedTuple

PLACEHOLDERS: dict[str, str] = {"email": "[email]", "phone": "[phone]", "card": "[card]", "iban": "[iban]"}

Span = tuple[int, int]
Finder = Callable[[str], list[Span]]

_NAME = re.compile(r"[a-z][a-z0-9_]*")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_DIGITS = re.compile(r"\d+")

# ---------------------------------------------------------------------------------------------------
# Pre-check: every IBAN, card and phone has seven digits; every e-mail an "@" or a spelled "at"
# (_SPELLED_AT_HINT, below).
# ---------------------------------------------------------------------------------------------------

_SEVEN_DIGITS = re.compile(r"(?:\D*+\d){7}")  # used with .match(); possessive, so one linear scan
_THIRTEEN_DIGITS = re.compile(r"(?:\D*+\d){13}")  # a card's minimum (an IBAN may have 12: NL)

# ---------------------------------------------------------------------------------------------------
# E-mail
# ---------------------------------------------------------------------------------------------------

# An address is found from its "@" (str.find: no regex scans the whole text): the local part is
# matched backwards from it, within 64 characters (RFC 5321), the domain forwards. The local part
# starts where a run of local-part characters starts; an apostrophe is allowed inside it (o'neil@),
# not before it ('jane@example.com').
_LOCAL_PART = re.compile(r"(?<![\w.%+-])[\w.%+-][\w.%+'-]{0,63}+\Z")
_DOMAIN = re.compile(r"(?:[\w-]++\.)+[^\W\d_][\w-]*[^\W_]")

_SPELLED_DOT = r"\s*+[\[({<]\s*+dot\s*+[\])}>]\s*+|\s++dot\s++"
_DOT = rf"(?:\.|{_SPELLED_DOT})"
_AT_SIGN = r"\s*+[\[({<]\s*+at\s*+[\])}>]\s*+|\s*+@\s*+"  # "(at)", "[ at ]", " @ "
_PART = r"[\w%+-]{1,64}+"
# The bare word "at" is everyday English: it makes an address only before one of these domains.
_MAIL_PROVIDERS = (
    "gmail|googlemail|yahoo|ymail|hotmail|outlook|live|msn|aol|icloud|gmx|web|t-online|freenet|orange"
    "|wanadoo|laposte|free|sfr|btinternet|sky|virginmedia|protonmail|proton|yandex|example"
)
# Words that precede "at" in ordinary sentences ("I was at gmail dot com"), never a mailbox name here.
_NOT_A_MAILBOX = _words(
    """i me we you he she it they us them was were is are am be been here there look looked shop shopped
    bought ordered order signed logged registered arrived not only even just mail email write wrote
    contact reach account phone"""
)
_SPELLED_EMAIL = re.compile(
    rf"(?<![\w.%+'’-])(?P<local>{_PART}(?:{_DOT}{_PART}){{0,8}})"
    rf"(?:{_AT_SIGN}|\s++at\s++(?=(?:{_MAIL_PROVIDERS}){_DOT}))"
    rf"(?:[\w-]{{1,63}}+{_DOT}){{1,4}}[^\W\d_]{{2,24}}+(?![\w-])",
    re.IGNORECASE,
)
# Run on the lower-cased text: a pattern that starts with a literal is searched for fast, and most
# texts have no "at" that could begin an address ("that", "at all" fail at once).
_SPELLED_AT_HINT = re.compile(rf"at(?<=[\s\[({{<]at)(?:\s*+[\])}}>]|\s++(?:{_MAIL_PROVIDERS})[\s.\[({{<])")


_SPELLED_REACH = 160  # characters around an "at" searched for the address it is part of


def _email_spans(text: str) -> list[Span]:
    spans: list[Span] = []
    at = text.find("@")
    while at != -1:
        local = _LOCAL_PART.search(text, max(0, at - 64), at)
        domain = _DOMAIN.match(text, at + 1) if local else None
        if local and domain:
            spans.append((local.start(), domain.end()))
        at = text.find("@", domain.end() if domain else at + 1)
    return spans


def _spelled_email_spans(text: str) -> list[Span]:
    """Obfuscated addresses, searched for only around an "@" or a spelled "at": the pattern is costly
    to try at every word of a long text, and the at-sign of an address is rare and quick to find."""
    spans: list[Span] = []
    done = 0
    for lo, hi in _windows(_at_signs(text), _SPELLED_REACH, len(text)):
        for m in _SPELLED_EMAIL.finditer(text, max(lo, done), hi):
            # A match that runs into the window's end may be cut short (its last label, say).
            if m["local"].lower() not in _NOT_A_MAILBOX and (m.end() < hi or hi == len(text)):
                spans.append(m.span())
                done = m.end()
    return spans


def _at_signs(text: str) -> list[int]:
    lower = text.lower()
    if len(lower) != len(text):  # lower-casing changed lengths ("İ"): positions would not match
        return list(range(0, len(text) + _SPELLED_REACH, _SPELLED_REACH))  # so: everywhere
    positions = [m.start() for m in _SPELLED_AT_HINT.finditer(lower)]
    at = text.find("@")
    while at != -1:
        positions.append(at)
        at = text.find("@", at + 1)
    return sorted(positions)


def _windows(positions: list[int], reach: int, size: int) -> list[Span]:
    """Merged ``[p - reach, p + reach]`` windows around sorted positions, within ``[0, size]``."""
    windows: list[Span] = []
    for p in positions:
        lo, hi = max(0, p - reach), min(size, p + reach)
        if windows and lo <= windows[-1][1]:
            windows[-1] = (windows[-1][0], max(hi, windows[-1][1]))
        else:
            windows.append((lo, hi))
    return windows


# ---------------------------------------------------------------------------------------------------
# IBAN
# ---------------------------------------------------------------------------------------------------

# SWIFT IBAN registry: country -> IBAN length.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21,
    "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28,
    "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22,
    "RU": 33, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25,
    "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip
# A candidate starts at the check digits, after a country code that starts a word (a pattern that
# starts with a digit is scanned fast: letters are skipped without trying a match), and runs on past
# the IBAN (the next words may be alphanumeric too): the country's length decides where it ends.
_IBAN_CANDIDATE = re.compile(r"[0-9](?<=(?<![^\W_])[A-Za-z]{2}[0-9])[0-9](?:[ \-\u00a0]?[A-Za-z0-9]){11,30}+")
_IBAN_CANDIDATE_RAW = re.compile(r"[0-9](?<=[A-Za-z]{2}[0-9])[0-9](?:[ \-\u00a0]?[A-Za-z0-9]){11,30}+")


def iban_valid(iban: str) -> bool:
    """The ISO 13616 check: move the first four characters to the end, read letters as 10-35, mod 97 == 1.

    >>> iban_valid("GB29 NWBK 6016 1331 9268 19"), iban_valid("GB28 NWBK 6016 1331 9268 19")
    (True, False)
    """
    compact = iban.replace(" ", "").replace("-", "").upper()
    if not (15 <= len(compact) <= 34 and compact.isascii() and compact.isalnum()):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _iban_spans(text: str, raw: bool = False) -> list[Span]:
    pattern = _IBAN_CANDIDATE_RAW if raw else _IBAN_CANDIDATE
    spans: list[Span] = []
    pos = 0
    while (m := pattern.search(text, pos)) is not None:
        span = _iban_at(text, m, raw)
        spans += [span] if span else []
        pos = span[1] if span else m.start() + 1  # a rejected candidate may hide one that starts inside
    return spans


def _iban_at(text: str, m: re.Match[str], raw: bool) -> Span | None:
    start = m.start() - 2
    length = _IBAN_LENGTHS.get(text[start : m.start()].upper())
    if length is None:
        return None
    chars = [text[start], text[start + 1]]
    end = m.start()
    for end, c in enumerate(m.group(), m.start() + 1):  # noqa: B007 - where the code stops, read below
        if c.isalnum():
            chars.append(c)
            if len(chars) == length:
                break
    if len(chars) < length:
        return None
    # Glued to more letters or digits, it is a longer code that merely starts like an IBAN; raw
    # payloads glue field bytes to text, so there the check digits alone decide.
    if not raw and end < len(text) and text[end].isalnum():
        return None
    return (start, end) if iban_valid("".join(chars)) else None


# ---------------------------------------------------------------------------------------------------
# Payment cards
# ---------------------------------------------------------------------------------------------------

_CARD_SEP = r"(?:[ \u00a0]?[\-.][ \u00a0]?|[ \u00a0]{1,2})"
# Starts with a digit that no digit precedes, and spans 13 characters at least.
_DIGIT_RUN = re.compile(rf"\d(?<!\d\d)(?=[\d \-.\u00a0]{{12}})\d*+(?:{_CARD_SEP}\d++)*+")
# Identifiers as long as card numbers, with a check digit of their own (an IMEI's is Luhn's): named
# so, they are not cards. Deliberately no "order", "ref"...: a customer may paste a card anywhere.
_NOT_CARD_NAMES = _words("imei ean gtin upc isbn sku barcode")


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of a card number, digits only.

    >>> luhn_valid("4111111111111111"), luhn_valid("4111111111111112")
    (True, False)
    """
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_spans(text: str, raw: bool = False) -> list[Span]:
    spans: list[Span] = []
    for run in _DIGIT_RUN.finditer(text):
        spans += _cards_in_run(text, run, raw)
    return spans


def _cards_in_run(text: str, run: re.Match[str], raw: bool) -> list[Span]:
    """Card numbers in one run of digit groups: the longest valid window from each group, left to right."""
    groups = [m.span() for m in _DIGITS.finditer(text, run.start(), run.end())]
    before = list(itertools.accumulate((e - s for s, e in groups), initial=0))
    if before[-1] < 13 or _named(text, run.start(), _NOT_CARD_NAMES):
        return []
    # A "+" makes at most 15 digits a phone number; in a raw payload it may be a byte glued to a card.
    plus = not raw and text[max(0, run.start() - 1) : run.start()] == "+"
    run_ = _Run(text, groups, before, plus)
    spans: list[Span] = []
    i = 0
    while i < len(groups):
        window = _card_window(run_, i, 2 if raw else 0)
        if window is None:
            i += 1
            continue
        spans.append(window[:2])
        i = window[2] + 1
    return spans


class _Run(NamedTuple):
    """A run of digit groups: the text, each group's span, digits before each group, a leading "+"."""

    text: str
    groups: list[Span]
    before: list[int]
    plus: bool


def _card_window(run: _Run, i: int, slack: int) -> tuple[int, int, int] | None:
    """(start, end, last group) of the longest card number starting in group ``i``, if any.

    Raw payloads may glue a byte or two that read as digits to either end (an Avro string's length
    prefix is one), so there a window may also drop up to ``slack`` digits at each end.
    """
    groups, before = run.groups, run.before
    last = i
    while last + 1 < len(groups) and before[last + 2] - before[i] <= 19 + 2 * slack:
        last += 1
    for j in range(last, i - 1, -1):
        digits = before[j + 1] - before[i]
        if digits < 13:
            return None  # shorter windows have fewer digits still
        for head in range(slack + 1):
            for tail in range(slack + 1):
                if 13 <= digits - head - tail <= 19 and _is_card(run, i, j, head, tail):
                    return groups[i][0] + head, groups[j][1] - tail, j
    return None


def _is_card(run: _Run, i: int, j: int, head: int, tail: int) -> bool:
    groups, text = run.groups, run.text
    first_group = groups[i][1] - groups[i][0] - head
    whole_run = i == 0 and j == len(groups) - 1
    if i != j and first_group != 4 and not whole_run:
        return False  # grouped, a card number starts with a group of four (4-4-4-4, Amex 4-6-5)
    start, end = groups[i][0] + head, groups[j][1] - tail
    digits = "".join(text[max(s, start) : min(e, end)] for s, e in groups[i : j + 1])
    if digits[0] == "0" or not luhn_valid(digits):
        return False
    if run.plus and i == 0 and head == 0 and len(digits) <= 15:
        return False  # "+" and at most 15 digits: an international phone number (E.164)
    if i == j:
        # Compact, any network's number; but 13 digits are a card only from Visa: "1767225600000" is a
        # time in milliseconds, "4006381333931" may be a barcode.
        return len(digits) != 13 or digits[0] == "4"
    seps = [text[a[1] : b[0]] for a, b in zip(groups[i:j], groups[i + 1 : j + 1], strict=False)]
    if any("." in sep for sep in seps) and not (first_group == 4 and all(e - s == 4 for s, e in groups[i + 1 : j])):
        return False  # dots group amounts in threes ("1.234.567.890.123"); a card is dotted in fours
    if first_group != 4 and min(e - s for s, e in groups[i : j + 1]) < 3:
        return False  # grouped oddly and with a digit or two alone: an IMEI ("35-209900-176148-1") or a list
    return _issued_prefix(digits)


def _issued_prefix(digits: str) -> bool:
    """Whether a card network issues numbers starting so (2-6: Mastercard, Amex, Diners, JCB, Visa,
    Discover, UnionPay, Maestro, Mir...; 1 with 15 digits: UATP; 9792: Troy)."""
    return digits[0] in "23456" or (digits[0] == "1" and len(digits) == 15) or digits.startswith("9792")


def _digit_count(groups: list[Span]) -> int:
    return sum(e - s for s, e in groups)


# ---------------------------------------------------------------------------------------------------
# Phone numbers
# ---------------------------------------------------------------------------------------------------

# A run of digits and phone punctuation, seven characters at least, led by "+", "(" or "(+"; written
# to start with a character class, which the regex engine scans for fast.
_PHONE_RUN = re.compile(r"[+(\d](?=[\d \-./()\u00a0+]{6})(?:(?<=\()\+)?(?:(?<=\d)|\d)[\d \-./()\u00a0]*+")
_PHONE_SEP = re.compile(r"[ \-./\u00a0]|[ \u00a0\-]?\([ \u00a0]?|[ \u00a0]?\)[ \u00a0\-]?")
_DATE_SEPS = frozenset("-./ ")

# Words that name the number after them as something else than a phone number.
_NOT_PHONE_WORDS = _words(
    """order orders ord ref refs reference invoice inv ticket case tracking track trace parcel package
    shipment consignment awb waybill dhl ups usps fedex dpd gls hermes tnt note sku item article art
    product serial s/n sn model version ver build release receipt transaction txn trx booking
    reservation confirmation account acct acc customer client member membership loyalty contract
    policy claim complaint incident request req batch lot voucher coupon code pin id isbn ean upc imei
    iccid vin po rma refund iban bic swift page pages
    bestellung bestellnr bestellnummer rechnung rechnungsnummer rechnungsnr auftrag auftragsnummer
    kundennummer kundennr sendung sendungsnummer vertrag vertragsnummer vorgang
    commande facture colis dossier référence suivi contrat"""
)
_NOT_PHONE_NAMES = _NOT_PHONE_WORDS | _words("eur usd gbp chf cad aud sek nok dkk pln")  # and currencies
# Words that may stand between such a name and its number: "order number is 123456789".
_FILLER_WORDS = _words("number numbers num no nr n id code ref is was are nummer ist lautet war numéro de du est")
_PHONE_WORDS = _words(
    """call called calling phone tel telephone mobile mob cell cellphone ring text sms whatsapp fax dial
    reach contact landline number handy telefon rufnummer mobil nummer tél téléphone portable appel
    appelez appeler joindre"""
)
# The last word before the end of the matched slice, followed only by punctuation of "no.: #"; the
# leading ".*" makes the engine try word starts from the end backwards, where the answer is.
_LAST_WORD = re.compile(r"(?s:.*)(?<![^\W\d_])([^\W\d_]++(?:/[^\W\d_]++)?)[\s#:.,=/°º-]*+\Z")
_WORD = re.compile(r"(?<![\[\w])[^\W\d_]+(?![\]\w])")  # "[phone]", a placeholder, is no word
_CURRENCY_SIGNS = frozenset("$€£¥₹")
_IBAN_HEAD = re.compile(r"(?<![^\W_])[A-Z]{2}\d\d(?:[ ]?[A-Z0-9]{4})*+[ ]\Z")
_Shape = tuple[tuple[int, ...], tuple[str, ...]]
_CURRENCY_AFTER = re.compile(
    r"\s?(?:[$€£¥₹]|(?:eur|euros?|usd|gbp|chf|cad|aud|sek|nok|dkk|pln|dollars?|pounds?|bucks|cents?|kr|yen)(?!\w))",
    re.IGNORECASE,
)
_AFTER_NUMBER = re.compile(r"[^\W\d_]|%|[.,:]\d")  # glued to a word, a percentage, decimals, a time


def _phone_spans(text: str, raw: bool = False) -> list[Span]:
    spans: list[Span] = []
    named: set[_Shape] = set()  # numbers named otherwise: "item no. 55-123-4567 but got 55-123-4568"
    for run in _PHONE_RUN.finditer(text):
        if raw or _starts_number(text, run.start()):
            spans += _phones_in_run(text, run, named)
    return spans


def _starts_number(text: str, start: int) -> bool:
    """Whether a run starts a number: not glued to a word, an amount or a reference ("#1234567",
    "ORD-2024-556677", "v2.14.1023"), nor the decimals of another number. Raw payloads glue field
    bytes to text, so there every run counts and the validation decides."""
    before = text[max(0, start - 2) : start]
    if not before:
        return True
    prev = before[-1]
    if prev.isalnum() or prev in "_+#@$€£¥":
        return False
    glued = len(before) == 2 and (before[0].isalnum() or before[0] == "_")
    return not ((glued and prev in ",/-") or (prev == "." and before[0].isdigit()))


def _phones_in_run(text: str, run: re.Match[str], named: set[_Shape]) -> list[Span]:
    groups = [m.span() for m in _DIGITS.finditer(text, run.start(), run.end())]
    if _digit_count(groups) < 7 or (len(groups) == 3 and _is_date(text, groups)):
        return []  # dates are the commonest run of seven digits
    lead = text[run.start() : groups[0][0]]  # "", "+", "(" or "(+"
    spans: list[Span] = []
    for segment in _segments(text, groups):
        first = segment[0] == groups[0]
        spans += _phones_in_segment(text, segment, "+" in lead and first, named)
    if spans and spans[0][0] == groups[0][0] and lead:
        spans[0] = (_lead_start(text, run.start(), lead, groups), spans[0][1])
    return spans


def _lead_start(text: str, start: int, lead: str, groups: list[Span]) -> int:
    """Where the first number starts: its "+" always belongs to it, an opening "(" only when closed
    after the first group ("(555) 123-4567"), not when it encloses the number ("(07700 900123)")."""
    if "(" not in lead:
        return start
    closed = len(groups) > 1 and ")" in text[groups[0][1] : groups[1][0]]
    return start if closed else start + lead.index("(") + 1


def _segments(text: str, groups: list[Span]) -> list[list[Span]]:
    """The run split where the punctuation is not a phone's ("10 - 15", "1234. 5") and around dates."""
    segments = [[groups[0]]]
    for prev, group in itertools.pairwise(groups):
        if _PHONE_SEP.fullmatch(text, prev[1], group[0]):
            segments[-1].append(group)
        else:
            segments.append([group])
    return [part for segment in segments for part in _without_dates(text, segment) if part]


def _without_dates(text: str, segment: list[Span]) -> list[list[Span]]:
    parts: list[list[Span]] = [[]]
    i = 0
    while i < len(segment):
        if i + 2 < len(segment) and _is_date(text, segment[i : i + 3]):
            parts.append([])
            i += 3
        else:
            parts[-1].append(segment[i])
            i += 1
    return parts


def _is_date(text: str, three: list[Span]) -> bool:
    """Day, month and a four-digit year (either order, either day/month order) with one separator."""
    (a0, a1), (b0, b1), (c0, c1) = three
    if b1 - b0 > 2 or (a1 - a0 != 4 and c1 - c0 != 4):
        return False  # the cheap test first: most runs are no date
    sep = text[a1:b0]
    if sep != text[b1:c0] or sep not in _DATE_SEPS:
        return False
    x, y, z = text[a0:a1], text[b0:b1], text[c0:c1]
    if len(x) == 4 and len(y) <= 2 and len(z) <= 2:
        x, z = z, x  # year first: 2026-01-15
    if len(z) != 4 or not z.startswith(("19", "20")) or len(x) > 2 or len(y) > 2:
        return False
    day, month = int(x), int(y)
    return min(day, month) >= 1 and max(day, month) <= 31 and min(day, month) <= 12


def _phones_in_segment(text: str, segment: list[Span], plus: bool, named: set[_Shape]) -> list[Span]:
    if _vetoed(text, segment, plus, named):
        return []
    phones: list[tuple[int, int]] = []
    rest: list[int] = []  # groups in no phone number
    i = 0
    while i < len(segment):
        j = _longest_phone(text, segment, i, plus and i == 0)
        if j is None:
            rest.append(i)
            i += 1
        else:
            phones.append((i, j))
            i = j + 1
    if rest and phones and not _apart(text, segment, rest):
        return []
    return [(segment[i][0], segment[j][1]) for i, j in phones]


def _apart(text: str, segment: list[Span], rest: list[int]) -> bool:
    """Whether the groups beside the phone numbers are small counts standing apart ("07700 900123
    2 times"). A group of four digits or more, or one bound to the rest by a dash or a dot, makes the
    whole one number ("1234 5678 1234 5670", an IMEI "35-209900-176148-1"): redacting most of it
    would garble it."""
    if any(segment[k][1] - segment[k][0] > 3 for k in rest):
        return False
    seps = [text[a[1] : b[0]] for a, b in itertools.pairwise(segment)]  # seps[k] follows group k
    return all((k == 0 or seps[k - 1].isspace()) and (k == len(seps) or seps[k].isspace()) for k in rest)


def _longest_phone(text: str, segment: list[Span], i: int, plus: bool) -> int | None:
    """The last group of the longest phone number starting at group ``i``, if any."""
    ends = list(itertools.takewhile(lambda e: e[1] <= 15, _running_digits(segment, i)))
    for j, digits in reversed(ends):
        if digits >= 7 and _phone_shaped(text, segment[i : j + 1], plus):
            return j
    return None


def _running_digits(segment: list[Span], i: int) -> Iterator[tuple[int, int]]:
    """(j, digits in groups i..j) for j from i on."""
    digits = 0
    for j in range(i, len(segment)):
        digits += segment[j][1] - segment[j][0]
        yield j, digits


def _vetoed(text: str, segment: list[Span], plus: bool, named: set[_Shape]) -> bool:
    """What makes the whole segment something else than a phone number: its context, or its shape."""
    start, end = segment[0][0], segment[-1][1]
    if _AFTER_NUMBER.match(text, end) or _CURRENCY_AFTER.match(text, end):
        return True
    if plus:
        return False
    shape = _shape(text, segment)
    if shape in named:
        return True  # written like a number named otherwise earlier in the text: named alike
    if text[max(0, start - 2) : start].strip()[-1:] in _CURRENCY_SIGNS or _named(text, start, _NOT_PHONE_NAMES):
        named.add(shape)
        return True
    if text[start - 2 : start - 1].isalnum() and _IBAN_HEAD.search(text, max(0, start - 40), start):
        return True  # the digits of an IBAN that failed its check: an account, mistyped, not a phone
    return _not_phone_shaped(text, segment)


def _shape(text: str, segment: list[Span]) -> _Shape:
    """Group sizes and separators: "55-123-4567" and "55-123-4568" have one shape."""
    sizes = tuple(e - s for s, e in segment)
    return sizes, tuple(text[a[1] : b[0]] for a, b in itertools.pairwise(segment))


def _named(text: str, start: int, names: frozenset[str]) -> bool:
    """Whether one of ``names`` stands right before ``start``, give or take words like "number", "no.",
    "is" and punctuation like "#", ":" in between: "order #", "ticket no.", "invoice number is", "EUR"."""
    end = start
    for _ in range(4):
        m = _LAST_WORD.match(text, max(0, end - 32), end)
        if m is None:
            return False
        word = m[1].lower()
        if word in names:
            return not (word == "code" and text[max(0, m.start(1) - 5) : m.start(1)].lower() == "area ")
        if word not in _FILLER_WORDS:
            return False
        end = m.start(1)
    return False


def _not_phone_shaped(text: str, segment: list[Span]) -> bool:
    sizes = [e - s for s, e in segment]
    seps = {text[a[1] : b[0]] for a, b in itertools.pairwise(segment)}
    values = [text[s:e] for s, e in segment]
    if "." in seps:
        if len(segment) == 2:
            return True  # one dot is a decimal point: "52.520008"
        ipv4 = len(segment) == 4 and all(n <= 3 and int(v) <= 255 for n, v in zip(sizes, values, strict=True))
        thousands = sizes[0] <= 3 and all(n == 3 for n in sizes[1:])
        if ipv4 or thousands or min(sizes) < 2:  # "1.234.567", "10.0.19045" (a version)
            return True
    if seps <= {" ", "\u00a0"} and len(segment) > 1 and sizes[0] <= 2 and all(n == 3 for n in sizes[1:]):
        return True  # "2 500 000", "12 345 678": thousands grouped by spaces
    if len(segment) > 1 and all(n == 4 and v.startswith(("19", "20")) for n, v in zip(sizes, values, strict=True)):
        return True  # "2019 2020 2021", "2019-2023"
    return seps == {"-"} and sizes == [5, 4]  # US ZIP+4


def _phone_shaped(text: str, groups: list[Span], plus: bool) -> bool:
    sizes = [e - s for s, e in groups]
    if len(groups) == 1:
        return plus or _compact_phone(text, groups[0])
    if min(sizes) > 1 or all(n == 1 for n in sizes):  # digit by digit: a transcript reading it out
        return True
    # A single digit only leads the number ("1-800-..."), follows a country code ("+33 6 12 34 56 78",
    # "0033 6 ...", "+33 (0)1 99 ...") or sits in parentheses ("+44 (0)20 ..."); elsewhere it is a
    # count beside a number.
    international = plus or text.startswith("00", groups[0][0])
    after_code = 2 if len(groups) > 2 and _parenthesised(text, groups, 1) else 1
    return all(
        n > 1 or k == 0 or (international and k <= after_code) or _parenthesised(text, groups, k)
        for k, n in enumerate(sizes)
    )


def _parenthesised(text: str, groups: list[Span], k: int) -> bool:
    before = text[groups[k - 1][1] : groups[k][0]]
    after = text[groups[k][1] : groups[k + 1][0]] if k + 1 < len(groups) else ""
    return before.endswith("(") and after.startswith(")")


def _compact_phone(text: str, group: Span) -> bool:
    """An ungrouped number: a national number with its trunk 0, ten digits or more, or a shorter one
    right after a word that announces a phone number."""
    digits = text[group[0] : group[1]]
    if (digits[0] == "0" and len(digits) >= 9) or (len(digits) >= 10 and (digits[0] != "1" or len(digits) == 11)):
        return True  # but no plan's numbers start with 1, save 1 + ten digits (NANP): 1767225600 is a time
    words = _WORD.findall(text, max(0, group[0] - 40), group[0])
    return not _PHONE_WORDS.isdisjoint(w.lower() for w in words)


# ---------------------------------------------------------------------------------------------------
# The redactor
# ---------------------------------------------------------------------------------------------------


def _replace(text: str, spans: list[Span], placeholder: str) -> str:
    parts: list[str] = []
    last = 0
    for start, end in spans:
        parts += (text[last:start], placeholder)
        last = end
    parts.append(text[last:])
    return "".join(parts)


class Redactor:
    """Replaces PII in free text by typed placeholders.

    >>> r = Redactor({"order_ref": r"ORD-\\d{6}"})
    >>> r.redact("ORD-123456: call 07700 900123")
    '[order_ref]: call [phone]'
    >>> r.found("mail jane@example.com or jane (at) example (dot) org, ring 07700 900123")
    {'email': 2, 'phone': 1}
    >>> Redactor({"Bad-Name": "x"})
    Traceback (most recent call last):
    ...
    ValueError: PII pattern name 'Bad-Name' must match [a-z][a-z0-9_]* (it becomes the placeholder [Bad-Name])
    """

    def __init__(self, extra_patterns: Mapping[str, str] | None = None) -> None:
        self._extras = tuple(_compile_extra(name, regex) for name, regex in (extra_patterns or {}).items())
        kinds = sorted({*PLACEHOLDERS, *(name for name, _ in self._extras)}, key=len, reverse=True)
        self._placeholders = re.compile(r"\[(?:" + "|".join(map(re.escape, kinds)) + r")\]")
        # A configured name with digits ("[ref2024]") gives the built-in passes digits to match.
        self._digit_names = any(c.isdigit() for name, _ in self._extras for c in name)

    @classmethod
    def from_spec(cls, spec: str) -> Redactor:
        """A redactor with the extra patterns of a ``CEM_PII_PATTERNS`` setting: ``name=regex;name=regex``.

        ``;`` separates entries; write ``\\;`` for a literal ``;`` inside a regex (the regex then holds
        ``\\;``, which matches ``;``). A backslash escapes the character after it, so ``\\\\;`` is an
        escaped backslash followed by the separator. Whitespace around names and regexes is ignored
        (write ``[ ]`` for a regex's leading or trailing space); empty entries are skipped.

        >>> Redactor.from_spec(r"order_ref=ORD-\\d{6}; ticket=T\\;\\d+").redact("ORD-123456 and T;42")
        '[order_ref] and [ticket]'
        >>> Redactor.from_spec("nonsense")
        Traceback (most recent call last):
        ...
        ValueError: CEM_PII_PATTERNS entry 'nonsense' is not name=regex
        """
        patterns: dict[str, str] = {}
        for entry in _split_spec(spec):
            name, sep, regex = entry.partition("=")
            name = name.strip()
            if not sep:
                raise ValueError(f"CEM_PII_PATTERNS entry {entry!r} is not name=regex")
            if name in patterns:
                raise ValueError(f"CEM_PII_PATTERNS names {name!r} twice")
            patterns[name] = regex.strip()
        return cls(patterns)

    def redact(self, text: str) -> str:
        """``text`` with every e-mail address, IBAN, card number, phone number and extra replaced.

        >>> redact("no personal data here: 3 items, €12.50, 2026-01-15")
        'no personal data here: 3 items, €12.50, 2026-01-15'
        """
        return self._apply(text, None)

    def redact_bytes(self, payload: bytes) -> str:
        """A raw record payload (JSON, Avro binary...) as text an operator may read, redacted.

        Binary encodings glue bytes to the text they frame (an Avro string's length prefix can read
        as a digit or a letter), so the recognisers relax their boundaries here: a card or IBAN
        glued to such a byte is still found.

        >>> Redactor().redact_bytes(b'{"text": "mail jane@example.com \\xff"}')
        '{"text": "mail [email] \\ufffd"}'
        >>> Redactor().redact_bytes(b"\\x026" + "4111111111111111 is my card".encode())
        '\\x026[card] is my card'
        """
        return self._apply(bytes(payload).decode("utf-8", errors="replace"), None, raw=True)

    def found(self, text: str) -> dict[str, int]:
        """How many spans of each kind :meth:`redact` replaces in ``text`` (kinds found only)."""
        counts: dict[str, int] = {}
        self._apply(text, counts)
        return counts

    def _apply(self, text: str, counts: dict[str, int] | None, raw: bool = False) -> str:
        """The passes, in rounds until one changes nothing: a placeholder is a new neighbour, and
        what a pass decides at a boundary may differ beside it ("x(at)y(dot)aa4111111111111111" is
        an address once the card glued to it is a placeholder). So redacting twice changes nothing
        more. A later round reruns only the passes that may now decide otherwise: those that see a
        text some pass changed since they last ran. A round that changes anything replaces a digit,
        an "@" or an unprotected character at least; the cap on rounds is for safety only."""
        passes = _passes(text, raw)
        if not passes and not self._extras:
            return text  # most texts: the pre-check alone decides
        passes += [(name, self._extra_finder(pattern)) for name, pattern in self._extras]
        last_change = len(passes)  # in the previous round; the first runs every pass
        for _ in range(_MAX_ROUNDS):
            changed = -1
            for index, (kind, find) in enumerate(passes):
                if index > last_change and changed < 0:
                    continue  # sees the very text it saw last round
                spans = find(text)
                if spans and self._digit_names and kind in PLACEHOLDERS:
                    spans = self._outside_placeholders(text, spans)
                if spans:
                    text = self._replace(text, kind, spans, counts)
                    changed = index
            if changed < 0:
                break
            last_change = changed
        return text

    def _replace(self, text: str, kind: str, spans: list[Span], counts: dict[str, int] | None) -> str:
        if counts is not None:
            counts[kind] = counts.get(kind, 0) + len(spans)
        return _replace(text, spans, PLACEHOLDERS.get(kind) or f"[{kind}]")

    def _extra_finder(self, pattern: re.Pattern[str]) -> Finder:
        def find(text: str) -> list[Span]:
            return self._outside_placeholders(text, [m.span() for m in pattern.finditer(text) if m.end() > m.start()])

        return find

    def _outside_placeholders(self, text: str, spans: list[Span]) -> list[Span]:
        """The spans that leave every placeholder whole (configured patterns may match anything)."""
        taken = [m.span() for m in self._placeholders.finditer(text)]
        starts = [s for s, _ in taken]
        kept: list[Span] = []
        for start, end in spans:
            k = bisect.bisect_left(starts, end)  # placeholders starting before the span ends
            if not (k and taken[k - 1][1] > start):
                kept.append((start, end))
        return kept


_MAX_ROUNDS = 8


def _passes(text: str, raw: bool) -> list[tuple[str, Finder]]:
    """The recognisers worth running on ``text``, in order; none for most texts."""
    passes: list[tuple[str, Finder]] = []
    at = "@" in text
    if at:
        passes.append(("email", _email_spans))
    if at or _SPELLED_AT_HINT.search(text.lower()):
        passes.append(("email", _spelled_email_spans))
    if _SEVEN_DIGITS.match(text):
        passes.append(("iban", (lambda t: _iban_spans(t, raw=True)) if raw else _iban_spans))
        if _THIRTEEN_DIGITS.match(text):
            passes.append(("card", (lambda t: _card_spans(t, raw=True)) if raw else _card_spans))
        passes.append(("phone", (lambda t: _phone_spans(t, raw=True)) if raw else _phone_spans))
    return passes


def _compile_extra(name: str, regex: str) -> tuple[str, re.Pattern[str]]:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"PII pattern name {name!r} must match [a-z][a-z0-9_]* (it becomes the placeholder [{name}])")
    try:
        pattern = re.compile(regex)
    except (re.error, TypeError) as exc:
        raise ValueError(f"PII pattern {name!r} is not a valid regex ({exc}): {regex!r}") from None
    if pattern.fullmatch(""):
        raise ValueError(f"PII pattern {name!r} matches the empty string, so it would match everywhere: {regex!r}")
    return name, pattern


def _split_spec(spec: str) -> list[str]:
    """Entries of a ``name=regex;name=regex`` spec: ``;`` separates, ``\\;`` is kept for the regex."""
    entries: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(spec):
        c = spec[i]
        if c == "\\":
            current.append(spec[i : i + 2])
            i += 2
            continue
        if c == ";":
            entries.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    entries.append("".join(current))
    return [entry.strip() for entry in entries if entry.strip()]


def redacted_spans(text: str, redacted: str, kinds: Iterable[str] = PLACEHOLDERS) -> list[tuple[int, int, str]]:
    """The spans of ``text`` that ``redacted`` shows as placeholders: ``(start, end, kind)``.

    ``redacted`` must be ``text`` with some spans replaced by ``[kind]`` placeholders (what
    :meth:`Redactor.redact` returns, or a hand-labelled expectation); otherwise ``ValueError``. This
    is how the labelled comments are scored span by span (tests, ``benchmarks/privacy.py``).

    >>> redacted_spans("mail jane@example.com or 07700 900123", "mail [email] or [phone]")
    [(5, 21, 'email'), (25, 37, 'phone')]
    """
    names = "|".join(map(re.escape, kinds))
    parts = re.split(rf"\[({names})\]", redacted)  # literal, kind, literal, kind, ..., literal
    pattern = "".join("(.+?)" if k % 2 else re.escape(part) for k, part in enumerate(parts))
    aligned = re.fullmatch(pattern, text, re.DOTALL)
    if aligned is None:
        raise ValueError(f"{redacted!r} is not {text!r} with spans replaced by placeholders")
    return [(aligned.start(g), aligned.end(g), parts[2 * g - 1]) for g in range(1, len(parts) // 2 + 1)]


DEFAULT_REDACTOR = Redactor()


def redact(text: str) -> str:
    """:meth:`Redactor.redact` with the built-in recognisers only."""
    return DEFAULT_REDACTOR.redact(text)
