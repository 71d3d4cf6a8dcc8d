"""Caption tags kept on disk: a spaCy or NLTK tagger's output per caption, computed once across epochs and runs.

Tagging is a pure function of (tagger, model version, caption), and it was two thirds of the data loader's
work per sample on the synthetic recipe (BENCHMARKS.md). :class:`CachedTagger` wraps a tagger with a dict
filled from an append-only JSON-lines file, ``cache_dir()/tags/{key}.jsonl``; a loader worker appends each
caption it tags for the first time, so the next epoch (a new worker process) and the next run read it back.
The result is the tagger's own output, so batches are the same with or without the cache. A line that does
not parse (a write cut short) is ignored; when the file cannot be written the cache stays in memory only.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import warnings
from pathlib import Path

from groupvit.fileio import append_line, cache_dir
from groupvit.text.nouns import SpacyTagger, TaggedWords, Tagger


def tagger_cache_key(tagger: Tagger) -> str | None:
    """A file-name-safe name of what decides the tags (tagger, its model and versions); None for the fast
    heuristic ``simple`` tagger, which is not worth caching."""
    if isinstance(tagger, SpacyTagger):
        versions = [_version("spacy"), _version(tagger.model.replace("_", "-"))]
        return "-".join(["spacy", tagger.model, *versions])
    if tagger.name == "nltk":
        return f"nltk-{_version('nltk')}"
    return None


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class CachedTagger:
    """``tagger`` with its results kept in ``path`` (default ``cache_dir()/tags/{tagger_cache_key}.jsonl``).

    The file is read on first use in each process (so it pickles cheaply to loader workers); every new caption
    is appended as one line ``[caption, [[word, tag], ...]]`` with a single ``write``. At most ``max_entries``
    captions are kept (read from the file, then added); past that, new captions are tagged on every call.
    """

    def __init__(self, tagger: Tagger, path: str | os.PathLike[str] | None = None,
                 max_entries: int = 1_000_000) -> None:
        key = tagger_cache_key(tagger)
        if path is None and key is None:
            raise ValueError(f"tagger {tagger.name!r} has no cache key")
        self.tagger = tagger
        self.name = tagger.name
        self.path = Path(path) if path is not None else cache_dir() / "tags" / f"{key}.jsonl"
        self.max_entries = max_entries
        self._tags: dict[str, TaggedWords] | None = None
        self._writable = True

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tags": None}

    def _load(self) -> dict[str, TaggedWords]:
        tags: dict[str, TaggedWords] = {}
        try:
            with open(self.path, encoding="utf-8") as handle:
                for line in handle:
                    if len(tags) >= self.max_entries:
                        break
                    try:
                        caption, tagged = json.loads(line)
                        tags[caption] = [(str(word), str(tag)) for word, tag in tagged]
                    except (ValueError, TypeError):
                        continue  # a line cut short by a killed writer
        except (FileNotFoundError, NotADirectoryError):
            pass  # nothing cached yet; a folder that cannot be made is reported when writing
        except OSError as err:
            warnings.warn(f"caption tag cache {self.path} is unreadable ({err}); tagging without it", stacklevel=3)
        return tags

    def _append(self, caption: str, tagged: TaggedWords) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            append_line(self.path, json.dumps([caption, tagged], ensure_ascii=False))
        except OSError as err:
            self._writable = False
            warnings.warn(f"caption tag cache {self.path} cannot be written ({err}); it is kept in memory only",
                          stacklevel=3)

    def __call__(self, text: str) -> TaggedWords:
        if self._tags is None:
            self._tags = self._load()
        tagged = self._tags.get(text)
        if tagged is None:
            tagged = self.tagger(text)
            if len(self._tags) < self.max_entries:
                self._tags[text] = tagged
                if self._writable:
                    self._append(text, tagged)
        return tagged


def cached(tagger: Tagger, max_entries: int = 1_000_000) -> Tagger:
    """``tagger`` behind a :class:`CachedTagger` keeping up to ``max_entries`` captions where it has a cache
    key and ``max_entries`` > 0, else ``tagger`` itself."""
    if max_entries > 0 and tagger_cache_key(tagger) is not None:
        return CachedTagger(tagger, max_entries=max_entries)
    return tagger
