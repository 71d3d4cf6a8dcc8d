"""CLIP byte-level BPE tokenizer: text -> ``LongTensor [B, context_length]`` of token ids.

The vocabulary is the 16e6 BPE file shipped with the ``openai-clip`` PyPI package (49,408 ids:
256 bytes, the same 256 bytes as word ends ``</w>``, 48,894 merges, then ``<|startoftext|>`` = 49406
and ``<|endoftext|>`` = 49407). Cleaning, pre-tokenization, merging and the padding / truncation rule
follow the tokenizer that GroupViT and CLIP were trained with, so ids are identical to theirs.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import ftfy
import regex
import torch

from groupvit.errors import ConfigError, InputError

VOCAB_ENV_VAR = "GROUPVIT_BPE_VOCAB"
VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
VOCAB_SIZE = 49408
NUM_MERGES = 49152 - 256 - 2
DEFAULT_CONTEXT_LENGTH = 77

# Pre-tokenization of CLIP: the two special tokens, English contractions, runs of letters, single
# digits, and runs of anything else that is neither space, letter nor digit. Whitespace is dropped.
_PRETOKEN_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")
_WORD_CACHE_SIZE = 1 << 18


def bytes_to_unicode() -> dict[int, str]:
    """Byte value -> printable character, the alphabet the BPE merges are written in.

    Bytes that are already visible, non-space Latin-1 characters map to themselves; the other 68
    (controls, space, DEL, NBSP, soft hyphen, ...) are moved to ``chr(256 + k)`` in increasing byte order.
    The dict's insertion order (visible bytes first, then the moved ones) fixes the first 256 token ids.
    """
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in visible}
    moved = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + moved)
            moved += 1
    return table


def clean_text(text: str) -> str:
    """Normalise a caption the way CLIP does before BPE.

    ``ftfy.fix_text`` (mojibake, NFC, curly quotes, full-width forms...), HTML entities unescaped twice
    (captions scraped from the web are often double-escaped, ``&amp;amp;``), every whitespace run turned
    into one space, ends stripped, lower-cased. Printable ASCII without ``&`` is left as it is by the first
    three steps, and skips them (a tenth of a training loader's time on short captions).
    """
    if not (text.isascii() and text.isprintable() and "&" not in text):
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return _WHITESPACE.sub(" ", text).strip().lower()


def find_vocab_file(path: str | os.PathLike | None = None) -> Path:
    """Path of ``bpe_simple_vocab_16e6.txt.gz``.

    Looked up in order: ``path``, the ``GROUPVIT_BPE_VOCAB`` environment variable, then the data file of
    the installed ``openai-clip`` package (found without importing ``clip``, which would import
    torchvision). Raises ``ConfigError`` if none exists.
    """
    explicit = path if path is not None else os.environ.get(VOCAB_ENV_VAR) or None
    if explicit is not None:
        candidate = Path(explicit).expanduser()
        if not candidate.is_file():
            source = "argument" if path is not None else f"${VOCAB_ENV_VAR}"
            raise ConfigError(
                f"BPE vocabulary file {str(candidate)!r} (from {source}) does not exist; give the path of "
                f"{VOCAB_FILENAME}, or none to use the copy in openai-clip."
            )
        return candidate
    spec = importlib.util.find_spec("clip")
    package_dirs = (spec.submodule_search_locations or []) if spec is not None else []
    for folder in package_dirs:
        candidate = Path(folder) / VOCAB_FILENAME
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"CLIP BPE vocabulary {VOCAB_FILENAME} not found: run `pip install openai-clip` "
        f"or set {VOCAB_ENV_VAR} to the file's path."
    )


def read_merges(path: str | os.PathLike) -> list[tuple[str, str]]:
    """The 48,894 BPE merges of the vocabulary file, in priority order (first = merged first)."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise ConfigError(f"BPE vocabulary file {str(path)!r} is not readable gzip text: {err}") from err
    # Line 0 is a version header; the file holds more merges than the released vocabulary uses.
    merge_lines = lines[1 : NUM_MERGES + 1]
    merges = [tuple(line.split()) for line in merge_lines]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ConfigError(
            f"BPE vocabulary file {str(path)!r} is malformed: expected {NUM_MERGES} 'a b' merge lines "
            f"after the header; use the {VOCAB_FILENAME} shipped with openai-clip."
        )
    return merges  # type: ignore[return-value]


class Tokenizer:
    """CLIP BPE tokenizer.

    Args:
        vocab_path: the ``bpe_simple_vocab_16e6.txt.gz`` file; default: ``$GROUPVIT_BPE_VOCAB``, else the
            file of the installed ``openai-clip`` package (see ``find_vocab_file``).

    Attributes:
        encoder: token string -> id (49,408 entries). ``decoder`` is its inverse.
        sot_id, eot_id: ids of ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).

    BPE results are cached per pre-token (LRU, 2**18 words), so repeated words cost one dict look-up.
    """

    def __init__(self, vocab_path: str | os.PathLike | None = None) -> None:
        self.vocab_path = find_vocab_file(vocab_path)
        merges = read_merges(self.vocab_path)
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        symbols = list(self.byte_encoder.values())
        word_ends = [s + "</w>" for s in symbols]
        tokens = symbols + word_ends + ["".join(m) for m in merges] + [SOT_TOKEN, EOT_TOKEN]
        self.encoder: dict[str, int] = {tok: i for i, tok in enumerate(tokens)}
        self.decoder: dict[int, str] = dict(enumerate(tokens))
        self.merge_ranks: dict[tuple[str, str], int] = {m: i for i, m in enumerate(merges)}
        self.sot_id = self.encoder[SOT_TOKEN]
        self.eot_id = self.encoder[EOT_TOKEN]
        self._init_cache()

    def _init_cache(self) -> None:
        self._pretoken_ids = functools.lru_cache(maxsize=_WORD_CACHE_SIZE)(self._encode_pretoken)

    def __getstate__(self) -> dict:
        # The lru_cache wrapper around a bound method cannot be pickled (DataLoader workers with spawn).
        state = self.__dict__.copy()
        del state["_pretoken_ids"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_cache()

    @property
    def vocab_size(self) -> int:
        """Number of token ids, 49,408."""
        return len(self.encoder)

    def bpe(self, word: str) -> list[str]:
        """Merge the characters of one byte-encoded pre-token into BPE symbols.

        The last character carries the word-end marker ``</w>``; at each step every occurrence of the
        adjacent pair with the lowest merge rank is joined, left to right, until no pair is a merge.
        """
        if word in (SOT_TOKEN, EOT_TOKEN):
            return [word]
        parts = [*word[:-1], word[-1] + "</w>"]
        ranks = self.merge_ranks
        while len(parts) > 1:
            best = min(zip(parts, parts[1:], strict=False), key=lambda pair: ranks.get(pair, NUM_MERGES))
            if best not in ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def _encode_pretoken(self, pretoken: str) -> tuple[int, ...]:
        word = "".join(self.byte_encoder[b] for b in pretoken.encode("utf-8"))
        return tuple(self.encoder[symbol] for symbol in self.bpe(word))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` after cleaning (see ``clean_text``), without ``<|startoftext|>`` /
        ``<|endoftext|>``. ``"a photo of a dog."`` -> ``[320, 1125, 539, 320, 1929, 269]``."""
        if not isinstance(text, str):
            raise InputError(f"Tokenizer.encode expects a str, got {type(text).__name__}.")
        ids: list[int] = []
        for pretoken in _PRETOKEN_PATTERN.findall(clean_text(text)):
            ids.extend(self._pretoken_ids(pretoken))
        return ids

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Text of a sequence of token ids (a list, or a 1-D tensor such as one row of ``__call__``).

        With ``skip_special_tokens`` (default) ``<|startoftext|>`` is dropped and decoding stops at the
        first ``<|endoftext|>``, so zero padding after it is ignored. Word ends become single spaces and the
        result is stripped; cleaning is lossy (lower case, collapsed spaces), so only cleaned text made of
        letter words and single spaces round-trips exactly (digits and punctuation come back
        space-separated).
        """
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise InputError(f"Tokenizer.decode expects a 1-D tensor, got shape {tuple(ids.shape)}.")
            ids = ids.tolist()
        raw = bytearray()
        for i in ids:
            i = int(i)
            if i not in self.decoder:
                raise InputError(f"Token id {i} is outside the vocabulary [0, {self.vocab_size}).")
            if skip_special_tokens and i == self.sot_id:
                continue
            if skip_special_tokens and i == self.eot_id:
                break
            symbol = self.decoder[i]
            if i in (self.sot_id, self.eot_id):
                # Special tokens keep their ASCII spelling; every other character stands for one byte.
                raw.extend(symbol.encode("ascii"))
                continue
            word_end = symbol.endswith("</w>")
            raw.extend(self.byte_decoder[c] for c in (symbol[:-4] if word_end else symbol))
            if word_end:
                raw.extend(b" ")
        return raw.decode("utf-8", errors="replace").strip()

    def __call__(
        self, texts: str | Sequence[str], context_length: int = DEFAULT_CONTEXT_LENGTH
    ) -> torch.Tensor:
        """Token ids of one or several texts, ready for the text encoder.

        Each row is ``[SOT] + encode(text) + [EOT]`` followed by zeros. A row longer than
        ``context_length`` is cut to ``context_length`` tokens and its last token replaced by EOT, so the
        encoder's EOT pooling always finds one (official behaviour).

        Args:
            texts: one string or a sequence of strings (B of them; a single string gives B = 1).
            context_length: tokens per row, at least 2 (default 77).

        Returns:
            ``torch.long`` tensor ``[B, context_length]``.
        """
        if isinstance(texts, str):
            texts = [texts]
        if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 2:
            raise InputError(f"context_length must be an int >= 2 (SOT and EOT), got {context_length!r}.")
        if not isinstance(texts, Sequence):
            raise InputError(f"texts must be a str or a sequence of str, got {type(texts).__name__}.")
        for k, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"texts[{k}] must be a str, got {type(text).__name__}.")
        rows = []
        for text in texts:
            ids = [self.sot_id, *self.encode(text), self.eot_id]
            if len(ids) > context_length:
                ids = ids[:context_length]
                ids[-1] = self.eot_id
            rows.append(ids + [0] * (context_length - len(ids)))
        # reshape keeps the [0, context_length] shape for an empty batch.
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), context_length)


@functools.lru_cache(maxsize=1)
def get_default_tokenizer() -> Tokenizer:
    """The process-wide tokenizer on the default vocabulary (loaded once, on first use)."""
    return Tokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = DEFAULT_CONTEXT_LENGTH) -> torch.Tensor:
    """Token ids ``LongTensor [B, context_length]`` of ``texts`` with the default tokenizer.

    Same as ``get_default_tokenizer()(texts, context_length)``; see ``Tokenizer.__call__``.
    """
    return get_default_tokenizer()(texts, context_length)
