"""Caption tag cache: round trip through its file, torn lines, an unwritable folder, its bound, and loader
batches that are the same with the cache cold, warm and off."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from test_loader import config, make_shards

from groupvit.data.loader import build_train_loader
from groupvit.fileio import cache_dir
from groupvit.text.nouns import SimpleTagger, TaggedWords, get_tagger
from groupvit.text.tag_cache import CachedTagger, cached, tagger_cache_key


class CountingTagger:
    """The simple tagger, counting its calls."""

    name = "counting"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, text: str) -> TaggedWords:
        self.calls.append(text)
        return SimpleTagger()(text)


def test_tags_round_trip_through_the_file(tmp_path):
    path = tmp_path / "tags.jsonl"
    first = CachedTagger(CountingTagger(), path)
    tags = first("a red star on grass")
    assert first("a red star on grass") == tags and first.tagger.calls == ["a red star on grass"]
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        ["a red star on grass", [list(pair) for pair in tags]]
    ]
    second = CachedTagger(CountingTagger(), path)  # a new process: reads the file, tags nothing
    assert second("a red star on grass") == tags and second.tagger.calls == []
    assert all(isinstance(pair, tuple) for pair in second("a red star on grass"))


def test_a_torn_line_is_ignored(tmp_path):
    path = tmp_path / "tags.jsonl"
    CachedTagger(CountingTagger(), path)("two blue circles")
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('["a cut sho')  # a writer killed mid-line
    tagger = CachedTagger(CountingTagger(), path)
    assert tagger("two blue circles") == SimpleTagger()("two blue circles") and tagger.tagger.calls == []
    tagger("a cut short")
    assert tagger.tagger.calls == ["a cut short"]


def test_unwritable_cache_warns_once_and_keeps_tags_in_memory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    tagger = CachedTagger(CountingTagger(), blocker / "tags.jsonl")
    with pytest.warns(UserWarning, match="cannot be written"):
        tagger("one star")
    tagger("one star")
    tagger("two stars")  # no second warning: writing is off
    assert tagger.tagger.calls == ["one star", "two stars"]


def test_pickles_without_its_tags_and_stops_growing_at_its_bound(tmp_path):
    tagger = CachedTagger(CountingTagger(), tmp_path / "tags.jsonl", max_entries=2)
    for text in ["a", "b", "c", "c"]:
        tagger(text)
    assert tagger.tagger.calls == ["a", "b", "c", "c"] and len(tagger._tags) == 2
    assert len((tmp_path / "tags.jsonl").read_text().splitlines()) == 2
    clone = pickle.loads(pickle.dumps(tagger))
    assert clone._tags is None and clone.max_entries == 2
    clone("a")
    assert clone.tagger.calls == ["a", "b", "c", "c"]  # read back from the file


def test_keys_name_the_tagger_and_its_versions():
    assert tagger_cache_key(SimpleTagger()) is None and type(cached(SimpleTagger())) is SimpleTagger
    spacy = get_tagger("spacy")
    key = tagger_cache_key(spacy)
    assert key.startswith(f"spacy-{spacy.model}-") and "/" not in key
    assert cached(spacy).path == cache_dir() / "tags" / f"{key}.jsonl"
    assert cached(spacy, max_entries=0) is spacy


def test_loader_batches_are_the_same_with_the_cache_cold_warm_and_off(tmp_path):
    sources = [{"type": "shards", "pattern": make_shards(tmp_path, 2, 5)}]
    runs = []
    for tag_cache in [1000, 1000, 0]:  # cold (writes the file), warm (reads it), off
        cfg = config(sources, multi_label=3, tagger="spacy", tag_cache=tag_cache)
        runs.append(list(build_train_loader(cfg, epoch=1)))
    files = list((cache_dir() / "tags").glob("spacy-*.jsonl"))
    assert len(files) == 1
    captions = {json.loads(line)[0] for line in files[0].read_text().splitlines()}
    assert captions == {"a photo"} | {caption for batch in runs[0] for caption in batch["captions"]}
    for cold, warm, off in zip(*runs, strict=True):
        assert cold["keys"] == warm["keys"] == off["keys"]
        assert torch.equal(cold["texts"], warm["texts"]) and torch.equal(cold["texts"], off["texts"])
        assert torch.equal(cold["images"], off["images"])
