"""The training data loader: deterministic, resumable epochs of augmented image-caption batches.

Usage (one call per epoch and rank)::

    loader = build_train_loader(cfg, epoch=epoch, rank=rank, world_size=world, start_batch=resume_step)
    for batch in loader:        # len(loader) == loader.num_batches - start_batch
        batch["images"]         # float32 [B, 3, S, S], normalised
        batch["texts"]          # int64 [B, 1 + K, context_length]: caption tokens, then K prompt tokens
        batch["prompt_words"]   # int64 [B, K]: word id (text.multilabel.word_id) behind each prompt, -1 = padding
        batch["captions"]       # list of B str;  batch["keys"]: list of B sample names
        batch["skipped"]        # int: unusable samples dropped while this batch was assembled
    loader.skipped              # total of batch["skipped"] so far; loader.problems: what was wrong, by name

How an epoch is cut up. The data is a list of units: every shard of every shard source, and chunks of
1000 rows of every folder source (the rows permuted per epoch). The units are shuffled with (seed, epoch).
There are ``S = world_size * W`` streams, ``W = max(1, num_workers)``; stream ``rank + world_size * w`` is
read by worker ``w`` of rank ``rank``. The first ``S * (n_units // S)`` units are dealt out whole, stream
``s`` taking units ``s, s + S, ...`` (i.e. ``units[rank::world][w::W]``, as the official loader splits
shards); the other ``n_units % S`` units (all of them when there are fewer units than streams) are split by
sample: their samples are numbered in order and stream ``s`` takes numbers ``s, s + S, ...`` (reading only
the headers of the others). A stream's part is therefore each sample once, and the parts are as equal as
the units allow.

A rank has ``num_batches = total_length // (batch_size * world_size)`` batches (drop last, the same on every
rank); rank batch ``b`` is the ``b // W``-th batch of stream ``rank + world_size * (b % W)``. Each stream
passes its part through a shuffle buffer (``shuffle_buffer`` samples, seeded by seed, epoch and stream) and
cuts batches from it. No sample is seen twice in an epoch unless a stream's part is smaller than its quota
(its batches x batch_size): with unequal shards, skipped samples, a ``length`` above the real count, or
``num_batches`` not a multiple of ``W``. Such a stream then starts its part again (as the official endlessly
repeating stream does); the buffer is drained before a repeat starts.

Augmentation and prompt randomness of a sample come from a generator seeded by (seed, epoch, repeat, sample
id), so a batch is a function of (config, epoch, rank, world_size, num_workers) and its index alone.
``start_batch = N`` therefore gives exactly batches ``N, N + 1, ...`` of the uninterrupted epoch: the batches
before N are assembled without augmentation or tokenisation (images are still decoded, to know which samples
are unusable), and the loader workers are rotated so that batch N comes first. Resuming needs the same
config, world size and number of workers.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import signal
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from groupvit.config import check_keys
from groupvit.data.decoded import DecodedShards
from groupvit.data.sources import RawSample, SampleError, ShardSource, Source, Unit, build_source, decode_sample
from groupvit.data.transforms import ImageAugConfig, TrainTransform
from groupvit.errors import ConfigError, InputError
from groupvit.text.multilabel import CaptionTokens
from groupvit.text.nouns import TAGGER_NAMES, get_tagger
from groupvit.text.tag_cache import cached

logger = logging.getLogger("groupvit.data")

MAX_STORED_PROBLEMS = 1000
MAX_LOGGED_PROBLEMS = 20
# Consecutive unusable samples, in whole passes over a stream's part, after which the stream gives up.
MAX_UNUSABLE_PASSES = 10
_UNIT_ORDER, _BUFFER, _SAMPLE = 0xD0, 0xB0, 0x5A


@dataclass
class DataConfig:
    """What the training loader reads and how it augments.

    Args:
        sources: source dicts, mixed into one epoch: ``{"type": "shards", "pattern": "dir/s-{000000..000009}.tar",
            "length": N}`` (``length`` optional: counted from the shards when absent) and/or
            ``{"type": "folder", "root": DIR, "captions": "captions.csv"}`` (see :mod:`groupvit.data.sources`).
        batch_size: samples per batch per rank (default 256).
        num_workers: loader worker processes per rank (default 2; 0 reads in the calling process).
        worker_nice: added to each worker's niceness (0-19, default 0). On a CPU whose cores all run the
            training step, 19 lets the step's threads win the cores and the workers fill the time they leave
            idle, instead of slowing every step of the whole run.
        image: training image augmentation (default: the official recipe at 224 px).
        multi_label: K prompts per caption (default 0: ``texts`` is ``[B, 1, context_length]``).
        tagger: part-of-speech tagger for the prompts, ``auto``, ``spacy``, ``nltk`` or ``simple``.
        prompt_stopwords: words never turned into prompts (default none, as official), e.g. caption
            boilerplate such as "photo" or "corner" that no image region shows.
        prompt_phrases: a prompt names a noun with the adjectives right before it ("green star"), an
            entity-level prompt (default false, as official).
        decoded_cache: keep each shard's decoded images on disk under ``cache_dir()/decoded`` and read them
            from there in later epochs and runs (:mod:`groupvit.data.decoded`; default false). For small data
            sets of small images, where decoding is most of the loader's work; it costs the raw pixels' size
            on disk (740 MB for 60,000 scenes of 64 px). Batches are the same with or without it.
        tag_cache: captions whose tags are kept, on disk under ``cache_dir()/tags`` and in each worker's memory,
            so a caption is tagged once across epochs and runs (default 1,000,000, about 0.5 GB per worker
            when full; 0: tag every time). Beyond it new captions are tagged each time they are read.
        context_length: tokens per text row (default 77).
        shuffle_buffer: samples held by each stream's shuffle buffer (default 1000; 0 or 1: no shuffling).
        seed: base seed of every random choice (default 0).
    """

    sources: list[dict]
    batch_size: int = 256
    num_workers: int = 2
    worker_nice: int = 0
    image: ImageAugConfig = field(default_factory=ImageAugConfig)
    multi_label: int = 0
    tagger: str = "auto"
    prompt_stopwords: list[str] = field(default_factory=list)
    prompt_phrases: bool = False
    decoded_cache: bool = False
    tag_cache: int = 1_000_000
    context_length: int = 77
    shuffle_buffer: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.image, dict):
            self.image = ImageAugConfig.from_dict(self.image)
        if not isinstance(self.sources, list | tuple) or not self.sources:
            raise ConfigError("data sources must be a non-empty list of source dicts")
        checks = {
            "batch_size": self.batch_size >= 1,
            "num_workers": self.num_workers >= 0,
            "worker_nice": 0 <= self.worker_nice <= 19,
            "multi_label": self.multi_label >= 0,
            "tag_cache": self.tag_cache >= 0,
            "context_length": self.context_length >= 2,
            "shuffle_buffer": self.shuffle_buffer >= 0,
            "seed": self.seed >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"data config {name} = {getattr(self, name)!r} is out of range")
        if self.tagger not in TAGGER_NAMES:
            raise ConfigError(f"unknown tagger {self.tagger!r}; choose one of {', '.join(TAGGER_NAMES)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        """Build from a plain dict (``image`` may be a dict); unknown keys raise ConfigError."""
        check_keys(cls, data, "data config")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, the inverse of :meth:`from_dict`."""
        data = asdict(self)
        data["image"] = self.image.to_dict()
        return data


def _rng(*entropy: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(list(entropy)))


def split_units(units: list[Unit], num_streams: int) -> tuple[list[list[Unit]], list[Unit]]:
    """``(whole units of each stream, units shared by sample)``: units ``s, s + S, ...`` below ``S * (n // S)``
    go whole to stream ``s``; the last ``n % S`` are shared."""
    whole = len(units) // num_streams * num_streams
    return [units[s:whole:num_streams] for s in range(num_streams)], units[whole:]


def _shuffle_buffer(items: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Fill a buffer of ``size`` items, then for each new item emit a random buffered one and put it in its place."""
    if size <= 1:
        yield from items
        return
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        index = rng.randrange(size)
        buffer[index], item = item, buffer[index]
        yield item
    rng.shuffle(buffer)
    yield from buffer


class EpochStream(IterableDataset):
    """The batches of one rank and epoch (see the module docstring); one copy runs in each loader worker."""

    def __init__(
        self,
        cfg: DataConfig,
        sources: list[Source],
        *,
        epoch: int,
        rank: int,
        world_size: int,
        start_batch: int,
        num_batches: int,
    ) -> None:
        self.cfg = cfg
        self.sources = sources
        self.epoch, self.rank, self.world_size = epoch, rank, world_size
        self.start_batch, self.num_batches = start_batch, num_batches
        self.workers = max(1, cfg.num_workers)
        self.num_streams = self.workers * world_size
        self.image_transform = TrainTransform(cfg.image)
        tagger = cached(get_tagger(cfg.tagger), cfg.tag_cache) if cfg.multi_label > 0 else cfg.tagger
        self.text_transform = CaptionTokens(
            cfg.multi_label, tagger, "full", cfg.context_length, stopwords=cfg.prompt_stopwords,
            phrases=cfg.prompt_phrases
        )
        if self.text_transform.tagger is not None:
            # Load the tagger's model here: a missing model fails now, and forked workers inherit it loaded.
            self.text_transform.tagger("a photo")

    def _units(self) -> list[Unit]:
        seed, epoch = self.cfg.seed, self.epoch
        units = [unit for index, source in enumerate(self.sources) for unit in source.units(index, seed, epoch)]
        order = _rng(self.cfg.seed, self.epoch, _UNIT_ORDER).permutation(len(units))
        return [units[i] for i in order]

    def _part(self, stream: int, repeat: int, problems: list[str]) -> Iterator[tuple[int, RawSample]]:
        """``(repeat, raw sample)`` for each sample of this stream's part, in reading order."""
        whole, shared = split_units(self._units(), self.num_streams)
        for unit in whole[stream]:
            for raw in self.sources[unit.source].read(unit, None, problems.append):
                yield repeat, raw
        position = 0
        for unit in shared:
            start = position
            want = lambda p, start=start: (start + p) % self.num_streams == stream  # noqa: E731
            for raw in self.sources[unit.source].read(unit, want, problems.append):
                position += 1
                if raw is not None:
                    yield repeat, raw

    def _samples(self, stream: int, problems: list[str]) -> Iterator[tuple[int, RawSample]]:
        """The stream's part passed through the shuffle buffer, again and again (each pass drains the buffer,
        so a pass yields every sample of the part once before the next pass starts)."""
        rng = random.Random(int(_rng(self.cfg.seed, self.epoch, _BUFFER, stream).integers(2**63)))
        for repeat in itertools.count():
            count = 0
            for item in _shuffle_buffer(self._part(stream, repeat, problems), self.cfg.shuffle_buffer, rng):
                count += 1
                yield item
            if count == 0:
                raise InputError(
                    f"rank {self.rank} loader stream {stream} got no sample: the data has fewer samples than "
                    f"the {self.num_streams} streams (world_size x workers); use fewer workers or more data"
                )
            self._part_size = count

    def _logical_worker(self) -> int:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        # Rotation: DataLoader asks worker 0 first, and batch start_batch belongs to stream start_batch % W.
        return (worker + self.start_batch) % self.workers

    def __iter__(self) -> Iterator[dict[str, Any]]:
        cfg = self.cfg
        worker = self._logical_worker()
        stream = self.rank + self.world_size * worker
        own_batches = len(range(worker, self.num_batches, self.workers))
        skip_batches = len(range(worker, self.start_batch, self.workers))
        problems: list[str] = []
        self._part_size = None
        samples = self._samples(stream, problems)
        unusable_streak = 0
        for index in range(own_batches):
            batch: list[tuple[int, RawSample, Any, str]] = []
            skipped = 0
            while len(batch) < cfg.batch_size:
                repeat, raw = next(samples)
                try:
                    image, caption = decode_sample(raw)
                except SampleError as err:
                    skipped += 1
                    problems.append(f"skipped {raw.key}: {err}")
                    unusable_streak += 1
                    if self._part_size is not None and unusable_streak > MAX_UNUSABLE_PASSES * self._part_size:
                        raise InputError(
                            f"rank {self.rank} loader stream {stream}: no usable sample in {unusable_streak} "
                            f"(last: {raw.key}: {err}); check the data"
                        ) from None
                    continue
                unusable_streak = 0
                batch.append((repeat, raw, image, caption))
            if index < skip_batches:
                problems.clear()
                continue
            yield self._collate(batch, skipped, problems)
            problems.clear()

    def _collate(self, batch: list[tuple[int, RawSample, Any, str]], skipped: int, problems: list[str]) -> dict:
        cfg = self.cfg
        images, texts, words = [], [], []
        for repeat, raw, image, caption in batch:
            image_seed, text_seed = np.random.SeedSequence(
                [cfg.seed, self.epoch, _SAMPLE, repeat, *raw.sample_id]
            ).spawn(2)
            images.append(self.image_transform(image, np.random.default_rng(image_seed)))
            tokens, prompt_words = self.text_transform.with_words(caption, np.random.default_rng(text_seed))
            texts.append(tokens)
            words.append(prompt_words)
        return {
            "images": torch.stack(images),
            "texts": torch.stack(texts),
            "prompt_words": torch.stack(words),
            "captions": [caption for *_, caption in batch],
            "keys": [raw.key for _, raw, *_ in batch],
            "skipped": skipped,
            "problems": list(problems),
        }


def _start_worker(nice: int, worker: int) -> None:
    """Worker start-up: leave SIGINT and SIGTERM to the main process and add ``nice`` to the niceness.

    Ctrl-C in a terminal and ``kill -- -PGID`` signal the whole process group; a worker that died of them would
    end the run with "DataLoader worker (pid N) is killed by signal" instead of the main process's graceful stop,
    which finishes the step, checkpoints it and then shuts the workers down itself.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if nice:
        os.nice(nice)


class TrainLoader:
    """Iterable over the batches of one rank for one epoch, from ``start_batch`` on (see the module docstring).

    Attributes:
        num_batches: batches per epoch for this rank, ``total_length // (batch_size * world_size)``.
        start_batch: index of the first batch an iteration yields.
        total_length: sum of the sources' lengths.
        skipped: unusable samples dropped while assembling the batches yielded so far.
        problems: distinct problem lines (missing, unreadable or truncated shards, skipped samples), at most 1000.
    """

    def __init__(self, dataset: EpochStream, total_length: int, problems: list[str]) -> None:
        self.dataset = dataset
        self.num_batches = dataset.num_batches
        self.start_batch = dataset.start_batch
        self.total_length = total_length
        self.skipped = 0
        self.problems: list[str] = []
        self._seen: set[str] = set()
        self._note(problems)

    def __len__(self) -> int:
        return self.num_batches - self.start_batch

    def _note(self, problems: list[str]) -> None:
        for line in problems:
            if line in self._seen or len(self._seen) >= MAX_STORED_PROBLEMS:
                continue
            self._seen.add(line)
            self.problems.append(line)
            if len(self.problems) <= MAX_LOGGED_PROBLEMS:
                logger.warning("%s", line)
            if len(self.problems) == MAX_LOGGED_PROBLEMS:
                logger.warning("further data problems are collected in TrainLoader.problems, not logged")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        workers = self.dataset.cfg.num_workers
        nice = self.dataset.cfg.worker_nice
        loader = DataLoader(self.dataset, batch_size=None, num_workers=workers, persistent_workers=False,
                            worker_init_fn=partial(_start_worker, nice) if workers else None)
        for batch in loader:
            self.skipped += batch["skipped"]
            self._note(batch["problems"])
            yield batch


def build_train_loader(
    cfg: DataConfig, *, epoch: int, rank: int = 0, world_size: int = 1, start_batch: int = 0
) -> TrainLoader:
    """The loader of ``rank``'s batches ``start_batch .. num_batches - 1`` of ``epoch`` (see the module docstring).

    Raises ConfigError when the sources are invalid or too small for one batch per rank.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is not in [0, world_size = {world_size})")
    if epoch < 0:
        raise ConfigError(f"epoch must be >= 0, got {epoch}")
    problems: list[str] = []
    sources = [build_source(spec, problems.append) for spec in cfg.sources]
    if cfg.decoded_cache:
        decoded = DecodedShards()
        for source in sources:
            if isinstance(source, ShardSource):
                source.decoded = decoded
    for source in sources:
        missing = getattr(source, "missing", [])
        if missing:
            problems.append(
                f"{len(missing)} of {len(missing) + len(source.shards)} shards of {source.pattern!r} are missing "
                f"and left out (first: {missing[0]})"
            )
    total_length = sum(source.length for source in sources)
    num_batches = total_length // (cfg.batch_size * world_size)
    if num_batches == 0:
        raise ConfigError(
            f"{total_length} samples make no full batch of {cfg.batch_size} x {world_size} ranks; "
            "lower batch_size or add data"
        )
    if not 0 <= start_batch <= num_batches:
        raise ConfigError(f"start_batch {start_batch} is outside the epoch's {num_batches} batches")
    dataset = EpochStream(
        cfg, sources, epoch=epoch, rank=rank, world_size=world_size, start_batch=start_batch, num_batches=num_batches
    )
    return TrainLoader(dataset, total_length, problems)
