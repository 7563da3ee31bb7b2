"""Leakage audit of user preference texts: do they name the user's held-out films?

A user text must be written from the user's *training* prefix only. A text written from the whole
history names the validation or test film far more often than chance (real LLM texts for ML-100K
named the validation title for 14.7% of users). This module finds every film title a text names and
compares, per held-out split, how often a user's text names that user's own held-out film with
controls:

- ``cross_user`` (the decisive one, popularity-matched): for each held-out pair (user u, film i), the
  fraction of *other* users' texts that name i among the users who never interacted with i (nor
  with a film of the same title); averaged over the pairs. Popular films are named by any text;
  this rate says how often, for exactly the films that are held out, without any access to them.
- ``random_unseen``: pairs (user, film the user never interacted with), all of them (exact, no sampling).
- ``train``: pairs (user, training film); template texts name three of them by design.

Test. Under the null "a text names held-out film i no more often than a text whose writer never saw
i", the number k of the n held-out pairs whose text names the film is a sum of independent
Bernoulli(p_i) (Poisson-binomial) with p_i the cross-user rate of film i. The one-sided p-value is
P(X >= k) for X ~ Binomial(n, mean p_i) (exact binomial tail, ``scipy.stats.binom.sf``): for
k >= n * mean p_i + 1 the binomial tail bounds the Poisson-binomial one from above (Hoeffding 1956),
so the test is conservative. No randomness is involved (nothing to seed). The p_i are estimates from
hundreds of texts; the 1-percentage-point margin below keeps their noise from flagging anything.
A split fails when ``rate - cross_user >= LEAK_MARGIN`` and ``p < LEAK_ALPHA``.

Title matching. Texts and titles are normalised the same way: Unicode accents dropped, lower case,
apostrophes removed ("Schindler's" = "Schindlers"), every other non-alphanumeric character a word
break. Each film is known by several forms: the MovieLens title ("Godfather, The"), the title with
its trailing article moved to the front ("The Godfather"; "Appartement, L'" -> "L'Appartement"), and
for "Main (Alias)" titles the main title and the alias, each also article-inverted. Matching walks a
text's words left to right and at each position takes the longest form starting there (a dict of
word tuples, so the cost is linear in the text length); the words of a match are consumed, so a text
naming "The Godfather: Part II" does not also name "The Godfather". A four-digit year right after a
form ("Cape Fear (1962)") resolves titles shared by several films to the film(s) of that year.
Ambiguous mentions: a form shared by several films (two "Body Snatchers", two "Cape Fear" without a
year) counts as naming every one of them; pairs where the film shares a form with one of the user's
own training films are left out of the held-out and unseen rates (the mention is explained by
training) and random-unseen/cross-user pairs exclude such twins too. Placeholder titles ("unknown",
MovieLens' "unkonwn"), titles whose normalised form is shorter than three characters ("M", "Ed") and
purely numeric titles ("187", indistinguishable from counts) are never matched and are left out of
every rate.
"""

from __future__ import annotations

import re
import unicodedata
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import sparse, stats

from ur4rec.data.dataset import PreparedData
from ur4rec.errors import UR4RecError

#: A held-out split fails when its mention rate exceeds the cross-user rate by this much ...
LEAK_MARGIN = 0.01
#: ... and the one-sided binomial test gives a p-value below this.
LEAK_ALPHA = 0.001
SPLITS = ("valid", "test")
PLACEHOLDERS = frozenset({"unknown", "unkonwn", "untitled", "none", "nan"})
MIN_FORM_CHARS = 3
_ARTICLES = ("the", "a", "an", "les", "la", "le", "l'", "il", "el", "das", "der", "die", "lo", "los", "las", "un",
             "une", "det", "den")
_INVERTED = re.compile(r"^(.*\S),\s*(" + "|".join(re.escape(a) for a in _ARTICLES) + r")$", re.IGNORECASE)
_ALIAS = re.compile(r"^(.*?\S)\s*\((.+)\)$")
_APOSTROPHES = re.compile(r"['\u2019\u2018`\u00b4]")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_YEAR = re.compile(r"^(1[89]|20)\d\d$")


def normalise(text: str) -> list[str]:
    """Words of ``text``: accents dropped, lower case, apostrophes removed, other punctuation a break."""
    text = unicodedata.normalize("NFKD", str(text))
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    return _NON_ALNUM.sub(" ", _APOSTROPHES.sub("", text)).split()


def _uninvert(title: str) -> str:
    m = _INVERTED.match(title.strip())
    if not m:
        return title
    rest, article = m.group(1), m.group(2)
    return f"{article}{rest}" if article.endswith("'") else f"{article} {rest}"


def title_forms(title: str) -> set[tuple[str, ...]]:
    """The word tuples a text may use to name ``title`` (empty for placeholders and unmatchable titles)."""
    title = str(title).strip()
    parts = [title]
    m = _ALIAS.match(title)
    if m:
        parts += [m.group(1), m.group(2)]
    forms = set()
    for part in parts:
        for variant in (part, _uninvert(part)):
            words = tuple(normalise(variant))
            joined = " ".join(words)
            if (len(joined) >= MIN_FORM_CHARS and joined not in PLACEHOLDERS
                    and not joined.replace(" ", "").isdigit()):
                forms.add(words)
    return forms


@dataclass
class TitleIndex:
    """Every matchable form -> the films (item ids) it names, and the lookup structures."""

    forms: dict[tuple[str, ...], tuple[int, ...]]
    lengths: dict[str, tuple[int, ...]]  # first word -> form lengths starting with it, longest first
    years: dict[int, int]  # item id -> year (films with a known year)
    matchable: np.ndarray  # bool [num_items + 1]
    twins: sparse.csr_matrix  # [num_items + 1]^2, films sharing a form (diagonal included)


def build_title_index(items: pd.DataFrame, num_items: int | None = None) -> TitleIndex:
    """Index of the ``items`` frame (columns item, title, year)."""
    num_items = int(num_items if num_items is not None else items["item"].max())
    by_form: dict[tuple[str, ...], set[int]] = {}
    years: dict[int, int] = {}
    for item, title, year in zip(items["item"].astype(int), items["title"], items["year"]):
        for form in title_forms(title):
            by_form.setdefault(form, set()).add(int(item))
        if year is not None and not pd.isna(year):
            years[int(item)] = int(year)
    forms = {f: tuple(sorted(s)) for f, s in by_form.items()}
    lengths: dict[str, set[int]] = {}
    for f in forms:
        lengths.setdefault(f[0], set()).add(len(f))
    matchable = np.zeros(num_items + 1, dtype=bool)
    rows, cols = [], []
    for ids in forms.values():
        matchable[list(ids)] = True
        for a in ids:
            rows += [a] * len(ids)
            cols += list(ids)
    diag = list(range(num_items + 1))
    twins = sparse.csr_matrix((np.ones(len(rows) + len(diag), dtype=np.int32), (rows + diag, cols + diag)),
                              shape=(num_items + 1, num_items + 1))
    twins.data[:] = 1
    return TitleIndex(forms, {w: tuple(sorted(n, reverse=True)) for w, n in lengths.items()}, years, matchable,
                      twins)


def find_mentions(text: str, index: TitleIndex) -> set[int]:
    """Films ``text`` names (longest form first, consumed; a following year resolves shared titles)."""
    words = normalise(text)
    found: set[int] = set()
    i = 0
    while i < len(words):
        step = 1
        for n in index.lengths.get(words[i], ()):
            ids = index.forms.get(tuple(words[i:i + n]))
            if ids is None:
                continue
            step = n
            nxt = words[i + n] if i + n < len(words) else ""
            if _YEAR.match(nxt):
                dated = tuple(x for x in ids if index.years.get(x) == int(nxt))
                if dated:
                    ids, step = dated, n + 1
            found.update(ids)
            break
        i += step
    return found


@dataclass
class Rate:
    named: int
    pairs: int

    @property
    def rate(self) -> float:
        return self.named / self.pairs if self.pairs else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"named": self.named, "pairs": self.pairs, "rate": self.rate}


@dataclass
class SplitAudit:
    split: str
    held_out: Rate
    cross_user: float  # mean over the held-out pairs of the other-user rate of the same film
    cross_user_pairs: int  # (other user, film) pairs behind it
    p_value: float
    leaked: bool

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "held_out": self.held_out.to_dict(), "cross_user": self.cross_user,
                "cross_user_pairs": self.cross_user_pairs, "excess": self.held_out.rate - self.cross_user,
                "p_value": self.p_value, "leaked": self.leaked}


@dataclass
class LeakageAudit:
    """The audit of one set of user texts; ``verdict`` is "pass" or "fail"."""

    users: int
    splits: list[SplitAudit]
    random_unseen: Rate
    train: Rate
    seconds: float = 0.0
    where: str = ""
    action: str = ""  # what text_leakage did with a failed verdict: error | warn | ignore
    margin: float = LEAK_MARGIN
    alpha: float = LEAK_ALPHA
    test: str = "one-sided exact binomial, null p = cross-user rate"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return "fail" if any(s.leaked for s in self.splits) else "pass"

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("splits", "random_unseen", "train", "extra")}
        return out | {"verdict": self.verdict, "splits": {s.split: s.to_dict() for s in self.splits},
                      "random_unseen": self.random_unseen.to_dict(), "train": self.train.to_dict()} | self.extra

    def table(self) -> pd.DataFrame:
        """One row per kind of pair: how many, how many named, the rate (and test for held-out rows)."""
        rows = [{"pairs": f"held-out {s.split}", "n": s.held_out.pairs, "named": s.held_out.named,
                 "rate %": 100 * s.held_out.rate, "cross-user %": 100 * s.cross_user, "p (one-sided)": s.p_value,
                 "leak": s.leaked} for s in self.splits]
        rows += [{"pairs": "random unseen", "n": self.random_unseen.pairs, "named": self.random_unseen.named,
                  "rate %": 100 * self.random_unseen.rate},
                 {"pairs": "training", "n": self.train.pairs, "named": self.train.named,
                  "rate %": 100 * self.train.rate}]
        return pd.DataFrame(rows).set_index("pairs")

    def summary(self) -> str:
        parts = [f"{s.split} {100 * s.held_out.rate:.2f}% ({s.held_out.named}/{s.held_out.pairs}) vs cross-user "
                 f"{100 * s.cross_user:.2f}%, p={s.p_value:.2g}" for s in self.splits]
        return (f"Leakage audit of {self.users} user texts: {self.verdict.upper()}. Held-out titles named: "
                f"{'; '.join(parts)}; random unseen {100 * self.random_unseen.rate:.3f}% "
                f"({self.random_unseen.named}/{self.random_unseen.pairs}), training "
                f"{100 * self.train.rate:.2f}% ({self.train.named}/{self.train.pairs}).")


def _matrix(lists: Sequence[np.ndarray], rows: np.ndarray, width: int) -> sparse.csr_matrix:
    r = np.concatenate([np.full(len(lists[u]), k) for k, u in enumerate(rows)] or [np.zeros(0, int)])
    c = np.concatenate([np.asarray(lists[u], dtype=np.int64) for u in rows] or [np.zeros(0, np.int64)])
    m = sparse.csr_matrix((np.ones(len(r), dtype=np.int32), (r, c)), shape=(len(rows), width))
    m.data[:] = 1
    return m


def audit_user_texts(data: PreparedData, texts: Sequence[str | None], where: str = "",
                     index: TitleIndex | None = None) -> LeakageAudit:
    """Audit the user texts ``texts[u]`` (None = no text; such users are left out)."""
    import time

    t0 = time.perf_counter()
    index = index or build_title_index(data.items, data.num_items)
    width = data.num_items + 1
    users = np.array([u for u, t in enumerate(texts) if t], dtype=np.int64)
    named = np.zeros((len(users), width), dtype=bool)
    for k, u in enumerate(users):
        ids = find_mentions(texts[u], index)
        if ids:
            named[k, list(ids)] = True
    train = data.train_sequences()
    held = {s: data.held_out(s) for s in SPLITS}
    twins = index.twins
    train_m = _matrix(train, users, width)
    seen_m = train_m.copy()
    for s in SPLITS:
        seen_m = seen_m + _matrix(held[s], users, width)
    near_train = (train_m @ twins).toarray() > 0  # a film of the same title was in training
    near_seen = (seen_m @ twins).toarray() > 0  # ... was interacted with at all
    ok = index.matchable[None, :]

    unseen = ~near_seen & ok
    random_unseen = Rate(int((named & unseen).sum()), int(unseen.sum()))
    tr = train_m.toarray() > 0
    train_rate = Rate(int((named & tr & ok).sum()), int((tr & ok).sum()))
    # popularity-matched control, per film: texts of users who never came near it that still name it
    other_named = (named & unseen).sum(axis=0)
    other_pairs = unseen.sum(axis=0)

    splits = []
    for s in SPLITS:
        rows = np.concatenate([np.full(len(held[s][u]), k) for k, u in enumerate(users)] or [np.zeros(0, int)])
        cols = np.concatenate([held[s][u] for u in users] or [np.zeros(0, np.int64)]).astype(np.int64)
        keep = index.matchable[cols] & ~near_train[rows, cols]
        rows, cols = rows[keep], cols[keep]
        k, n = int(named[rows, cols].sum()), len(rows)
        with np.errstate(invalid="ignore", divide="ignore"):
            p_i = np.where(other_pairs[cols] > 0, other_named[cols] / np.maximum(other_pairs[cols], 1), 0.0)
        p0 = float(p_i.mean()) if n else 0.0
        p_value = float(stats.binom.sf(k - 1, n, p0)) if n else 1.0
        rate = k / n if n else 0.0
        leaked = bool(n and rate - p0 >= LEAK_MARGIN and p_value < LEAK_ALPHA)
        splits.append(SplitAudit(s, Rate(k, n), p0, int(other_pairs[cols].sum()), p_value, leaked))
    return LeakageAudit(int(len(users)), splits, random_unseen, train_rate, time.perf_counter() - t0, where)


Action = Literal["error", "warn", "ignore"]


def enforce(audit: LeakageAudit, action: Action, source: str) -> LeakageAudit:
    """Apply ``text_leakage``: raise on a failed verdict ("error"), warn ("warn"), or only record it."""
    audit.action = action
    if audit.verdict == "pass" or action == "ignore":
        return audit
    what = (f"The {source} user texts name their users' held-out films far more often than other users' texts "
            f"name the same films (leakage). {audit.summary()} A held-out rate {100 * LEAK_MARGIN:.0f} points or "
            f"more above the cross-user rate with one-sided p < {LEAK_ALPHA:g} fails.")
    if action == "error":
        raise UR4RecError(what, where=f"text source {source}: {audit.where}",
                          fix="regenerate the texts from training prefixes only (never show a text writer the "
                              "validation or test interactions), or set text_leakage: warn to proceed with the "
                              "run labelled as leaky")
    warnings.warn(f"{what} Proceeding because text_leakage is 'warn'; the result is labelled.", UserWarning,
                  stacklevel=2)
    return audit
