"""Caption -> token ids for the multi-label contrastive loss: ``[caption, prompt_1, ..., prompt_K]``.

GroupViT's text augmentation: tag the caption, keep the words tagged NN, NNS, NNP, VB, VBD, VBG, VBN, VBP
or VBZ (nouns and verbs; NNPS is not kept; repeated words are kept once per occurrence), draw ``min(K, n)`` of
the ``n`` kept words uniformly without replacement, put each into a template drawn uniformly (with
replacement, one draw per word) from the 80 ``full`` templates, and pad with copies of the raw caption up to
``K`` prompts. The caption itself is always row 0.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from groupvit.errors import ConfigError
from groupvit.text.nouns import Tagger, get_tagger
from groupvit.text.templates import get_templates
from groupvit.text.tokenizer import DEFAULT_CONTEXT_LENGTH, tokenize

MAX_CACHED_ROWS = 200_000  # token rows kept by CaptionTokens (77 int64 each: about 120 MB at most)
PROMPT_TAGS = frozenset({"NN", "NNS", "NNP", "VB", "VBD", "VBG", "VBN", "VBP", "VBZ"})


class PromptRNG(Protocol):
    """The two draws the prompt builder makes (a ``numpy.random.Generator`` provides both)."""

    def choice(self, a: int, size: int, replace: bool) -> Sequence[int]: ...

    def integers(self, high: int) -> int: ...


def prompt_words(tagged: Sequence[tuple[str, str]], phrases: bool = False) -> list[str]:
    """Words of ``[(word, tag), ...]`` whose tag is in :data:`PROMPT_TAGS`, in caption order, repeats kept.

    With ``phrases`` a noun takes the adjectives (``JJ``) right before it: ``"a green star"`` gives
    ``"green star"`` instead of ``"star"`` (entity-level prompts; not part of the official recipe).
    """
    words = []
    for i, (word, tag) in enumerate(tagged):
        if tag not in PROMPT_TAGS:
            continue
        if phrases and tag.startswith("NN"):
            start = i
            while start > 0 and tagged[start - 1][1] == "JJ":
                start -= 1
            word = " ".join(w for w, _ in tagged[start:i + 1])
        words.append(word)
    return words


def sample_prompts(
    words: Sequence[str], num_prompts: int, templates: Sequence[str], rng: PromptRNG
) -> list[tuple[str, str]]:
    """``(word, prompt)`` for ``min(K, len(words))`` words drawn without replacement.

    Draws: ``rng.choice(len(words), size=min(K, len(words)), replace=False)`` picks word indices (in the
    returned order), then one ``rng.integers(len(templates))`` per picked word picks its template. No draw is
    made when ``words`` is empty or ``K`` is 0.
    """
    picked: list[str] = []
    count = min(num_prompts, len(words))
    if count > 0:
        for index in rng.choice(len(words), size=count, replace=False):
            picked.append(words[int(index)])
    return [(word, templates[int(rng.integers(len(templates)))].format(word)) for word in picked]


def build_prompts(
    caption: str, words: Sequence[str], num_prompts: int, templates: Sequence[str], rng: PromptRNG
) -> list[str]:
    """The ``1 + num_prompts`` texts of one caption: ``[caption, prompt_1, ..., prompt_K]``.

    Prompts as drawn by :func:`sample_prompts`, padded with copies of the caption.
    """
    prompts = [prompt for _, prompt in sample_prompts(words, num_prompts, templates, rng)]
    return [caption, *prompts, *[caption] * (num_prompts - len(prompts))]


def word_id(word: str) -> int:
    """Stable non-negative id of a prompt word (CRC-32 of its lower-case UTF-8), equal across processes."""
    return zlib.crc32(word.lower().encode("utf-8"))


class CaptionTokens:
    """Caption -> ``LongTensor [1 + K, context_length]``: the caption's tokens, then its K prompts' tokens.

    Args:
        num_prompts: K (official: 3 with the multi-label loss, 0 without; 0 gives ``[1, context_length]``).
        tagger: a :class:`~groupvit.text.nouns.Tagger` or a name for :func:`~groupvit.text.nouns.get_tagger`
            (resolved now, so the ``auto`` choice and its warning happen once, where this is built).
        templates: template set name or list (default ``full``, the 80 CLIP templates, as the official code).
        context_length: tokens per row (default 77).
        stopwords: tagged words never used as prompts (compared in lower case; default none, as official);
            with ``phrases``, a phrase whose noun is a stop-word.
        phrases: adjective-noun phrases as prompt words (:func:`prompt_words`; default off, as official).
    """

    def __init__(
        self,
        num_prompts: int = 0,
        tagger: Tagger | str = "auto",
        templates: str | Sequence[str] = "full",
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        stopwords: Sequence[str] = (),
        phrases: bool = False,
    ) -> None:
        if num_prompts < 0:
            raise ConfigError(f"the number of prompts per caption must be >= 0, got {num_prompts}")
        self.num_prompts = num_prompts
        self.tagger: Tagger | None = None
        if num_prompts > 0:
            self.tagger = get_tagger(tagger) if isinstance(tagger, str) else tagger
        self.templates = get_templates(templates)
        self.context_length = context_length
        self.stopwords = frozenset(word.lower() for word in stopwords)
        self.phrases = phrases
        # Token rows by text: prompts repeat across a data set (templates x words), so each is tokenised once.
        self._rows: dict[str, torch.Tensor] = {}

    def _tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """:func:`tokenize` of ``texts`` (``[len(texts), context_length]``), each distinct text computed once."""
        if len(self._rows) > MAX_CACHED_ROWS:
            self._rows.clear()
        for text in texts:
            if text not in self._rows:
                self._rows[text] = tokenize([text], self.context_length)[0]
        return torch.stack([self._rows[text] for text in texts])

    def words(self, caption: str) -> list[str]:
        """The prompt words of ``caption`` (:func:`prompt_words` of its tags, stop-words removed)."""
        assert self.tagger is not None
        words = prompt_words(self.tagger(caption), self.phrases)
        return [word for word in words if word.split(" ")[-1].lower() not in self.stopwords]

    def texts(self, caption: str, rng: PromptRNG | None = None) -> list[str]:
        """The ``1 + K`` strings for ``caption`` (``rng`` is needed when K > 0)."""
        if self.tagger is None:
            return [caption]
        if rng is None:
            rng = np.random.default_rng()
        return build_prompts(caption, self.words(caption), self.num_prompts, self.templates, rng)

    def __call__(self, caption: str, rng: PromptRNG | None = None) -> torch.Tensor:
        """Token ids ``torch.long [1 + K, context_length]`` of :meth:`texts`."""
        return self._tokenize(self.texts(caption, rng))

    def with_words(self, caption: str, rng: PromptRNG | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``[1 + K, context_length]`` (as :meth:`__call__` for the same ``rng`` state) and the
        :func:`word_id` of each prompt's word ``torch.long [K]`` (-1 for a caption copy used as padding)."""
        if self.tagger is None:
            return self._tokenize([caption]), torch.zeros(0, dtype=torch.long)
        if rng is None:
            rng = np.random.default_rng()
        pairs = sample_prompts(self.words(caption), self.num_prompts, self.templates, rng)
        padding = self.num_prompts - len(pairs)
        texts = [caption, *(prompt for _, prompt in pairs), *[caption] * padding]
        ids = [word_id(word) for word, _ in pairs] + [-1] * padding
        return self._tokenize(texts), torch.tensor(ids, dtype=torch.long)
