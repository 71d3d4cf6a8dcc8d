"""Multi-label prompts: tag filter, word and template draws, caption padding, tokens; the taggers."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch

from groupvit.errors import ConfigError
from groupvit.text import nouns
from groupvit.text.multilabel import CaptionTokens, build_prompts, prompt_words, word_id
from groupvit.text.nouns import SimpleTagger, get_tagger
from groupvit.text.templates import get_templates
from groupvit.text.tokenizer import tokenize

FULL = get_templates("full")  # FULL[0] = "a bad photo of a {}.", FULL[39] = "a photo of a {}."


class FakeTagger:
    name = "fake"

    def __init__(self, tags: dict[str, str]) -> None:
        self.tags = tags

    def __call__(self, text: str) -> list[tuple[str, str]]:
        return [(word, self.tags.get(word, "DT")) for word in text.rstrip(".").split()]


class ScriptedRNG:
    """Hands out word indices and template indices from fixed lists, recording the calls."""

    def __init__(self, words: list[int], templates: list[int]) -> None:
        self.words, self.templates = words, list(templates)
        self.calls: list[tuple] = []

    def choice(self, a: int, size: int, replace: bool) -> list[int]:
        self.calls.append(("choice", a, size, replace))
        return self.words[:size]

    def integers(self, high: int) -> int:
        self.calls.append(("integers", high))
        return self.templates.pop(0)


DOG_TAGS = {"dog": "NN", "chases": "VBZ", "two": "CD", "cats": "NNS"}


def test_exact_prompts_from_scripted_draws():
    tokens = CaptionTokens(2, FakeTagger(DOG_TAGS))
    rng = ScriptedRNG(words=[2, 0], templates=[39, 0])
    texts = tokens.texts("a dog chases two cats", rng)
    assert texts == ["a dog chases two cats", "a photo of a cats.", "a bad photo of a dog."]
    # words are [dog, chases, cats]: 2 of 3 drawn without replacement, then one template per word
    assert rng.calls == [("choice", 3, 2, False), ("integers", 80), ("integers", 80)]


def test_pads_with_the_caption_when_fewer_words_than_prompts():
    tokens = CaptionTokens(3, FakeTagger({"dog": "NN"}))
    rng = ScriptedRNG(words=[0], templates=[39])
    assert tokens.texts("the dog", rng) == ["the dog", "a photo of a dog.", "the dog", "the dog"]
    assert rng.calls == [("choice", 1, 1, False), ("integers", 80)]
    rng = ScriptedRNG(words=[], templates=[])
    assert tokens.texts("of the", rng) == ["of the"] * 4 and rng.calls == []


def test_stopwords_are_never_prompts():
    tokens = CaptionTokens(2, FakeTagger(DOG_TAGS), stopwords=["Chases"])
    assert tokens.words("a dog chases two cats") == ["dog", "cats"]
    rng = ScriptedRNG(words=[1, 0], templates=[39, 0])
    texts = tokens.texts("a dog chases two cats", rng)
    # words are [dog, cats]: the stop-word is gone before the draw
    assert texts == ["a dog chases two cats", "a photo of a cats.", "a bad photo of a dog."]
    assert rng.calls == [("choice", 2, 2, False), ("integers", 80), ("integers", 80)]
    ids = tokens.with_words("a dog chases two cats", ScriptedRNG(words=[1, 0], templates=[39, 0]))[1]
    assert ids.tolist() == [word_id("cats"), word_id("dog")]


def test_tag_filter_keeps_nouns_and_verbs_with_repeats():
    tagged = [
        ("Dogs", "NNS"), ("New", "NNP"), ("Yorkers", "NNPS"), ("running", "VBG"), ("ran", "VBD"),
        ("run", "VB"), ("runs", "VBZ"), ("are", "VBP"), ("seen", "VBN"), ("dog", "NN"), ("dog", "NN"),
        ("red", "JJ"), ("the", "DT"), ("quickly", "RB"), ("two", "CD"), ("it", "PRP"),
    ]
    assert prompt_words(tagged) == ["Dogs", "New", "running", "ran", "run", "runs", "are", "seen", "dog", "dog"]


def test_phrases_join_a_noun_with_the_adjectives_before_it():
    tagged = [("a", "DT"), ("big", "JJ"), ("green", "JJ"), ("star", "NN"), ("and", "CC"), ("red", "JJ"),
              ("is", "VBZ"), ("cloudy", "JJ"), ("sky", "NN"), ("lower", "JJR"), ("corner", "NN")]
    assert prompt_words(tagged) == ["star", "is", "sky", "corner"]
    # Only JJ directly before a noun joins it (JJR does not; a verb takes none).
    assert prompt_words(tagged, phrases=True) == ["big green star", "is", "cloudy sky", "corner"]
    tags = {"red": "JJ", "star": "NN", "corner": "NN", "left": "JJ"}
    tokens = CaptionTokens(2, FakeTagger(tags), stopwords=["corner"], phrases=True)
    assert tokens.words("a red star left corner") == ["red star"]  # a phrase of a stop-word noun is dropped
    texts, ids = tokens.with_words("a red star left corner", ScriptedRNG(words=[0], templates=[39]))
    assert ids.tolist() == [word_id("red star"), -1]
    assert torch.equal(texts[1], tokenize(["a photo of a red star."])[0])


def test_numpy_generator_draws_distinct_words():
    for seed in range(20):
        prompts = build_prompts("c", ["cat", "dog", "car"], 3, ["{}"], np.random.default_rng(seed))
        assert prompts[0] == "c" and sorted(prompts[1:]) == ["car", "cat", "dog"]
    # Repeated words are separate entries: both copies can be drawn.
    assert build_prompts("c", ["dog", "dog"], 2, ["{}"], np.random.default_rng(0)) == ["c", "dog", "dog"]


def test_tokens_shape_and_rows():
    tokens = CaptionTokens(2, FakeTagger(DOG_TAGS))
    ids = tokens("a dog chases two cats", ScriptedRNG(words=[0, 1], templates=[39, 39]))
    assert ids.shape == (3, 77) and ids.dtype == torch.long
    assert torch.equal(ids, tokenize(["a dog chases two cats", "a photo of a dog.", "a photo of a chases."]))
    short = CaptionTokens(2, FakeTagger(DOG_TAGS), context_length=16)
    assert short("a dog", np.random.default_rng(0)).shape == (3, 16)


def test_zero_prompts_gives_the_caption_only():
    tokens = CaptionTokens(0, tagger="nonexistent-is-not-resolved")
    assert tokens.tagger is None
    assert torch.equal(tokens("a dog"), tokenize(["a dog"]))
    with pytest.raises(ConfigError):
        CaptionTokens(-1)


def test_simple_tagger_on_a_caption():
    tagger = SimpleTagger()
    words = prompt_words(tagger("A man riding a horse on the beach next to a dog."))
    assert words == ["man", "riding", "horse", "beach", "dog"]
    tags = dict(tagger("Two cats sleeping quickly on 3 red chairs, painted"))
    assert tags == {
        "Two": "CD", "cats": "NNS", "sleeping": "VBG", "quickly": "RB", "on": "IN", "3": "CD",
        "red": "JJ", "chairs": "NNS", ",": ".", "painted": "VBD",
    }


def test_get_tagger_names_and_fallback_warning(monkeypatch):
    assert isinstance(get_tagger("simple"), SimpleTagger)
    with pytest.raises(ConfigError):
        get_tagger("bogus")
    monkeypatch.setattr(nouns, "find_spacy_model", lambda: None)
    monkeypatch.setattr(nouns, "nltk_available", lambda: False)
    monkeypatch.setattr(nouns, "_warned_fallback", False)
    with pytest.warns(UserWarning, match="simple heuristic tagger"):
        assert isinstance(get_tagger("auto"), SimpleTagger)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second fallback must not warn again
        assert isinstance(get_tagger("auto"), SimpleTagger)
    with pytest.raises(ConfigError):
        get_tagger("spacy")
    with pytest.raises(ConfigError):
        get_tagger("nltk")


def test_spacy_tagger_picks_nouns_and_verbs():
    pytest.importorskip("spacy")
    if nouns.find_spacy_model() is None:
        pytest.skip("no spaCy English model installed")
    tagger = get_tagger("spacy")
    assert prompt_words(tagger("A man riding a horse on the beach next to a dog.")) == [
        "man", "riding", "horse", "beach", "dog",
    ]
    restored = pickle.loads(pickle.dumps(tagger))
    assert vars(restored) == {"model": tagger.model}
    assert prompt_words(restored("Two cats are sleeping on the red sofa")) == ["cats", "are", "sleeping", "sofa"]


def test_with_words_matches_call_and_names_each_prompt_word():
    from groupvit.text.multilabel import word_id

    class Fixed:
        def __call__(self, caption):
            return [("red", "JJ"), ("circle", "NN"), ("star", "NN")]

    tokens = CaptionTokens(3, tagger=Fixed())
    plain = tokens("a red circle and a star", np.random.default_rng(5))
    with_words, ids = tokens.with_words("a red circle and a star", np.random.default_rng(5))
    assert torch.equal(plain, with_words)
    assert sorted(ids[:2].tolist()) == sorted([word_id("circle"), word_id("star")])
    assert ids[2].item() == -1  # two words, K = 3: one caption copy
    assert word_id("Star") == word_id("star") != word_id("circle")
