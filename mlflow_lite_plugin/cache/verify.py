"""Verification of semantic-cache candidates: never serve a cached answer to a different question.

Sentence cosine cannot tell "How do I reset my password?" from "How do I not reset my password?"
(0.93 with all-MiniLM-L6-v2), while real paraphrases often score only 0.7-0.85. Near-misses are
almost always *minimal pairs*: the same wording with a small substitution, insertion, deletion or
reordering. A deliberate minimal edit nearly always changes the meaning, so the verifier:

1. normalises both questions (case, punctuation, contractions, plural/agreement inflection and
   articles are form, not meaning; tense is meaning) and accepts if they are then identical;
2. rejects if two content words traded places around a shared pivot word ("coffee worse than tea"
   vs "tea worse than coffee"): swapped roles;
3. rejects a *minimal pair*: most words shared and a small, non-trivial lexical edit left;
4. for real rewordings, requires the sentence cosine to reach ``threshold`` and rejects "hard"
   differences found with closed classes of general English: negation, numbers, polar function
   words (before/after, more/less, ...), affix antonyms (safe/unsafe, enable/disable), and
   proper nouns / acronyms / identifiers / quoted strings present on one side only.

Every rule is a general property of English, not a list of words taken from any data set.
``verify`` is pure; the optional ``embed_words`` lets it find counterparts for unmatched named
entities with word-level embeddings ("US" vs "America") instead of rejecting them outright.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

import numpy as np

__all__ = ["ENTITY_WORD_SIM", "MINIMAL_MAX_EDIT", "MINIMAL_MAX_SLOT", "MINIMAL_MIN_SHARED", "normalize", "verify"]

EmbedWords = Callable[[list[str]], np.ndarray]

# A pair is "minimal" when at most this many words changed on the longer side (after form
# normalisation) ...
MINIMAL_MAX_EDIT = 2
# ... or one contiguous slot of at most this many content words was replaced ...
MINIMAL_MAX_SLOT = 4
# ... and at least this share of the longer side's words is common to both questions.
MINIMAL_MIN_SHARED = 0.5
# Word-embedding cosine for an unmatched name to count as having a counterpart ("NYC" ~ "new york").
# Different names of one kind score up to ~0.87 with MiniLM (monday/tuesday), aliases 0.78-0.96: only
# near-certain aliases may pass, the rest are rejected (precision first).
ENTITY_WORD_SIM = 0.90

# --- closed classes of general English -------------------------------------------------------

# The usual function words (determiners, pronouns, auxiliaries, prepositions, conjunctions,
# wh-words). Negators, number words and polar words are deliberately NOT here: they carry meaning
# and get their own checks.
STOPWORDS = frozenset(
    """
    a an the this that these those some any each every all both either such other another
    i me my mine myself we us our ours ourselves you your yours yourself yourselves he him his
    himself she her hers herself it its itself they them their theirs themselves one ones
    what which who whom whose when where why how whether
    be is are am was were been being have has had having do does did doing done
    can could may might must shall should will would ought need
    to of in on at by for with from into onto upon about as than then so too very just also
    and or but if because while though although until unless since till
    there here out off over again further once only own same few many much
    get got getting let make made go going way thing things like please
    s t d ll m re ve
    """.split()
)
# Pure form: dropping or adding these never changes the question.
TRIVIAL = frozenset({"a", "an", "the", "please", "kindly", "hi", "hello", "hey", "thanks", "thank"})
# Determiners and possessives are too common to act as the pivot of a role swap.
NON_PIVOT = TRIVIAL | frozenset(
    "this that these those my your his her its our their some any each every all".split()
)
# Sentential and lexical negators (n't and cannot are expanded to "not" first).
NEGATORS = frozenset(
    "not no never none nobody nothing nowhere neither nor without hardly scarcely barely".split()
)
# Closed-class words whose polar opposite flips the question (directional prepositions,
# comparatives, quantifier extremes, temporal order).
POLAR_PAIRS: tuple[tuple[str, str], ...] = (
    ("before", "after"), ("above", "below"), ("over", "under"), ("more", "less"), ("more", "fewer"),
    ("most", "least"), ("maximum", "minimum"), ("max", "min"), ("higher", "lower"), ("highest", "lowest"),
    ("up", "down"), ("inside", "outside"), ("earlier", "later"), ("early", "late"), ("first", "last"),
    ("always", "never"), ("increase", "decrease"), ("plus", "minus"), ("inbound", "outbound"),
)
# Derivational prefixes/suffixes: the same root under two of these is an antonym or role pair
# (safe/unsafe, enable/disable, upload/download, import/export, employer/employee).
PREFIXES = (
    "under", "super", "anti", "down", "over", "post", "dis", "non", "out", "pre", "pro", "mis", "sub",
    "un", "in", "im", "il", "ir", "de", "en", "em", "ex", "up",
)
SUFFIX_PAIRS: tuple[tuple[str, str], ...] = (("ful", "less"), ("er", "ee"), ("or", "ee"))
_SUFFIXES = frozenset(s for pair in SUFFIX_PAIRS for s in pair)

_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9, "trillion": 10**12}
# A spelled-out number stops growing here: "one million million ..." would otherwise build an ever
# larger int (quadratic in the text, and str() refuses ints past 4,300 digits).
_MAX_NUMBER = 10**18
_ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
    "ninth": 9, "tenth": 10, "twelfth": 12, "twentieth": 20, "hundredth": 100,
}
_IRREGULAR_STEMS = {
    "is": "be", "are": "be", "am": "be", "were": "was", "has": "have", "does": "do", "goes": "go",
    "an": "a", "children": "child", "people": "person", "men": "man", "women": "woman", "feet": "foot",
    "teeth": "tooth", "mice": "mouse", "data": "datum",
}
# Words that are written in capitals without being names.
_CAPS_NOT_ENTITIES = frozenset({"i", "ok", "okay", "a"})
# 's after these is "is", not a possessive.
_S_IS = frozenset("it that what who where how there here when why he she this".split())

_QUOTED = re.compile(r"\"([^\"]+)\"|`([^`]+)`|(?<![\w])'([^']+)'(?![\w])")
# Words (letters, maybe with digits: 2FA, 3rd, gpt4) first, then plain numbers (1,000  2.5  15%).
_TOKEN = re.compile(r"[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*(?:'[A-Za-z]+)?|\d+(?:[.,]\d+)*%?")
_SENTENCE_END = ".!?:;"
# Beyond this many words the pairwise role-swap search (quadratic) is replaced by a conservative
# rule: any reordering of shared content words counts as a swap.
MAX_SWAP_SEARCH_TOKENS = 96


@dataclass(frozen=True)
class Token:
    """One word. ``norm``: lower-case, contractions expanded. ``form``: ``norm`` without plural /
    agreement inflection (what decides "same question"). ``stem``: also without -ing/-ed (only
    used to match words across the two questions, where looser is safer)."""

    surface: str
    norm: str
    stem: str
    form: str
    capitalised: bool  # a capital in a position where English does not require one
    identifier: bool  # acronym, inner capitals or letters+digits: a name-like token anywhere


# --- normalisation ---------------------------------------------------------------------------


def form(word: str) -> str:
    """``word`` without plural or agreement inflection (cats -> cat, boxes -> box, is/are -> be).

    Tense is kept: "Who scored?" and "Who scores?" are different questions.
    """
    w = word.lower()
    if w in _IRREGULAR_STEMS:
        return _IRREGULAR_STEMS[w]
    if len(w) <= 3 or not w.isalpha():
        return w
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("sses", "shes", "ches", "xes", "zes")):
        return w[:-2]
    if w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def stem(word: str) -> str:
    """A light, conservative English stemmer: plural and tense inflection only."""
    w = word.lower()
    if w in _IRREGULAR_STEMS:
        return _IRREGULAR_STEMS[w]
    if len(w) <= 3 or not w.isalpha():
        return w
    for suffix in ("ing", "ed"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3 and re.search(r"[aeiouy]", w[: -len(suffix)]):
            w = w[: -len(suffix)]
            if len(w) >= 3 and w[-1] == w[-2] and w[-1] not in "lsz":
                w = w[:-1]  # stopped -> stop
            break
    else:
        if w.endswith("ies") and len(w) > 4:
            w = w[:-3] + "y"
        elif w.endswith(("sses", "shes", "ches", "xes", "zes", "oes")):
            w = w[:-2]
        elif w.endswith("s") and not w.endswith(("ss", "us", "is")):
            w = w[:-1]
    if len(w) > 3 and w.endswith("e"):
        w = w[:-1]  # rename/renamed/renaming -> renam
    return w


def _split_contraction(word: str) -> list[str]:
    lower = word.lower()
    if lower == "cannot":
        return ["can", "not"]
    if "'" not in lower:
        return [lower]
    base, _, tail = lower.partition("'")
    if tail == "t" and base.endswith("n"):  # don't, can't, won't, shan't
        base = base[:-1]
        return [{"ca": "can", "wo": "will", "sha": "shall"}.get(base, base), "not"]
    if tail == "s":
        return [base, "is"] if base in _S_IS else [base]  # otherwise a possessive: drop it
    expanded = {"re": "are", "m": "am", "ve": "have", "ll": "will", "d": "would"}.get(tail)
    return [base, expanded] if expanded else [base]


@functools.lru_cache(maxsize=4096)
def _tokens(text: str) -> tuple[Token, ...]:
    """Memoised: a lookup verifies its question against up to five cached ones, twice each, and a
    cached question is verified again on every lookup that finds it near."""
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    out: list[Token] = []
    for match in _TOKEN.finditer(text.replace("-", " ")):
        surface = match.group(0)
        base = surface.split("'")[0]
        sentence_start = not out or _after_sentence_break(text, match.start())
        has_upper = any(c.isupper() for c in base)
        identifier = (
            (len(base) >= 2 and base.isupper() and base.lower() not in _CAPS_NOT_ENTITIES)
            or (any(c.isupper() for c in base[1:]) and not base.isupper())
            or (any(c.isdigit() for c in base) and any(c.isalpha() for c in base))
        )
        capitalised = has_upper and not sentence_start and base.lower() not in _CAPS_NOT_ENTITIES
        for i, part in enumerate(_split_contraction(surface)):
            first = i == 0
            out.append(Token(surface, part, stem(part), form(part), capitalised and first, identifier and first))
    return tuple(_merge_numbers(out))


def _after_sentence_break(text: str, position: int) -> bool:
    """Whether only whitespace separates ``position`` from a sentence end or a line break."""
    j = position - 1
    while j >= 0 and text[j].isspace():
        if text[j] == "\n":
            return True
        j -= 1
    return j < 0 or text[j] in _SENTENCE_END


def _merge_numbers(tokens: list[Token]) -> list[Token]:
    """Collapse number words and digits into one canonical token: "twenty five" == "25" == "25.0"."""
    out: list[Token] = []
    value: int | None = None
    surface: list[str] = []
    for tok in [*tokens, Token("", "", "", "", False, False)]:
        word = tok.norm
        if word in _UNITS:
            value = (value or 0) + _UNITS[word]
        elif word in _SCALES and value is not None and value * _SCALES[word] <= _MAX_NUMBER:
            value *= _SCALES[word]
        elif re.fullmatch(r"\d+(?:,\d{3})*(?:\.\d+)?", word) and value is None:
            number = float(word.replace(",", ""))
            value = int(number) if number.is_integer() else None
            if value is None:  # a decimal stands alone
                out.append(_number_token(tok.surface, repr(number)))
                continue
        else:
            if value is not None:
                text = str(value)
                out.append(_number_token(" ".join(surface), text))
                value, surface = None, []
            if word in _ORDINALS or re.fullmatch(r"\d{1,18}(st|nd|rd|th)", word):  # int() refuses huge ones
                n = _ORDINALS.get(word) or int(word[:-2])
                out.append(_number_token(tok.surface, f"#{n}"))
            elif tok.norm:
                out.append(tok)
            continue
        surface.append(tok.surface)
    return out


def _number_token(surface: str, value: str) -> Token:
    return Token(surface, value, value, value, False, False)


def normalize(text: str) -> str:
    """Word forms joined by spaces, articles and courtesy words dropped: equal means "same question"."""
    return " ".join(t.form for t in _tokens(text) if t.norm not in TRIVIAL)


def _quoted(text: str) -> list[str]:
    found = []
    for match in _QUOTED.finditer(text.replace("\u201c", '"').replace("\u201d", '"')):
        phrase = next(g for g in match.groups() if g is not None)
        found.append(" ".join(t.norm for t in _tokens(phrase)))
    return [q for q in found if q]


# --- hard-difference extractors --------------------------------------------------------------


def _numbers(tokens: Sequence[Token]) -> Counter[str]:
    """Numeric values (already canonical after ``_merge_numbers``), percentages and ordinals."""
    return Counter(t.norm for t in tokens if re.fullmatch(r"#?\d+(?:\.\d+)?%?", t.norm))


def _negations(tokens: Sequence[Token]) -> int:
    return sum(t.norm in NEGATORS for t in tokens)


def _polar_flip(a: set[str], b: set[str]) -> tuple[str, str] | None:
    for x, y in POLAR_PAIRS:
        for p, q in ((x, y), (y, x)):
            if p in a and q not in a and q in b and p not in b:
                return p, q
    return None


def _root(word: str) -> tuple[str, str]:
    for prefix in PREFIXES:
        if word.startswith(prefix) and len(word) - len(prefix) >= 3:
            return prefix, word[len(prefix):]
    return "", word


def _affix_opposed(x: str, y: str) -> bool:
    """Same root under different derivational affixes: unsafe/safe, enable/disable, payer/payee."""
    if x == y or not (x.isalpha() and y.isalpha()):
        return False
    px, rx = _root(x)
    py, ry = _root(y)
    if (px or py) and px != py and (rx in (ry, y) or ry == x):
        return True
    for s1, s2 in SUFFIX_PAIRS:
        for p, q in ((x, y), (y, x)):
            if p.endswith(s1) and q.endswith(s2) and len(p) - len(s1) >= 3 and p[: -len(s1)] == q[: -len(s2)]:
                return True
    return False


def _affix_pair(removed: Iterable[str], added: Iterable[str]) -> tuple[str, str] | None:
    """The first removed word x and added word y (in their order) that are ``_affix_opposed``.

    Only words that can be opposed are compared: ``added`` is indexed by root, by itself and by
    the stem left after each paired suffix (every way ``_affix_opposed`` can match), which keeps
    this linear; trying every pair was quadratic (1.9 s for two 2,000-character questions).
    """
    order: dict[str, int] = {}
    index: dict[tuple[str, str], list[str]] = {}
    for y in added:
        order[y] = len(order)
        keys = {("root", _root(y)[1]), ("word", y)} | {(s, y[: -len(s)]) for s in _SUFFIXES if y.endswith(s)}
        for key in keys:
            index.setdefault(key, []).append(y)
    for x in removed:
        rx = _root(x)[1]
        wanted = [("root", rx), ("word", rx), ("root", x)]
        for s1, s2 in SUFFIX_PAIRS:
            for mine, theirs in ((s1, s2), (s2, s1)):
                if x.endswith(mine):
                    wanted.append((theirs, x[: -len(mine)]))
        for y in sorted({y for key in wanted for y in index.get(key, ())}, key=order.__getitem__):
            if _affix_opposed(x, y):
                return x, y
    return None


def _case_share(tokens: Sequence[Token], test: Callable[[str], bool]) -> float:
    words = [t.surface for t in tokens if t.surface[:1].isalpha()]
    return sum(test(w) for w in words) / len(words) if len(words) >= 3 else 0.0


def _entity_positions(tokens: Sequence[Token]) -> set[int]:
    """Names: capitalised non-initial content words, acronyms and identifiers (gpt4o, NumPy).

    In Title Case or ALL CAPS text, capitals carry no information and only ids with digits or
    inner capitals count.
    """
    title_case = _case_share(tokens, lambda w: w[0].isupper()) > 0.6
    shouting = _case_share(tokens, str.isupper) > 0.6
    out = set()
    for i, t in enumerate(tokens):
        acronym = t.identifier and not (shouting and t.surface.split("'")[0].isalpha())
        name = t.capitalised and not title_case and _is_content(t.norm)
        if acronym or name:
            out.add(i)
    return out


def _acronym_spans(tokens: Sequence[Token]) -> dict[str, set[int]]:
    """Initials of every 2-5 word window -> the token positions it covers ("United States" -> us)."""
    spans: dict[str, set[int]] = {}
    words = [t.norm for t in tokens]
    for i in range(len(words)):
        for n in range(2, 6):
            if i + n <= len(words):
                spans.setdefault("".join(w[0] for w in words[i : i + n]), set()).update(range(i, i + n))
    return spans


def _unmatched_entities(
    side: Sequence[Token], other: Sequence[Token], other_text: str, embed_words: EmbedWords | None
) -> list[str]:
    other_forms = {t.stem for t in other} | {t.norm for t in other}
    other_joined = re.sub(r"[^a-z0-9]", "", other_text.lower())
    acronyms_here = _acronym_spans(side)
    other_acronyms = {t.norm for t in other if t.identifier}
    other_spans = _acronym_spans(other)
    # Positions inside a phrase whose initials are an acronym of the other side, computed once:
    # testing every acronym span per entity was quadratic in the length of the text.
    abbreviated = set().union(*(cover for a, cover in acronyms_here.items() if a in other_acronyms))
    entity_positions = _entity_positions(side)
    missing = []
    for pos, tok in enumerate(side):
        if pos not in entity_positions or tok.stem in other_forms or tok.norm in other_forms:
            continue
        if tok.identifier and tok.norm in other_spans:  # "US" vs "United States"
            continue
        if pos in abbreviated:
            continue  # "United States" vs "US"
        if len(tok.norm) >= 4 and tok.norm in other_joined:  # "Google Drive" vs "GoogleDrive"
            continue
        missing.append(tok.norm)
    if missing and embed_words is not None:
        words = [t.norm for t in other if _is_content(t.norm)]
        candidates = words + [f"{x} {y}" for x, y in itertools.pairwise(words)]
        missing = _without_word_counterparts(missing, candidates, embed_words)
    return missing


def _without_word_counterparts(words: list[str], candidates: list[str], embed_words: EmbedWords) -> list[str]:
    """Keep the words with no near-synonym (word-embedding cosine) among ``candidates``."""
    if not candidates:
        return words
    vectors = np.asarray(embed_words(words + candidates), dtype=np.float32)
    sims = vectors[: len(words)] @ vectors[len(words):].T
    return [w for w, row in zip(words, sims, strict=True) if float(row.max()) < ENTITY_WORD_SIM]


def _is_content(word: str) -> bool:
    return word not in STOPWORDS and word not in TRIVIAL


def _swapped_roles(a: Sequence[Token], b: Sequence[Token]) -> tuple[str, str, str] | None:
    """Two shared content words in opposite order around a shared pivot word: roles swapped.

    Moving one phrase ("in Python, how do I ..." vs "how do I ... in Python") or switching a
    compound for a prepositional phrase ("Python list" vs "list in Python") has no common word
    between the pair on both sides, so it is not a swap.
    """
    pos_a = _occurrences(a)
    pos_b = _occurrences(b)
    shared = [k for k in pos_a if k in pos_b and _is_content(k[0])]
    if max(len(a), len(b)) > MAX_SWAP_SEARCH_TOKENS:
        order_b = sorted(shared, key=pos_b.__getitem__)
        for x, y in zip(shared, order_b, strict=True):
            if x != y:
                return x[0], y[0], "(reordered in a long text)"
        return None
    for i, x in enumerate(shared):
        for y in shared[i + 1 :]:
            if x[0] == y[0] or (pos_a[x] < pos_a[y]) == (pos_b[x] < pos_b[y]):
                continue
            between_a = _between(a, pos_a[x], pos_a[y])
            between_b = _between(b, pos_b[x], pos_b[y])
            pivots = between_a & between_b
            if pivots:
                return x[0], y[0], sorted(pivots)[0]
    return None


def _occurrences(tokens: Sequence[Token]) -> dict[tuple[str, int], int]:
    seen: Counter[str] = Counter()
    out = {}
    for pos, tok in enumerate(tokens):
        out[(tok.stem, seen[tok.stem])] = pos
        seen[tok.stem] += 1
    return out


def _between(tokens: Sequence[Token], i: int, j: int) -> set[str]:
    lo, hi = sorted((i, j))
    return {t.stem for t in tokens[lo + 1 : hi] if t.norm not in NON_PIVOT}


def _fmt_words(words: Iterable[str], display: dict[str, str] | None = None) -> str:
    """Words for a reason string; stems are shown as a surface form when one is known."""
    return " ".join((display or {}).get(w, w) for w in words) or "-"


# --- the verifier ----------------------------------------------------------------------------


def verify(
    cached: str,
    query: str,
    cosine: float,
    *,
    threshold: float,
    embed_words: EmbedWords | None = None,
) -> tuple[bool, str]:
    """Decide whether the answer cached for ``cached`` may be served for ``query``.

    ``cosine`` is their sentence-embedding similarity. Returns ``(accepted, reason)``.
    """
    ta = [t for t in _tokens(cached) if t.norm not in TRIVIAL]
    tb = [t for t in _tokens(query) if t.norm not in TRIVIAL]
    if not ta or not tb:
        return False, "empty question"
    forms_a, forms_b = [t.form for t in ta], [t.form for t in tb]
    quoted = _quoted_difference(cached, query)
    if forms_a == forms_b and not quoted:
        return True, "same question after normalising case, punctuation, inflection and contractions"

    display = {t.stem: t.norm for t in ta + tb} | {t.form: t.norm for t in ta + tb}
    swap = _swapped_roles(ta, tb)
    if swap:
        x, y, pivot = (display.get(w, w) for w in swap)
        return False, f"swapped roles: '{x}' and '{y}' change places around '{pivot}'"

    count_a, count_b = Counter(forms_a), Counter(forms_b)
    removed, added = count_a - count_b, count_b - count_a
    edit = max(sum(removed.values()), sum(added.values()))
    if _is_minimal_pair(forms_a, forms_b, count_a, count_b, edit):
        change = f"'{_fmt_words(removed, display)}' -> '{_fmt_words(added, display)}'"
        return False, f"minimal pair: {change} changes the question"

    hard = _hard_difference(ta, tb, cached, query, removed, added, quoted, embed_words, display)
    if hard:
        return False, hard
    if cosine < threshold:
        return False, f"cosine {cosine:.3f} below threshold {threshold:.3f}"
    if edit == 0:
        return True, f"same words, one phrase moved (cosine {cosine:.3f})"
    return True, f"paraphrase: cosine {cosine:.3f} >= {threshold:.3f} and no negation/number/name/role change"


def _is_minimal_pair(
    forms_a: list[str], forms_b: list[str], count_a: Counter[str], count_b: Counter[str], edit: int
) -> bool:
    """Mostly the same words with a small edit: a word or two, or one contiguous slot of a few
    content words ("for shoes" -> "for digital gift cards"). A one-region rewrite of function words
    only ("how do I" -> "what are the steps to") is a reworded frame, not a slot, and is not minimal.
    """
    if edit == 0:
        return False
    shared = sum((count_a & count_b).values())
    if shared / max(len(forms_a), len(forms_b)) < MINIMAL_MIN_SHARED:
        return False
    if edit <= MINIMAL_MAX_EDIT:
        return True
    regions = [op for op in SequenceMatcher(a=forms_a, b=forms_b, autojunk=False).get_opcodes() if op[0] != "equal"]
    if len(regions) != 1 or edit > MINIMAL_MAX_SLOT:
        return False
    _, i1, i2, j1, j2 = regions[0]
    old = [w for w in forms_a[i1:i2] if _is_content(w)]
    new = [w for w in forms_b[j1:j2] if _is_content(w)]
    return bool(old and new) or (i1 == i2 and bool(new)) or (j1 == j2 and bool(old))


def _quoted_difference(cached: str, query: str) -> str | None:
    qa, qb = _quoted(cached), _quoted(query)
    if Counter(qa) == Counter(qb):
        return None
    norm_a = " ".join(t.norm for t in _tokens(cached))
    norm_b = " ".join(t.norm for t in _tokens(query))
    for phrase, other in [(q, norm_b) for q in qa] + [(q, norm_a) for q in qb]:
        if f" {phrase} " not in f" {other} ":
            return f"quoted text '{phrase}' only on one side"
    return None


def _hard_difference(
    ta: Sequence[Token],
    tb: Sequence[Token],
    cached: str,
    query: str,
    removed: Counter[str],
    added: Counter[str],
    quoted: str | None,
    embed_words: EmbedWords | None,
    display: dict[str, str],
) -> str | None:
    """The first meaning-changing difference of a closed class, or None."""
    if quoted:
        return quoted
    if _negations(ta) != _negations(tb):
        return f"negation differs ({_negations(ta)} vs {_negations(tb)} negators)"
    nums_a, nums_b = _numbers(ta), _numbers(tb)
    if nums_a != nums_b:
        only_a, only_b = _fmt_words((nums_a - nums_b).elements()), _fmt_words((nums_b - nums_a).elements())
        return f"numbers differ: {only_a} vs {only_b}"
    flip = _polar_flip({t.norm for t in ta} | {t.stem for t in ta}, {t.norm for t in tb} | {t.stem for t in tb})
    if flip:
        return f"opposite polar words: '{flip[0]}' vs '{flip[1]}'"
    pair = _affix_pair(removed, added)
    if pair:
        return f"affix antonyms: '{_fmt_words([pair[0]], display)}' vs '{_fmt_words([pair[1]], display)}'"
    for side, other, other_text in ((ta, tb, query), (tb, ta, cached)):
        missing = _unmatched_entities(side, other, other_text, embed_words)
        if missing:
            return f"name/identifier without counterpart: {_fmt_words(missing)}"
    return None
