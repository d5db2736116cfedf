"""Telugu question -> answer conversations for S2S training: texts, voices and synthesis.

Texts. `assets/conversations/pairs_te.jsonl` holds question -> answer templates over 16 topics
(greetings, well-being, names, time and dates, weather, numbers and arithmetic, family, food,
places and directions, shopping and prices, health, travel, help and thanks, goodbyes, culture,
daily life), each with an English gloss; `slots_te.json` holds the slot vocabularies (Telugu
personal names, cities with their case forms, landmarks, dishes, shop items with units and
prices, ...) and the phrase formats for times, durations, ages and dates. A template's slots
are vocabulary entries, integers (`int:LO-HI[/STEP]`), weekdays and months (CLDR Telugu names
from `babel`) or a generator that couples several values (`add`, `date_weekday`, `change`, ...:
the answer is computed, so it always answers its question). Numbers are spoken in Telugu words
(`indic-numtowords`, with attributive and ordinal forms derived here). `TextSet.load()` reads
both files; `expand(template, index)` enumerates every filled variant.

Splits are by text: `split_of(template_id)` puts about a tenth of each topic's templates (all
templates sharing a question pattern together) in `validation`, fixed by a hash of the template
id, so validation texts never occur in training. `validation_voices` pairs reuse training texts
with user voices held out of training (`HELD_OUT_USER_VOICES`).

Voices, all offline: `espeak-ng -v te+VARIANT` (pitch, speed, SSML pitch range) and Festival
with `festvox-te-nsk` (f0 mean and spread of the simple intonation model, duration stretch).
Questions are spoken by `USER_VOICES` (both engines, jittered pitch and speed, and optionally
noise, synthetic room reverb and band-limiting); answers by the assistant voice of the pair's
speaker id (`ASSISTANT_VOICES`, one fixed engine, voice and pitch per
`records.SPEAKER_IDS` name), with the prosody of its emotion id:

| emotion        | rate  | pitch | pitch range | energy | pause before | intent                   |
|----------------|------:|------:|------------:|-------:|-------------:|--------------------------|
| `neutral`      | 1.00x | 1.00x |       1.00x |   0 dB |          0 s | plain                    |
| `happy`        | 1.08x | 1.08x |       1.30x |  +2 dB |          0 s | brighter, livelier       |
| `laugh`        | 1.12x | 1.12x |       1.60x |  +3 dB |          0 s | bouncy, wide intonation  |
| `excited`      | 1.18x | 1.15x |       1.50x |  +4 dB |          0 s | fast, high, loud         |
| `empathy`      | 0.88x | 0.94x |       0.70x |  -4 dB |          0 s | slow, low, soft, flat    |
| `surprise`     | 1.05x | 1.20x |       1.80x |  +2 dB |          0 s | high, very wide          |
| `thinking`     | 0.85x | 0.96x |       0.60x |  -3 dB |        0.4 s | slow, flat, hesitant     |
| `telugu_heavy` | 0.92x | 1.00x |       1.40x |  +1 dB |          0 s | drawn-out sing-song      |
| `telugu_mild`  | 0.97x | 1.00x |       1.15x |   0 dB |          0 s | lightly lilting          |

Rate scales espeak-ng's words per minute and divides Festival's duration stretch; pitch scales
espeak-ng's pitch (0-99) and Festival's f0 mean; pitch range scales espeak-ng's SSML prosody
range and Festival's f0 standard deviation; energy is a gain on the answer's level (-20 dBFS
RMS at 0 dB); the pause is silence before the answer. Emotions are drawn from those that fit
the template (its `emotions`, else its topic's), so no answer laughs about an ambulance.

`plan_pair(text_set, seed, index)` decides everything about pair `index` from `(seed, index)`
alone (the same pair for any `--pairs`, shard size or worker count); `render_pairs` synthesises
a batch of plans (one Festival process per batch).
"""

from __future__ import annotations

import calendar
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any
from xml.sax import saxutils

import babel.dates
import indic_numtowords
import numpy as np
import scipy.signal

from telugu_jax.data import audio
from telugu_jax.data import records

ASSET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "conversations")
PAIRS_NAME = "pairs_te.jsonl"
SLOTS_NAME = "slots_te.json"
SPLITS = ("train", "validation", "validation_voices")
VALIDATION_TEMPLATE_FRACTION = 0.1
"""Share of each topic's templates (by question pattern) held out as `validation` texts."""

Value = Mapping[str, str]
"""A slot value: Telugu forms (`te` and e.g. `dat`, `loc`, `attr`, `ord`) and `en` glosses."""

_PLACEHOLDER = re.compile(r"\{(\w+)(?:\.(\w+))?\}")

# ------------------------------------------------------------------------------------------------
# Telugu numbers and calendar names.

_PLURAL_TO_OBLIQUE = {"వందలు": "వందల", "వేలు": "వేల", "లక్షలు": "లక్షల", "కోట్లు": "కోట్ల"}


@functools.lru_cache(maxsize=None)
def cardinal(n: int) -> str:
  """Telugu words for a non-negative integer, as said on its own ("రెండు వందలు")."""
  # NFC: indic-numtowords spells ై as the decomposed ె + ౖ (U+0C46 U+0C56).
  words = unicodedata.normalize("NFC", indic_numtowords.num2words(int(n), lang="te"))
  if words.startswith("ఒక వెయ్యి"):  # 1000..1999 are said "వెయ్యి ...", not "ఒక వెయ్యి ..."
    words = words[len("ఒక ") :]
  return words


def attributive(n: int) -> str:
  """Telugu words for `n` before a noun: "ఒక", "రెండు వందల", "ముప్పై ఒక్క"."""
  if n == 1:
    return "ఒక"
  words = cardinal(n).split(" ")
  words[-1] = _PLURAL_TO_OBLIQUE.get(words[-1], "ఒక్క" if words[-1] == "ఒకటి" else words[-1])
  return " ".join(words)


def ordinal(n: int) -> str:
  """Telugu ordinal: "ఒకటవ", "రెండవ", "ఇరవయ్యవ", "ముప్పై ఒకటవ", "వందవ"."""
  words = cardinal(n)
  if words.endswith("ై"):  # ఇరవై -> ఇరవయ్యవ
    return words[:-1] + "య్యవ"
  if words.endswith(("ు", "ి")):  # రెండు -> రెండవ, పది -> పదవ
    return words[:-1] + "వ"
  return words + "వ"  # వంద -> వందవ


def year_words(year: int) -> str:
  """A year as said in Telugu: 1950 -> "పందొమ్మిది వందల యాభై", 2025 -> "రెండు వేల ఇరవై ఐదు"."""
  if 1100 <= year < 2000:
    hundreds, rest = divmod(year, 100)
    return f"{cardinal(hundreds)} వందల {cardinal(rest)}" if rest else f"{cardinal(hundreds)} వందలు"
  return cardinal(year)


@functools.lru_cache(maxsize=None)
def number_value(n: int) -> Value:
  """A number slot value: `te` (cardinal), `attr`, `ord` and `en` (digits). Shared: read only."""
  return {"te": cardinal(n), "attr": attributive(n), "ord": ordinal(n), "en": str(n)}


def weekday_names(locale: str = "te") -> list[str]:
  """CLDR wide weekday names, Monday first."""
  names = babel.dates.get_day_names("wide", locale=locale)
  return [names[i] for i in range(7)]


def month_names(locale: str = "te") -> list[str]:
  """CLDR wide month names, January first."""
  names = babel.dates.get_month_names("wide", locale=locale)
  return [names[i] for i in range(1, 13)]


# ------------------------------------------------------------------------------------------------
# The text set.


@dataclasses.dataclass(frozen=True)
class Template:
  """One question -> answer template of the bundled text set."""

  id: str
  topic: str
  question: str
  answer: str
  question_en: str
  answer_en: str
  slots: tuple[tuple[str, str], ...] = ()  # (variable, type) pairs
  gen: str | None = None  # generator of coupled variables
  emotions: tuple[str, ...] = ()  # fitting emotions; empty = the topic's


@dataclasses.dataclass(frozen=True)
class TextPair:
  """A filled question -> answer pair with its English gloss."""

  template_id: str
  topic: str
  question: str
  answer: str
  question_en: str
  answer_en: str


class _Lexicon:
  """Slot vocabularies and phrase formats of `slots_te.json`, plus CLDR calendar names."""

  def __init__(self, slots: Mapping[str, Any]):
    self.vocab = {name: [dict(v) for v in values] for name, values in slots["vocab"].items()}
    self.vocab["name"] = self.vocab["male_name"] + self.vocab["female_name"]
    self.formats = slots["formats"]
    days_te, days_en = weekday_names("te"), weekday_names("en")
    months_te, months_en = month_names("te"), month_names("en")
    self.weekdays = [{"te": t, "en": e} for t, e in zip(days_te, days_en)]
    self.months = [{"te": t, "en": e} for t, e in zip(months_te, months_en)]
    self.vocab["weekday"] = self.weekdays
    self.vocab["month"] = self.months

  def time(self, hour: int, minute: int) -> dict[str, str]:
    """A clock time (12-hour) with `te`, `dat` ("... గంటలకు") and `en` forms."""
    spec = self.formats["time"][("hour" if minute == 0 else "minutes")
                                + ("_one" if hour == 1 else "")]
    return {form: text.format(h=hour, m=f"{minute:02d}") if form == "en"
            else text.format(h=cardinal(hour), m=cardinal(minute))
            for form, text in spec.items()}

  def hours(self, n: int) -> dict[str, str]:
    """A duration in hours: `te` ("రెండు గంటలు"), `obl` ("రెండు గంటల"), `en`."""
    spec = self.formats["hours"]["one" if n == 1 else "many"]
    return {form: text.format(n=n if form == "en" else attributive(n))
            for form, text in spec.items()}

  def years(self, n: int) -> dict[str, str]:
    """An age or span in years: "ఒక సంవత్సరం", "ఐదు సంవత్సరాలు"."""
    spec = self.formats["years"]["one" if n == 1 else "many"]
    return {"te": spec["te"].format(n=attributive(n)), "en": spec["en"].format(n=n)}

  def persons(self, n: int) -> dict[str, str]:
    """A count of people: "ఇద్దరు", "ఐదుగురు", "పది మంది"."""
    spec = self.formats["persons"]
    return {"te": spec.get(str(n)) or spec["many"].format(n=attributive(n)), "en": str(n)}

  def date(self, month: int, day: int) -> dict[str, str]:
    """A day of the year: "మార్చి పద్నాలుగవ తేదీ"."""
    spec = self.formats["date"]
    return {"te": spec["te"].format(month=self.months[month - 1]["te"], day=ordinal(day)),
            "en": spec["en"].format(month=self.months[month - 1]["en"], day=day)}

  def unit(self, name: str) -> dict[str, dict[str, str]]:
    """The `unit`, `units` and `units_obl` values of a shop unit ("కిలో", "కిలోలు", "కిలోల")."""
    spec = self.formats["units"][name]
    return {"unit": {"te": spec["one"], "en": spec["en"]},
            "units": {"te": spec["many"], "en": spec["en_many"]},
            "units_obl": {"te": spec["obl"], "en": spec["en_many"]}}


def _int_domain(spec: str) -> list[dict[str, str]]:
  match = re.fullmatch(r"int:(\d+)-(\d+)(?:/(\d+))?", spec)
  if not match:
    raise ValueError(f"bad integer slot {spec!r} (expected int:LO-HI or int:LO-HI/STEP)")
  low, high, step = int(match[1]), int(match[2]), int(match[3] or 1)
  return [number_value(n) for n in range(low, high + 1, step)]


def month_index(n: int) -> dict[str, str]:
  """A month's number, whose ordinal is "మొదటి" (first) for January and "రెండవ", ... after."""
  return {**number_value(n), "ord": "మొదటి" if n == 1 else ordinal(n)}


def _generators(lex: _Lexicon) -> dict[str, Any]:
  """Generators of coupled slot values: name -> function returning every assignment."""
  num = number_value
  days, months = lex.weekdays, lex.months
  month_days = [calendar.monthrange(2023, m)[1] for m in range(1, 13)]  # a common year
  times = [(h, m) for h in range(1, 13) for m in range(0, 60, 5)]

  def shifted(hour: int, minute: int, delta: int) -> tuple[int, int]:
    total = (hour % 12) * 60 + minute + delta
    return (total // 60 - 1) % 12 + 1, total % 60

  def price_total():
    out = []
    for item in lex.vocab["shop_item"]:
      low, high, step = item["prices"]
      for price, k in itertools.product(range(low, high + 1, step), range(2, 6)):
        out.append({**lex.unit(item["unit"]), "item": item, "price": num(price),
                    "k": num(k), "total": num(price * k)})
    return out

  return {
      "add": lambda: [{"a": num(a), "b": num(b), "c": num(a + b)}
                      for a in range(1, 51) for b in range(1, 51)],
      "sub": lambda: [{"a": num(a), "b": num(b), "c": num(a - b)}
                      for a in range(2, 61) for b in range(1, a)],
      "mul": lambda: [{"a": num(a), "b": num(b), "c": num(a * b)}
                      for a in range(2, 13) for b in range(2, 13)],
      "share": lambda: [{"people": lex.persons(p), "each": num(e), "total": num(p * e)}
                        for p in range(2, 11) for e in range(2, 11)],
      "double": lambda: [{"a": num(a), "c": num(2 * a)} for a in range(1, 101)],
      "half": lambda: [{"a": num(a), "c": num(a // 2)} for a in range(2, 101, 2)],
      "square": lambda: [{"a": num(a), "c": num(a * a)} for a in range(2, 21)],
      "succ": lambda: [{"a": num(a), "b": num(a + 1)} for a in range(1, 1000)],
      "pred": lambda: [{"a": num(a), "b": num(a - 1)} for a in range(2, 1001)],
      "compare": lambda: [{"a": num(a), "b": num(b), "big": num(max(a, b)),
                           "small": num(min(a, b))}
                          for a in range(1, 101) for b in range(1, 101) if a != b],
      "weekday_next": lambda: [{"day": days[i], "next": days[(i + 1) % 7]} for i in range(7)],
      "weekday_prev": lambda: [{"day": days[i], "prev": days[(i - 1) % 7]} for i in range(7)],
      "weekday_after": lambda: [{"day": days[i], "n": num(n), "result": days[(i + n) % 7]}
                                for i in range(7) for n in range(2, 7)],
      "month_next": lambda: [{"month": months[i], "next": months[(i + 1) % 12]}
                             for i in range(12)],
      "month_prev": lambda: [{"month": months[i], "prev": months[(i - 1) % 12]}
                             for i in range(12)],
      "month_days": lambda: [{"month": months[i], "days": num(month_days[i])}
                             for i in range(12) if i != 1],
      "month_index": lambda: [{"month": months[i], "index": month_index(i + 1)} for i in range(12)],
      "date": lambda: [{"date": lex.date(m, d)}
                       for m in range(1, 13) for d in range(1, month_days[m - 1] + 1)],
      "date_weekday": lambda: [
          {"year": {"te": year_words(y), "en": str(y)}, "date": lex.date(m, d),
           "weekday": days[calendar.weekday(y, m, d)]}
          for y in range(2024, 2028) for m in range(1, 13)
          for d in range(1, calendar.monthrange(y, m)[1] + 1)],
      "leap_year": lambda: [{"year": {"te": year_words(y), "en": str(y)}}
                            for y in range(1950, 2101) if calendar.isleap(y)],
      "common_year": lambda: [{"year": {"te": year_words(y), "en": str(y)}}
                              for y in range(1950, 2101) if not calendar.isleap(y)],
      "time_after": lambda: [{"time": lex.time(h, m), "dur": lex.hours(n),
                              "time2": lex.time(*shifted(h, m, 60 * n))}
                             for (h, m) in times for n in range(1, 6)],
      "time_before": lambda: [{"time": lex.time(h, m), "earlier": lex.time(*shifted(h, m, -30))}
                              for (h, m) in times],
      "age_next": lambda: [{"age": lex.years(a), "next": lex.years(a + 1)} for a in range(1, 18)],
      "age_diff": lambda: [{"mom": lex.years(m), "d": lex.years(d), "dad": lex.years(m + d)}
                           for m in range(35, 61) for d in range(1, 9)],
      "persons": lambda: [{"n": lex.persons(n)} for n in range(3, 11)],
      "price_total": price_total,
      "change": lambda: [{"bill": num(b), "note": num(note), "change": num(note - b)}
                         for note in (100, 200, 500) for b in range(10, note, 10)],
      "discount": lambda: [{"price": num(p), "pct": num(pct),
                            "pay": num(p * (100 - pct) // 100)}
                           for p in range(100, 2001, 100) for pct in (10, 20, 25, 50)],
      "add_price": lambda: [{"a": num(a), "b": num(b), "c": num(a + b)}
                            for a in range(50, 501, 10) for b in range(10, 101, 5)],
      "city_pair": lambda: [{"src": s, "dst": d} for s in lex.vocab["city"]
                            for d in lex.vocab["city"] if s is not d],
  }


def fill(text: str, assignment: Mapping[str, Value], *, english: bool = False) -> str:
  """Replaces `{var}` / `{var.form}` placeholders with slot values.

  Args:
    text: a template string.
    assignment: variable -> value.
    english: fill the English gloss (`en`, or `<form>_en` where a value has it).

  Returns:
    The filled string.
  """

  def replace(match: re.Match) -> str:
    value = assignment[match[1]]
    form = match[2]
    if english:
      return value.get(f"{form}_en", value["en"]) if form else value["en"]
    return value[form or "te"]

  filled = _PLACEHOLDER.sub(replace, text)
  if english:  # Sentences that begin with a slot ("the bus stand is ...") get their capital.
    filled = re.sub(r"(^|[.!?]\s+)([a-z])", lambda m: m[1] + m[2].upper(), filled)
  return filled


class TextSet:
  """The bundled Telugu question -> answer templates and their slot vocabularies."""

  def __init__(self, header: Mapping[str, Any], templates: Sequence[Template],
               slots: Mapping[str, Any]):
    self.version = str(header["version"])
    self._header, self._slots = dict(header), slots
    self.topics = {name: dict(info) for name, info in header["topics"].items()}
    self.templates = list(templates)
    self.by_id = {t.id: t for t in self.templates}
    self._lex = _Lexicon(slots)
    self._generators = _generators(self._lex)
    self._generated: dict[str, list[dict[str, Value]]] = {}
    self._domains: dict[str, list[list[dict[str, Value]]]] = {}
    self._splits = self._assign_splits()
    self._by_topic = {topic: [t for t in self.templates if t.topic == topic]
                      for topic in self.topics}
    self._check()
    # Templates with many fillings are drawn more often (1 + log2 of their count), so a run has
    # more distinct texts without drowning the hand-written fixed pairs.
    self._cumulative_weights = {
        topic: np.cumsum([1.0 + math.log2(self.num_expansions(t)) for t in templates])
        for topic, templates in self._by_topic.items()}

  @classmethod
  def load(cls, directory: str | os.PathLike = ASSET_DIR) -> TextSet:
    """Reads `pairs_te.jsonl` and `slots_te.json` from `directory`.

    Raises:
      ValueError: a malformed file or template (the message names the file and the template),
        or files of different versions.
    """
    directory = os.fspath(directory)
    pairs_path = os.path.join(directory, PAIRS_NAME)
    with open(pairs_path, encoding="utf-8") as f:
      lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    try:
      header = json.loads(lines[0][1])
      rows = [(n, json.loads(line)) for n, line in lines[1:]]
    except (IndexError, json.JSONDecodeError) as e:
      raise ValueError(f"{pairs_path}: not a JSON-lines text set ({e})") from e
    with open(os.path.join(directory, SLOTS_NAME), encoding="utf-8") as f:
      slots = json.load(f)
    if header.get("version") != slots.get("version"):
      raise ValueError(f"{directory}: {PAIRS_NAME} is version {header.get('version')}, "
                       f"{SLOTS_NAME} version {slots.get('version')}")
    templates = []
    for line_no, row in rows:
      try:
        templates.append(Template(
            id=row["id"], topic=row["topic"], question=row["q"], answer=row["a"],
            question_en=row["q_en"], answer_en=row["a_en"],
            slots=tuple(row.get("slots", {}).items()), gen=row.get("gen"),
            emotions=tuple(row.get("emotions", ()))))
      except KeyError as e:
        raise ValueError(f"{pairs_path}:{line_no}: template lacks {e}") from e
    return cls(header, templates, slots)

  def restricted(self, topics: Sequence[str] = (), fixed_only: bool = False) -> TextSet:
    """The text set cut down to `topics` (all when empty) and, with `fixed_only`, to templates
    without slots (one text each): small sets for demos. Splits stay as in the full set.

    Raises:
      ValueError: an unknown topic, or nothing left.
    """
    unknown = sorted(set(topics) - set(self.topics))
    if unknown:
      raise ValueError(f"unknown topics {unknown}; the topics are {sorted(self.topics)}")
    keep = set(topics or self.topics)
    templates = [t for t in self.templates if t.topic in keep
                 and (not fixed_only or self.num_expansions(t) == 1)]
    if not templates:
      raise ValueError(f"no templates left for topics {sorted(keep)} (fixed_only={fixed_only})")
    header = {**self._header, "topics": {k: v for k, v in self.topics.items()
                                         if any(t.topic == k for t in templates)}}
    return TextSet(header, templates, self._slots)

  def _assign_splits(self) -> dict[str, str]:
    """Holds out the lowest-hashing question patterns of each topic as `validation`."""
    splits = {}
    for topic in self.topics:
      groups: dict[str, list[str]] = {}
      for t in self.templates:
        if t.topic == topic:
          groups.setdefault(t.question, []).append(t.id)
      ranked = sorted(groups.values(),
                      key=lambda ids: hashlib.sha256(ids[0].encode()).hexdigest())
      held = max(1, round(VALIDATION_TEMPLATE_FRACTION * len(ranked))) if ranked else 0
      for rank, ids in enumerate(ranked):
        for template_id in ids:
          splits[template_id] = "validation" if rank < held else "train"
    return splits

  def _check(self) -> None:
    """Validates ids, topics, emotions, slot types and every placeholder's form."""
    if len(self.by_id) != len(self.templates):
      raise ValueError("duplicate template ids in the text set")
    for t in self.templates:
      where = f"template {t.id}"
      if t.topic not in self.topics:
        raise ValueError(f"{where}: unknown topic {t.topic!r}")
      for emotion in self.emotions_for(t):
        if emotion not in records.EMOTION_IDS:
          raise ValueError(f"{where}: unknown emotion {emotion!r}")
      if t.gen is not None and t.gen not in self._generators:
        raise ValueError(f"{where}: unknown generator {t.gen!r}")
      for _, slot_type in t.slots:
        if not (slot_type in self._lex.vocab or slot_type.startswith("int:")):
          raise ValueError(f"{where}: unknown slot type {slot_type!r}")
      domains = self._domain(t)
      for text in (t.question, t.answer, t.question_en, t.answer_en):
        for match in _PLACEHOLDER.finditer(text):
          owners = [d for d in domains if match[1] in d[0]]
          if not owners:
            raise ValueError(f"{where}: placeholder {match[0]} has no slot or generator value")
          form = match[2] or "te"
          if any(form not in a[match[1]] for a in owners[0]):
            raise ValueError(f"{where}: some values of {match[1]!r} lack the form {form!r}")

  def _domain(self, template: Template) -> list[list[dict[str, Value]]]:
    """The value lists whose product is the template's expansions."""
    if template.id not in self._domains:
      domains = []
      if template.gen is not None:
        if template.gen not in self._generated:
          self._generated[template.gen] = self._generators[template.gen]()
        domains.append(self._generated[template.gen])
      for var, slot_type in template.slots:
        values = _int_domain(slot_type) if slot_type.startswith("int:") else self._lex.vocab[
            slot_type]
        domains.append([{var: v} for v in values])
      self._domains[template.id] = domains
    return self._domains[template.id]

  def num_expansions(self, template: Template) -> int:
    """How many filled pairs the template makes."""
    return math.prod(len(d) for d in self._domain(template))

  def expand(self, template: Template, index: int) -> TextPair:
    """The `index`-th filled pair of `template` (0 <= index < num_expansions)."""
    assignment: dict[str, Value] = {}
    for domain in reversed(self._domain(template)):
      index, digit = divmod(index, len(domain))
      assignment.update(domain[digit])
    return TextPair(
        template_id=template.id, topic=template.topic,
        question=fill(template.question, assignment), answer=fill(template.answer, assignment),
        question_en=fill(template.question_en, assignment, english=True),
        answer_en=fill(template.answer_en, assignment, english=True))

  def sample(self, rng: np.random.Generator) -> TextPair:
    """A random pair: a uniform topic, a template of it (weighted by 1 + log2 of its number of
    fillings), a uniform filling."""
    topic = sorted(self.topics)[int(rng.integers(len(self.topics)))]
    weights = self._cumulative_weights[topic]
    template = self._by_topic[topic][int(np.searchsorted(weights, rng.random() * weights[-1],
                                                         side="right"))]
    return self.expand(template, int(rng.integers(self.num_expansions(template))))

  def split_of(self, template_id: str) -> str:
    """`train` or `validation` (texts held out of training)."""
    return self._splits[template_id]

  def emotions_for(self, template: Template) -> tuple[str, ...]:
    """The emotions that fit the template's answer."""
    return template.emotions or tuple(self.topics[template.topic]["emotions"])


# ------------------------------------------------------------------------------------------------
# Voices.


@dataclasses.dataclass(frozen=True)
class Voice:
  """A synthetic voice: an engine and its settings."""

  name: str
  engine: str  # "espeak" or "festival"
  variant: str  # espeak-ng voice variant ("m1".."m7", "f1".."f5"); "" for Festival
  pitch: float  # espeak-ng -p (0..99); Festival f0 mean in Hz
  pitch_range: float  # espeak-ng SSML prosody range in %; Festival f0 standard deviation in Hz
  speed: float  # espeak-ng words per minute; Festival 1 / Duration_Stretch

  def scaled(self, *, rate: float = 1.0, pitch: float = 1.0, pitch_range: float = 1.0) -> Voice:
    """The same voice with speed, pitch and pitch range multiplied."""
    return dataclasses.replace(self, speed=round(self.speed * rate, 3),
                               pitch=round(self.pitch * pitch, 2),
                               pitch_range=round(self.pitch_range * pitch_range, 2))


@dataclasses.dataclass(frozen=True)
class Prosody:
  """How an emotion changes the answer's delivery (see the module docstring's table)."""

  rate: float
  pitch: float
  pitch_range: float
  gain_db: float
  pause_s: float = 0.0


EMOTION_PROSODY = {
    "neutral": Prosody(1.00, 1.00, 1.00, 0.0),
    "happy": Prosody(1.08, 1.08, 1.30, 2.0),
    "laugh": Prosody(1.12, 1.12, 1.60, 3.0),
    "excited": Prosody(1.18, 1.15, 1.50, 4.0),
    "empathy": Prosody(0.88, 0.94, 0.70, -4.0),
    "surprise": Prosody(1.05, 1.20, 1.80, 2.0),
    "thinking": Prosody(0.85, 0.96, 0.60, -3.0, 0.4),
    "telugu_heavy": Prosody(0.92, 1.00, 1.40, 1.0),
    "telugu_mild": Prosody(0.97, 1.00, 1.15, 0.0),
}
assert set(EMOTION_PROSODY) == set(records.EMOTION_IDS)

ASSISTANT_VOICES = {
    "male_young": Voice("assistant-male_young", "festival", "", 132.0, 22.0, 1.0),
    "male_mature": Voice("assistant-male_mature", "festival", "", 98.0, 14.0, 0.9),
    "female_young": Voice("assistant-female_young", "espeak", "f2", 70.0, 120.0, 165.0),
    "female_professional": Voice("assistant-female_professional", "espeak", "f4", 58.0, 90.0,
                                 150.0),
}
"""The fixed answer voice of each `records.SPEAKER_IDS` name (before emotion prosody)."""
assert set(ASSISTANT_VOICES) == set(records.SPEAKER_IDS)


def _user_voices() -> tuple[Voice, ...]:
  voices = []
  for k, variant in enumerate([f"m{i}" for i in range(1, 8)] + [f"f{i}" for i in range(1, 6)]):
    base = 34 if variant[0] == "m" else 58
    voices.append(Voice(f"espeak-{variant}-a", "espeak", variant, base + 2 * (k % 4), 90.0,
                        145.0 + 3 * k))
    voices.append(Voice(f"espeak-{variant}-b", "espeak", variant, base + 14 + 2 * (k % 3), 115.0,
                        172.0 - 2 * k))
  for f0, std, speed in ((92, 12, 0.92), (104, 18, 1.0), (116, 24, 1.08), (126, 15, 0.95),
                         (140, 26, 1.05), (155, 30, 0.9), (170, 22, 1.0), (188, 34, 1.1)):
    voices.append(Voice(f"festival-f{f0:03d}", "festival", "", float(f0), float(std), speed))
  return tuple(voices)


USER_VOICES = _user_voices()
"""Question voices: 24 espeak-ng (12 variants x 2 settings) and 8 Festival settings."""
HELD_OUT_USER_VOICES = frozenset({"espeak-m4-b", "espeak-f3-a", "espeak-m6-a", "festival-f126"})
"""User voices never used in `train` or `validation`: the `validation_voices` speakers."""
ENGINES = ("espeak", "festival")


# ------------------------------------------------------------------------------------------------
# Planning: every decision about pair `index`, from (seed, index) alone.


@dataclasses.dataclass(frozen=True)
class PairPlan:
  """Everything needed to render one synthetic pair, deterministically."""

  key: str
  index: int
  split: str
  text: TextPair
  question_voice: Voice  # base voice name, jittered settings
  question_gain_db: float
  augment: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]  # (kind, params) to apply
  speaker: str
  emotion: str
  answer_voice: Voice  # the speaker's voice with the emotion's prosody
  render_seed: int

  def to_json(self) -> dict[str, Any]:
    """A JSON-able dict (for fingerprints and sidecars)."""
    return dataclasses.asdict(self)


def _draw_text(text_set: TextSet, rng: np.random.Generator) -> tuple[TextPair, str, float]:
  text = text_set.sample(rng)
  return text, text_set.split_of(text.template_id), float(rng.random())


def plan_pair(
    text_set: TextSet,
    seed: int,
    index: int,
    *,
    validation_voices_fraction: float = 0.05,
    augment_prob: float = 0.5,
    speakers: Sequence[str] = (),
    emotions: Sequence[str] = (),
) -> PairPlan:
  """Plans synthetic pair `index` of the run with `seed`.

  The text, split, voices, emotion and augmentation depend only on `(seed, index)` (and the
  text-set version), so pair `index` is the same whatever `--pairs`, shard size or worker count.
  A pair of a training template becomes `validation_voices` with probability
  `validation_voices_fraction`: it then takes the text of an earlier `train` pair (so its text is
  in training) and a held-out user voice.

  Args:
    text_set: the texts.
    seed: the run's seed.
    index: the pair's index in the run.
    validation_voices_fraction: share of training-template pairs moved to `validation_voices`.
    augment_prob: probability that the question is augmented (noise, reverb, band-limiting).
    speakers: the assistant speakers to draw from (default all of `records.SPEAKER_IDS`).
    emotions: the emotions to draw from, among those that fit the answer (default all that fit;
      when none of them fits, the first of `emotions`).

  Returns:
    The plan.
  """
  rng = np.random.default_rng([seed, index])
  text, split, coin = _draw_text(text_set, rng)
  if split == "train" and coin < validation_voices_fraction:
    for _ in range(16):
      if index == 0:
        break
      donor = int(rng.integers(index))
      donor_text, donor_split, donor_coin = _draw_text(text_set,
                                                       np.random.default_rng([seed, donor]))
      if donor_split == "train" and donor_coin >= validation_voices_fraction:
        text, split = donor_text, "validation_voices"
        break
  held_out = split == "validation_voices"
  engine = ENGINES[int(rng.random() < 0.5)]
  pool = [v for v in USER_VOICES
          if v.engine == engine and (v.name in HELD_OUT_USER_VOICES) == held_out]
  if not pool:  # No held-out voice of this engine: the other engine's.
    pool = [v for v in USER_VOICES if (v.name in HELD_OUT_USER_VOICES) == held_out]
  base = pool[int(rng.integers(len(pool)))]
  question_voice = base.scaled(rate=float(rng.uniform(0.93, 1.07)),
                               pitch=float(rng.uniform(0.94, 1.06)),
                               pitch_range=float(rng.uniform(0.85, 1.15)))
  question_gain_db = round(float(rng.uniform(-6.0, 3.0)), 2)
  speakers = list(speakers) or sorted(records.SPEAKER_IDS, key=records.SPEAKER_IDS.get)
  speaker = speakers[int(rng.integers(len(speakers)))]
  fitting = text_set.emotions_for(text_set.by_id[text.template_id])
  allowed = [e for e in fitting if not emotions or e in emotions] or [emotions[0]]
  emotion = allowed[int(rng.integers(len(allowed)))]
  prosody = EMOTION_PROSODY[emotion]
  answer_voice = ASSISTANT_VOICES[speaker].scaled(rate=prosody.rate, pitch=prosody.pitch,
                                                  pitch_range=prosody.pitch_range)
  # Augmentation parameters are always drawn, so the flags never shift later draws.
  apply = rng.random() < augment_prob
  kinds = rng.random(3) < 0.5
  kinds[int(rng.integers(3))] = True
  options = {
      "noise": (("color", ("white", "pink")[int(rng.integers(2))]),
                ("snr_db", round(float(rng.uniform(10.0, 30.0)), 2))),
      "reverb": (("rt60_s", round(float(rng.uniform(0.2, 0.8)), 3)),
                 ("wet", round(float(rng.uniform(0.2, 0.5)), 3))),
      "band": (("low_hz", 300.0), ("high_hz", 3400.0)) if rng.random() < 0.5 else (
          ("low_hz", 0.0), ("high_hz", round(float(rng.uniform(3500.0, 7000.0)), 1))),
  }
  augment = tuple((name, options[name]) for name, on in zip(("reverb", "band", "noise"), kinds)
                  if apply and on)
  return PairPlan(
      key=f"s{seed}-{index:07d}", index=index, split=split, text=text,
      question_voice=question_voice, question_gain_db=question_gain_db, augment=augment,
      speaker=speaker, emotion=emotion, answer_voice=answer_voice,
      render_seed=int(rng.integers(2**31)))


# ------------------------------------------------------------------------------------------------
# Synthesis.

REFERENCE_DBFS = -20.0
"""RMS level of a rendered utterance before gains (questions: +-, answers: the emotion's)."""
_PEAK_LIMIT = 0.98


class SynthesisError(RuntimeError):
  """An engine failed on an utterance (the message has the engine's stderr)."""


def check_engines() -> None:
  """Raises `SynthesisError` with an install hint if espeak-ng or Festival's Telugu is missing."""
  probe = [("నమస్కారం", USER_VOICES[0]), ("నమస్కారం", ASSISTANT_VOICES["male_young"])]
  missing = [name for name in ("espeak-ng", "festival") if shutil.which(name) is None]
  if missing:
    raise SynthesisError(f"{', '.join(missing)} not found: install them, e.g. `apt-get install "
                         "espeak-ng festival festvox-te-nsk`")
  for result in synthesize(probe):
    if isinstance(result, Exception):
      raise SynthesisError(f"{result} (Telugu Festival voice: apt-get install festvox-te-nsk)")


def _espeak(text: str, voice: Voice, path: str) -> None:
  ssml = (f'<speak><prosody range="{round(voice.pitch_range)}%">{saxutils.escape(text)}'
          "</prosody></speak>")
  command = [
      "espeak-ng", "-m", "-v", f"te+{voice.variant}", "-p", str(int(np.clip(voice.pitch, 0, 99))),
      "-s", str(int(np.clip(round(voice.speed), 80, 450))), "-w", path, ssml,
  ]  # fmt: skip
  result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
  if result.returncode != 0 or not os.path.isfile(path):
    raise SynthesisError(f"espeak-ng failed ({result.returncode}) on {text!r}: {result.stderr}")


FESTIVAL_MIN_F0 = 90.0
"""Festival's Telugu diphone voice aborts (heap corruption) on f0 means below about 88 Hz: lower
ones are raised to this."""


def _festival_script(items: Sequence[tuple[str, Voice, str]]) -> str:
  lines = ["(voice_telugu_NSK_diphone)", "(Parameter.set 'Int_Method 'Simple)"]
  for text, voice, path in items:
    quoted = text.replace("\\", "\\\\").replace('"', '\\"')
    f0_mean = max(voice.pitch, FESTIVAL_MIN_F0)
    lines += [
        f"(set! int_simple_params '((f0_mean {f0_mean:.2f}) (f0_std {voice.pitch_range:.2f})))",
        f"(Parameter.set 'Duration_Stretch {1.0 / voice.speed:.4f})",
        f'(set! utt (Utterance Text "{quoted}"))',
        "(utt.synth utt)",
        f'(utt.save.wave utt "{path}" \'riff)',
    ]
  return "\n".join(lines) + "\n"


def _run_festival(items: Sequence[tuple[str, Voice, str]], workdir: str, name: str) -> str:
  """Runs one Festival process over `items`; returns its stderr (empty on success)."""
  script = os.path.join(workdir, f"{name}.scm")
  with open(script, "w", encoding="utf-8") as f:
    f.write(_festival_script(items))
  result = subprocess.run(["festival", "-b", script], capture_output=True, text=True,
                          check=False, timeout=120 + 20 * len(items))
  return "" if result.returncode == 0 else (result.stderr or result.stdout).strip()


def synthesize(requests: Sequence[tuple[str, Voice]], workdir: str | None = None
               ) -> list[np.ndarray | SynthesisError]:
  """Speaks Telugu texts; all Festival requests go through one Festival process.

  Args:
    requests: `(text, voice)` pairs.
    workdir: a scratch folder (default: a temporary one).

  Returns:
    Per request, float32 mono audio at 16 kHz, or the `SynthesisError` that request raised
    (a failing Festival utterance is retried alone, so it does not take its batch down).
  """
  if workdir is None:
    with tempfile.TemporaryDirectory(prefix="tj-synth-") as tmp:
      return synthesize(requests, tmp)
  results: list[np.ndarray | SynthesisError | None] = [None] * len(requests)
  festival = []
  for i, (text, voice) in enumerate(requests):
    path = os.path.join(workdir, f"u{i:05d}.wav")
    if voice.engine == "espeak":
      try:
        _espeak(text, voice, path)
        results[i] = audio.load_audio(path)
      except (SynthesisError, audio.AudioDecodeError, subprocess.TimeoutExpired) as e:
        results[i] = SynthesisError(str(e))
    elif voice.engine == "festival":
      festival.append((i, (text, voice, path)))
    else:
      results[i] = SynthesisError(f"unknown engine {voice.engine!r}")
  if festival:
    _run_festival([item for _, item in festival], workdir, "batch")
    for i, item in festival:
      error = "" if os.path.isfile(item[2]) else _run_festival([item], workdir, f"u{i:05d}")
      try:
        results[i] = audio.load_audio(item[2])
      except audio.AudioDecodeError as e:
        results[i] = SynthesisError(f"festival failed on {item[0]!r}: {error or e}")
  return results


def trim_silence(wave: np.ndarray, *, floor_db: float = -40.0, margin_s: float = 0.05
                 ) -> np.ndarray:
  """Cuts leading and trailing parts quieter than `floor_db` below the loudest 10 ms frame."""
  frame = audio.SAMPLE_RATE // 100
  n = len(wave) // frame
  if n == 0:
    return wave
  energy = np.sqrt(np.mean(np.square(wave[: n * frame].reshape(n, frame)), axis=1) + 1e-12)
  loud = np.flatnonzero(20 * np.log10(energy / energy.max()) > floor_db)
  margin = int(margin_s * audio.SAMPLE_RATE)
  start = max(0, loud[0] * frame - margin)
  end = min(len(wave), (loud[-1] + 1) * frame + margin)
  return wave[start:end]


def set_level(wave: np.ndarray, rms_dbfs: float) -> np.ndarray:
  """Scales to an RMS of `rms_dbfs`, then lowers the whole wave if its peak would clip."""
  level = rms(wave)
  if level > 0:
    wave = wave * (10 ** (rms_dbfs / 20) / level)
  peak = float(np.max(np.abs(wave))) if wave.size else 0.0
  return (wave * (_PEAK_LIMIT / peak) if peak > _PEAK_LIMIT else wave).astype(np.float32)


def rms(wave: np.ndarray) -> float:
  """The root mean square of `wave`, in float64."""
  return float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))


def add_noise(wave: np.ndarray, snr_db: float, color: str, rng: np.random.Generator
              ) -> np.ndarray:
  """Adds white or pink (1/f) noise at `snr_db` below the wave's RMS."""
  noise = colored_noise(len(wave), color, rng)
  noise *= rms(wave) / (rms(noise) + 1e-12) / 10 ** (snr_db / 20)
  return (wave + noise).astype(np.float32)


def colored_noise(length: int, color: str, rng: np.random.Generator) -> np.ndarray:
  """White or pink (1/f power) Gaussian noise of `length` samples, float64, unscaled."""
  noise = rng.standard_normal(length)
  if color == "pink":
    spectrum = np.fft.rfft(noise)
    spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1.0))
    noise = np.fft.irfft(spectrum, length)
  return noise


def add_reverb(wave: np.ndarray, rt60_s: float, wet: float, rng: np.random.Generator
               ) -> np.ndarray:
  """Mixes in the wave convolved with a synthetic room: noise decaying 60 dB in `rt60_s`."""
  t = np.arange(int(rt60_s * audio.SAMPLE_RATE)) / audio.SAMPLE_RATE
  response = rng.standard_normal(len(t)) * np.exp(-math.log(1000.0) * t / rt60_s)
  response[0] = 1.0  # the direct path
  reverberant = scipy.signal.fftconvolve(wave, response)[: len(wave)]
  reverberant *= rms(wave) / (rms(reverberant) + 1e-12)
  return ((1.0 - wet) * wave + wet * reverberant).astype(np.float32)


def band_limit(wave: np.ndarray, low_hz: float, high_hz: float) -> np.ndarray:
  """A 4th-order Butterworth band-pass (`low_hz` > 0) or low-pass, as a phone line or cheap mic."""
  nyquist = audio.SAMPLE_RATE / 2
  if low_hz > 0:
    sos = scipy.signal.butter(4, [low_hz / nyquist, high_hz / nyquist], "bandpass", output="sos")
  else:
    sos = scipy.signal.butter(4, high_hz / nyquist, "lowpass", output="sos")
  return scipy.signal.sosfilt(sos, wave).astype(np.float32)


def augment_labels(augment: Sequence[tuple[str, Any]]) -> list[str]:
  """Readable names of a plan's augmentations (`(name, params)` pairs, here and in
  `tools/make_speech_corpus.py`), e.g. `["reverb:0.41s", "noise:pink:18dB"]`."""
  labels = []
  for name, params in augment:
    p = dict(params)
    if name == "noise":
      labels.append(f"noise:{p['color']}:{p['snr_db']:.0f}dB")
    elif name == "reverb":
      labels.append(f"reverb:{p['rt60_s']:.2f}s")
    elif name == "band":
      labels.append(f"band:{p['low_hz']:.0f}-{p['high_hz']:.0f}Hz")
    elif p["kind"] == "peak":  # "eq"
      labels.append(f"eq:peak:{p['center_hz']:.0f}Hz:{p['gain_db']:+.0f}dB")
    else:
      labels.append(f"eq:band:{p['low_hz']:.0f}-{p['high_hz']:.0f}Hz")
  return labels


def _augment(wave: np.ndarray, plan: PairPlan) -> np.ndarray:
  rng = np.random.default_rng(plan.render_seed)
  for name, params in plan.augment:
    p = dict(params)
    if name == "reverb":
      wave = add_reverb(wave, p["rt60_s"], p["wet"], rng)
    elif name == "band":
      wave = band_limit(wave, p["low_hz"], p["high_hz"])
    else:
      wave = add_noise(wave, p["snr_db"], p["color"], rng)
  return wave


def render_pairs(plans: Sequence[PairPlan], workdir: str | None = None
                 ) -> list[tuple[np.ndarray, np.ndarray] | SynthesisError]:
  """Synthesises planned pairs (one Festival process for the whole batch).

  Args:
    plans: the pairs.
    workdir: a scratch folder (default: a temporary one).

  Returns:
    Per plan, `(question_pcm, answer_pcm)` int16 at 16 kHz, or the error that stopped it.
  """
  requests = []
  for plan in plans:
    requests += [(plan.text.question, plan.question_voice), (plan.text.answer, plan.answer_voice)]
  waves = synthesize(requests, workdir)
  out = []
  for plan, question, answer in zip(plans, waves[0::2], waves[1::2]):
    failed = [w for w in (question, answer) if isinstance(w, SynthesisError)]
    if failed:
      out.append(failed[0])
      continue
    question = set_level(trim_silence(question), REFERENCE_DBFS + plan.question_gain_db)
    question = set_level(_augment(question, plan), REFERENCE_DBFS + plan.question_gain_db)
    prosody = EMOTION_PROSODY[plan.emotion]
    answer = set_level(trim_silence(answer), REFERENCE_DBFS + prosody.gain_db)
    answer = np.concatenate([np.zeros(int(prosody.pause_s * audio.SAMPLE_RATE), np.float32),
                             answer])
    out.append((audio.float_to_pcm16(question), audio.float_to_pcm16(answer)))
  return out
