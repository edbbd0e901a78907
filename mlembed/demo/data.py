"""Demo training data from real text that ships inside packages (no downloads).

- Django's translated UI strings (``django/**/locale/<lang>/LC_MESSAGES/django*.po``): English -> translation
  pairs for about 98 locales, placeholders and HTML stripped.
- chatterbot-corpus dialogues (``chatterbot_corpus/data/<language>/*.yml``): message -> reply pairs in 28
  languages.

Stage 1: translation pairs without instructions (task ``bitext``), one source per writing script.
Stage 2: the translation pairs with an instruction, dialogue pairs (task ``retrieval``) and language
identification (task ``classification``: a text -> its language's name).

About 20% of the English strings (seeded, across ALL locales) and 20% of the dialogue messages are held out:
they go to ``eval/*.jsonl`` and to the validation shards, and no held-out text appears anywhere in the
training shards (queries, positives or negatives).
"""

from __future__ import annotations

import bisect
import glob
import html
import importlib
import importlib.util
import json
import random
import re
import shutil
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mlembed.data.records import Record
from mlembed.data.shards import write_records
from mlembed.text import text_hash

MARKER = "demo.json"
"""Written last into the output directory; its presence (with matching settings) marks a complete build."""
TRANSLATE_INSTRUCTION = "Retrieve the translation of the given English text"
DIALOGUE_INSTRUCTION = "Given a message, retrieve a fitting reply"
LANGID_INSTRUCTION = "Identify the language of the given text"

_PLACEHOLDERS = [
    re.compile(r"%\([^)]*\)[-#0 +]*\d*(?:\.\d+)?[a-zA-Z]"),  # %(name)s, %(count)d
    re.compile(r"%[-#0 +]*\d*(?:\.\d+)?[sdifrxXeEgGcou%]"),  # %s, %d, %%
    re.compile(r"\{[^{}]*\}"),  # {0}, {name}
    re.compile(r"<[^>]+>"),  # HTML tags
    re.compile(r"[\"“”«»„‘’']\s*[\"“”«»„‘’']|\(\s*\)"),  # quotes or brackets left empty by the above
]
_SCRIPTS = {"LATIN": "latin", "CYRILLIC": "cyrillic", "ARABIC": "arabic", "HEBREW": "arabic", "GREEK": "greek",
            "CJK": "cjk", "HIRAGANA": "cjk", "KATAKANA": "cjk", "HANGUL": "cjk"}


@dataclass
class DemoSettings:
    """What ``build_demo`` makes; a build is reused only when these match."""

    seed: int = 0
    """Seed of the held-out split and negative mining."""
    holdout: float = 0.2
    """Fraction of English strings (and dialogue messages) held out for validation and evaluation."""
    negatives: int = 9
    """Hard negatives mined per sample (the loader samples its per-task number from them)."""
    stage2_translations: int = 60
    """Translation pairs per locale in stage 2 (stage 1 gets them all)."""
    shard_size: int = 2000
    """Samples per shard."""
    val_per_source: int = 128
    """Held-out samples per source written as validation shards."""
    langid_per_locale: int = 20
    """Language-identification samples per locale (stage 2)."""
    locales: list[str] | None = None
    """Django locales to use (default: all); tests use a few to stay fast."""
    languages: list[str] | None = None
    """chatterbot-corpus languages to use (default: all)."""


@dataclass
class DemoBuild:
    """Where a demo build lives and what it holds."""

    root: str
    """The output directory."""
    settings: DemoSettings = field(default_factory=DemoSettings)
    """Settings it was built with."""
    counts: dict[str, int] = field(default_factory=dict)
    """Samples per split (``stage1/train``, ``eval/bitext``...)."""

    def path(self, name: str) -> str:
        """``root/name`` as a string (``stage1/train``, ``eval/bitext.jsonl``)."""
        return str(Path(self.root) / name)

    def summary(self) -> str:
        """One line per split."""
        return "\n".join([f"demo data in {self.root}"] + [f"  {k}: {v}" for k, v in sorted(self.counts.items())])


def _require(module: str):
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"the demo data needs the package providing {module!r}: pip install mlembed[demo]")
    return importlib.import_module(module)


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the demo data needs {name!r}: pip install mlembed[demo]")
    return Path(spec.submodule_search_locations[0])


def clean(text: str) -> str:
    """A UI string without placeholders, HTML tags, entities or repeated whitespace."""
    text = html.unescape(text)
    for pattern in _PLACEHOLDERS:
        text = pattern.sub(" ", text)
    return " ".join(text.split()).strip(" :,;")


def usable(text: str) -> bool:
    """Whether a cleaned string has at least two letters (not only digits, punctuation or symbols)."""
    return sum(ch.isalpha() for ch in text) >= 2


def script_of(texts: list[str]) -> str:
    """The majority writing script of ``texts`` (``latin``, ``cyrillic``, ``cjk``... or ``other``)."""
    counts: Counter = Counter()
    for text in texts[:200]:
        for ch in text:
            if ch.isalpha():
                counts[_SCRIPTS.get(unicodedata.name(ch, "X").split()[0], "other")] += 1
    return counts.most_common(1)[0][0] if counts else "other"


def django_pairs(locales: list[str] | None = None) -> dict[str, list[tuple[str, str]]]:
    """Locale -> unique (English, translation) pairs from Django's message catalogs (``locales``: a subset)."""
    polib = _require("polib")
    root = _package_dir("django")
    pairs: dict[str, dict[str, str]] = {}
    for path in sorted(glob.glob(str(root / "**/locale/*/LC_MESSAGES/django*.po"), recursive=True)):
        locale = Path(path).parts[-3]
        if locale.startswith("en") or (locales is not None and locale not in locales):
            continue  # English variants translate English into itself
        seen = pairs.setdefault(locale, {})
        for entry in polib.pofile(path):
            if entry.fuzzy or entry.obsolete or entry.msgid_plural or not entry.msgstr:
                continue
            src, tgt = clean(entry.msgid), clean(entry.msgstr)
            if usable(src) and usable(tgt) and src.lower() != tgt.lower():
                seen.setdefault(src, tgt)
    return {loc: sorted(p.items()) for loc, p in sorted(pairs.items()) if p}


def chatterbot_pairs(languages: list[str] | None = None) -> dict[str, list[tuple[str, str]]]:
    """Language -> unique (message, reply) pairs from the chatterbot corpus (``languages``: a subset)."""
    yaml = _require("yaml")
    root = _package_dir("chatterbot_corpus") / "data"
    pairs: dict[str, dict[tuple[str, str], None]] = {}
    for path in sorted(root.glob("*/*.yml")):
        if languages is not None and path.parent.name not in languages:
            continue
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C parser, when built, is much faster
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader) or {}
        seen = pairs.setdefault(path.parent.name, {})
        for conversation in data.get("conversations") or []:
            turns = [" ".join(str(t).split()) for t in conversation if t is not None]
            for query, reply in zip(turns, turns[1:]):
                if query and reply and query != reply:
                    seen[(query, reply)] = None
    return {lang: list(p) for lang, p in sorted(pairs.items()) if p}


def _held_out(text: str, settings: DemoSettings) -> bool:
    return text_hash(f"{settings.seed}:{text}") % 10_000 < settings.holdout * 10_000


def mine_negatives(positive: str, pool: list[str], k: int, rng: random.Random) -> list[str]:
    """``k`` texts of ``pool`` (sorted by length) close in length to ``positive``, never equal to it.

    Texts of similar length are harder to tell apart than random ones and cost nothing to find: take a
    window of ``4 * k`` neighbours around the positive's length and sample ``k`` of them.
    """
    at = bisect.bisect_left(pool, len(positive), key=len)
    window = pool[max(0, at - 2 * k) : at + 2 * k]
    candidates = [t for t in window if t != positive]
    return rng.sample(candidates, min(k, len(candidates)))


#: The language tag of each chatterbot-corpus folder (hinglish: Hindi written in Latin letters, mixed with English).
CHATTERBOT_LANGUAGES = {
    "bengali": "bn", "chinese": "zh-Hans", "dutch": "nl", "english": "en", "french": "fr", "german": "de",
    "hebrew": "he", "hindi": "hi", "hinglish": "hi-Latn", "indonesian": "id", "italian": "it", "japanese": "ja",
    "korean": "ko", "marathi": "mr", "oriya": "or", "persian": "fa", "portuguese": "pt", "russian": "ru",
    "spanish": "es", "swedish": "sv", "tamil": "ta", "telugu": "te", "thai": "th", "traditionalchinese": "zh-Hant",
    "turkish": "tr", "ukrainian": "uk", "urdu": "ur", "yoruba": "yo",
}


def locale_tag(locale: str) -> str:
    """A Django locale folder name as a language tag: ``pt_BR`` -> ``pt-BR``."""
    return locale.replace("_", "-")


def _language_names() -> dict[str, str]:
    try:
        from django.conf.locale import LANG_INFO
    except ImportError:  # pragma: no cover - django is present whenever the pairs are
        return {}
    return {code: info["name"] for code, info in LANG_INFO.items() if "name" in info}


class _Builder:
    """Collects the records of every split, then writes them."""

    def __init__(self, settings: DemoSettings):
        self.settings = settings
        self.rng = random.Random(settings.seed)
        self.splits: dict[str, list[Record]] = {"stage1/train": [], "stage1/val": [], "stage2/train": [],
                                                "stage2/val": []}
        self.eval: dict[str, list[dict]] = {"bitext": [], "dialogue": []}
        self.held: set[str] = set()

    def pairs(self, name: str, key: str, pairs: list[tuple[str, str]], task: str,
              instruction: str | None, split: str, held: bool, limit: int | None = None,
              languages: list[str] | None = None) -> None:
        """Add (query, positive) pairs as records of ``split`` with negatives mined among the positives."""
        pool = sorted({p for _, p in pairs}, key=lambda t: (len(t), t))
        if limit is not None and limit < len(pairs):
            pairs = self.rng.sample(pairs, limit)  # a random subset, not the alphabetically first strings
        for i, (query, positive) in enumerate(pairs):
            negatives = mine_negatives(positive, pool, self.settings.negatives, self.rng)
            rid = f"{name}:{key}:{i}" + (":val" if held else "")
            self.splits[split].append(Record(rid, query, positive, name, task, negatives, instruction,
                                             list(languages or [])))

    def translations(self, by_locale: dict[str, list[tuple[str, str]]]) -> None:
        groups = {loc: script_of([t for _, t in pairs]) for loc, pairs in by_locale.items()}
        train, held = {}, {}
        for loc, pairs in by_locale.items():
            held[loc] = [p for p in pairs if _held_out(p[0], self.settings)]
            train[loc] = [p for p in pairs if not _held_out(p[0], self.settings)]
            self.held.update(t for p in held[loc] for t in p)
            self.eval["bitext"] += [{"id": f"{loc}:{i}", "lang": loc, "src": s, "tgt": t}
                                    for i, (s, t) in enumerate(held[loc])]
        for loc in by_locale:
            train[loc] = [p for p in train[loc] if not self.held.intersection(p)]
        self._per_group(train, held, groups, "translate", "bitext", TRANSLATE_INSTRUCTION,
                        {loc: ["en", locale_tag(loc)] for loc in by_locale})
        self._langid(train, held, groups)

    def _per_group(self, train, held, groups, prefix: str, task: str, instruction: str,
                   languages: dict[str, list[str]]) -> None:
        val_left: Counter = Counter()
        for key in train:
            group = groups[key]
            tags = languages.get(key)
            stage1 = task == "bitext"  # translation pairs feed both stages; dialogues only stage 2
            if stage1:
                self.pairs(f"{prefix}-{group}", key, train[key], task, None, "stage1/train", False, languages=tags)
            limit = self.settings.stage2_translations if stage1 else None
            self.pairs(f"{prefix}-instr-{group}" if stage1 else f"{prefix}-{group}", key, train[key], task,
                       instruction, "stage2/train", False, limit, tags)
            take = max(0, self.settings.val_per_source - val_left[group])
            take = min(take, max(1, self.settings.val_per_source // 8))  # spread validation over the locales
            val_left[group] += min(take, len(held[key]))
            if stage1:
                self.pairs(f"{prefix}-{group}", key, held[key], task, None, "stage1/val", True, take, tags)
            self.pairs(f"{prefix}-instr-{group}" if stage1 else f"{prefix}-{group}", key, held[key], task,
                       instruction, "stage2/val", True, take, tags)

    def _langid(self, train, held, groups) -> None:
        names = _language_names()
        # "written in German", not "German": bare language names are Django UI strings that may be held out.
        labels = {loc: f"written in {names.get(loc.replace('_', '-').lower(), loc)}" for loc in train}
        for loc, pairs in train.items():
            near = sorted({labels[o] for o in train if groups[o] == groups[loc]} - {labels[loc]})
            far = sorted(set(labels.values()) - {labels[loc]} - set(near))
            for i, (_, text) in enumerate(pairs[: self.settings.langid_per_locale]):
                # Languages of the same script are the hard negatives; others fill up when a script has few.
                negatives = self.rng.sample(near, min(len(near), 3))
                negatives += self.rng.sample(far, min(len(far), 3 - len(negatives)))
                self.splits["stage2/train"].append(
                    Record(f"langid:{loc}:{i}", text, labels[loc], "langid", "classification", negatives,
                           LANGID_INSTRUCTION, [locale_tag(loc), "en"]))

    def dialogues(self, by_lang: dict[str, list[tuple[str, str]]]) -> None:
        groups = {lang: script_of([r for _, r in pairs]) for lang, pairs in by_lang.items()}
        train, held = {}, {}
        for lang, pairs in by_lang.items():
            held[lang] = [p for p in pairs if _held_out(p[0], self.settings)]
            self.held.update(t for p in held[lang] for t in p)
            self.eval["dialogue"] += [{"id": f"{lang}:{i}", "lang": lang, "query": q, "positive": r}
                                      for i, (q, r) in enumerate(held[lang])]
        for lang, pairs in by_lang.items():
            train[lang] = [p for p in pairs if not _held_out(p[0], self.settings) and not self.held.intersection(p)]
        self._per_group(train, held, groups, "dialogue", "retrieval", DIALOGUE_INSTRUCTION,
                        {lang: [CHATTERBOT_LANGUAGES[lang]] for lang in by_lang if lang in CHATTERBOT_LANGUAGES})

    def scrub(self) -> None:
        """Drop every held-out text from the training splits (also where another locale reused it)."""
        for split in ("stage1/train", "stage2/train"):
            kept = []
            for record in self.splits[split]:
                if record.query in self.held or record.positive in self.held:
                    continue
                record.negatives = [n for n in record.negatives if n not in self.held]
                kept.append(record)
            self.splits[split] = kept


def build_demo(outdir: str | Path, settings: DemoSettings | None = None, overwrite: bool = False) -> DemoBuild:
    """Build (or reuse) the demo shards and evaluation files in ``outdir``.

    Layout: ``stage1/{train,val}`` and ``stage2/{train,val}`` (shard directories with manifest.json),
    ``eval/bitext.jsonl`` (``{"id", "lang", "src", "tgt"}``), ``eval/dialogue.jsonl``
    (``{"id", "lang", "query", "positive"}``) and the marker ``demo.json``.

    Args:
        outdir: Output directory.
        settings: Build settings (defaults: seed 0, 20% held out).
        overwrite: Rebuild even when a complete build with the same settings exists.
    """
    settings = settings or DemoSettings()
    root = Path(outdir)
    marker = root / MARKER
    if marker.exists() and not overwrite:
        done = json.loads(marker.read_text(encoding="utf-8"))
        if done.get("settings") == asdict(settings):
            return DemoBuild(str(root), settings, done["counts"])
    builder = _Builder(settings)
    builder.translations(django_pairs(settings.locales))
    builder.dialogues(chatterbot_pairs(settings.languages))
    builder.scrub()
    for name in ("stage1", "stage2", "eval", MARKER):  # an unfinished or outdated build of ours
        target = root / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    counts = {}
    for split, records in builder.splits.items():
        builder.rng.shuffle(records)  # spread each source's locales over its shards
        write_records(records, root / split, shard_size=settings.shard_size)
        counts[split] = len(records)
    (root / "eval").mkdir(parents=True, exist_ok=True)
    for name, rows in builder.eval.items():
        with (root / "eval" / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        counts[f"eval/{name}"] = len(rows)
    marker.write_text(json.dumps({"settings": asdict(settings), "counts": counts}, indent=1), encoding="utf-8")
    return DemoBuild(str(root), settings, counts)
