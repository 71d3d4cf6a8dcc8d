"""The training loop: contrastive pre-training of GroupViT on image-caption batches.

One optimizer step (official recipe, section 4 of the reference):

1. ``accumulation_steps`` micro-batches, each: forward under autocast (bf16, or fp16 with a
   GradScaler; float32 on CPU), :class:`~groupvit.train.losses.GroupViTLoss` over all ranks,
   backward of ``loss / accumulation_steps`` (DDP gradient averaging only on the last one);
2. gradient clipping to a global L2 norm of ``clip_grad`` (5.0);
3. AdamW step with the learning rate of :class:`~groupvit.train.optim.WarmupCosineSchedule` for
   this step.

Under ``torchrun`` the model is wrapped in DDP (``broadcast_buffers=False``, as official) and the
BatchNorm of both projection heads computes statistics over the global batch. Logs, evaluation
hooks and checkpoints run every ``log_every`` / ``eval_every`` / ``ckpt_every`` steps and at the end
of every epoch.

Exact resumption: the checkpoint holds weights, optimizer and scaler state, the data position
(epoch, micro-batches consumed) and each rank's random generators. Data loading and evaluation run
with the generators saved and restored around them, so the training stream of random numbers
(DropPath, Gumbel noise) depends only on the training steps; a run resumed from ``latest.pt`` ends
with the same weights as one that was never interrupted, provided the loader yields the same
batches when started at a given ``(epoch, start_batch)``.
"""

from __future__ import annotations

import contextlib
import importlib
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from groupvit.errors import ConfigError, DivergenceError, InputError, StorageError, WeightsError
from groupvit.fileio import check_writable
from groupvit.model import GroupViT
from groupvit.precision import resolve_precision
from groupvit.threads import apply_threads
from groupvit.train.checkpoint import (
    CheckpointManager,
    TrainState,
    capture_rng_state,
    load_training_checkpoint,
    resolve_resume,
    restore_rng_state,
)
from groupvit.train.config import TrainConfig, save_config
from groupvit.train.data_record import check_same_data, data_record
from groupvit.train.distributed import (
    DistEnv,
    all_gather_object,
    all_reduce_mean,
    all_reduce_sum,
    broadcast_object,
    init_distributed,
    seed_everything,
    shutdown,
    synchronize_head_batchnorm,
    wrap_ddp,
)
from groupvit.train.finetune import apply_trainable, keep_frozen_batchnorm
from groupvit.train.logging import MetricLogger
from groupvit.train.losses import ContrastiveObjective, LossOutput
from groupvit.train.optim import WarmupCosineSchedule, build_optimizer, scale_lr
from groupvit.train.random_data import RandomPairsLoader


class TrainLoader(Protocol):
    """What the trainer needs from a data loader (``groupvit.data.loader.TrainLoader`` fits).

    ``num_batches``: batches per rank per epoch. Iteration yields ``{"images": FloatTensor
    [B, 3, S, S], "texts": LongTensor [B, 1+K, T], ...}`` from the loader's ``start_batch`` on. An
    optional ``skipped`` attribute counts corrupt samples skipped so far.
    """

    num_batches: int

    def __iter__(self) -> Iterator[Mapping[str, Any]]: ...


# (epoch, start_batch) -> the loader of this rank for that epoch, starting at that batch.
LoaderFactory = Callable[[int, int], TrainLoader]
# hook(model, step) -> metrics; called with the bare GroupViT in eval mode under torch.no_grad().
EvalHook = Callable[[GroupViT, int], Mapping[str, float]]


def build_loader_factory(config: TrainConfig, env: DistEnv) -> LoaderFactory:
    """The loader for ``config.data``: the webdataset pipeline of :mod:`groupvit.data.loader`, or
    :class:`~groupvit.train.random_data.RandomPairsLoader` when the only source is ``{type: random}``."""
    data = config.data_config()
    sources = data.get("sources") or []
    if not sources:
        raise ConfigError("data.sources is empty; list webdataset sources (see configs/gcc-yfcc.yaml)")
    if any(isinstance(s, Mapping) and s.get("type") == "random" for s in sources):
        if len(sources) != 1:
            raise ConfigError("a data source of type random cannot be combined with other sources")
        image_size = config.model_config().vision.image_size
        return partial(_random_loader, data, image_size, env)
    try:
        from groupvit.data.loader import DataConfig, build_train_loader
    except ImportError as err:
        raise ConfigError(f"the webdataset train loader is unavailable ({err}); install groupvit with its data "
                          "dependencies") from None
    data_config = DataConfig.from_dict(data)
    return partial(_webdataset_loader, build_train_loader, data_config, env)


def _random_loader(data: dict[str, Any], image_size: int, env: DistEnv, epoch: int, start: int) -> TrainLoader:
    return RandomPairsLoader.from_data_config(data, image_size, epoch=epoch, rank=env.rank,
                                              world_size=env.world_size, start_batch=start)


def _webdataset_loader(build: Callable[..., TrainLoader], data_config: Any, env: DistEnv, epoch: int,
                       start: int) -> TrainLoader:
    return build(data_config, epoch=epoch, rank=env.rank, world_size=env.world_size, start_batch=start)


def amp_settings(amp: str, device: torch.device) -> tuple[bool, torch.dtype]:
    """``(autocast on, its dtype)`` for ``train.amp`` on ``device``.

    GPU: ``auto`` and ``bf16`` autocast to bfloat16, ``fp16`` to float16, ``none`` is off. CPU: ``bf16``
    autocasts to bfloat16 where the CPU runs it natively (else float32 with one warning); every other mode
    trains in float32.
    """
    if amp == "none":
        return False, torch.float32
    if device.type == "cuda":
        return True, torch.float16 if amp == "fp16" else torch.bfloat16
    return amp == "bf16" and resolve_precision("bf16", device) == "bf16", torch.bfloat16


def build_hooks(specs: Sequence[Mapping[str, Any]]) -> list[EvalHook]:
    """Instantiate ``{"target": "package.module:factory", **kwargs}`` entries: ``factory(**kwargs)`` per entry."""
    hooks = []
    for spec in specs:
        kwargs = dict(spec)
        module_name, _, attr = str(kwargs.pop("target")).partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"evaluate hook {spec['target']!r} cannot be imported ({err})") from None
        hooks.append(factory(**kwargs))
    return hooks


@contextlib.contextmanager
def isolated_rng(device: torch.device) -> Iterator[None]:
    """Run a block without it advancing the training stream: Python, NumPy, torch CPU (and the
    current CUDA device's) generators are restored when it ends."""
    py_state, np_state, cpu_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, device)


def _raise_on_any_rank(failure: str | None) -> None:
    """Raise rank 0's storage ``failure`` on every rank, so that none is left waiting in a collective."""
    failure = broadcast_object(failure)
    if failure is not None:
        raise StorageError(failure)


class TrainingStopped(KeyboardInterrupt):
    """Raised by :meth:`Trainer.fit` after SIGINT or SIGTERM, once the checkpoint of the last finished step is
    written: ``signum``, ``step`` and ``checkpoint`` (rank 0's ``latest.pt``; None on other ranks)."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


class _StopRequests:
    """SIGINT / SIGTERM handlers that only note the signal; the loop checkpoints and stops at the next step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequests:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._note)
        return self

    def _note(self, signum: int, _frame: object) -> None:
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


@dataclass
class TrainResult:
    """Outcome of :meth:`Trainer.fit`: optimizer steps done, last logged losses, the trained model (bare
    GroupViT, in train mode), the last checkpoint written (rank 0) and the last evaluation metrics."""

    step: int
    model: GroupViT | None = None
    losses: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class _Window:
    """Running sums between two log lines (tensors stay on the device: no sync per step)."""

    sums: torch.Tensor | None = None
    micro_batches: int = 0
    images: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, out: LossOutput, images: int) -> None:
        """Add one micro-batch: total, itc, multi-label, then the group objectives in ``out.groups`` order."""
        ml = out.multi_label if out.multi_label is not None else torch.zeros_like(out.itc)
        values = torch.stack([out.total.detach(), out.itc.detach(), ml.detach(),
                              *(v.detach() for v in out.groups.values())]).float()
        self.sums = values if self.sums is None else self.sums + values
        self.micro_batches += 1
        self.images += images


class Trainer:
    """Train a GroupViT as described by a :class:`~groupvit.train.config.TrainConfig`.

    Args:
        config: the run (model, data, train, evaluate sections).
        loader_factory: ``(epoch, start_batch) -> TrainLoader`` for this rank; by default built from
            ``config.data`` (:func:`build_loader_factory`).
        hooks: evaluation callables ``hook(model, step) -> dict``, run after those of
            ``config.evaluate.hooks`` on every rank; rank 0's results are logged and decide ``best.pt``.
        env: the distributed environment; by default read from the torchrun variables.
    """

    def __init__(self, config: TrainConfig, *, loader_factory: LoaderFactory | None = None,
                 hooks: Sequence[EvalHook] = (), env: DistEnv | None = None) -> None:
        self.config = config
        self.loader_factory = loader_factory
        self.extra_hooks = list(hooks)
        self.env = env

    # ------------------------------------------------------------------------------------------
    # set-up

    def _build_model(self, ckpt: dict[str, Any] | None) -> GroupViT:
        # Same seed on every rank: identical initial weights (DDP would broadcast rank 0's anyway).
        seed_everything(self.config.train.seed)
        model = GroupViT(self.config.model_config())
        init = self.config.init_weights()
        if ckpt is None and init is not None:  # fine-tuning: the weights of model.init (a checkpoint's replace them)
            model.load_state_dict(init.state_dict())
        # The inference settings every checkpoint carries: the config's, else those of the weights fine-tuned.
        model.inference = dict(self.config.inference) or (dict(init.inference) if init is not None else {})
        if ckpt is not None:
            try:
                model.load_state_dict(ckpt["model"])
            except RuntimeError as err:
                raise WeightsError(f"the checkpoint does not fit the configured model: {str(err).splitlines()[0]}; "
                                   "resume with the config it was trained with") from None
        model.to(self.env.device)
        synchronize_head_batchnorm(model, self.env)
        return model

    def _restore_rng(self, ckpt: dict[str, Any]) -> None:
        states = ckpt.get("rng") or []
        if len(states) == self.env.world_size:
            restore_rng_state(states[self.env.rank])
        else:
            warnings.warn(f"checkpoint was written by {len(states)} rank(s), this run has {self.env.world_size}: "
                          "random streams are re-seeded, so the run will not repeat the original exactly",
                          stacklevel=2)

    # ------------------------------------------------------------------------------------------
    # the loop

    def fit(self, resume: str | None = None) -> TrainResult:
        """Train to ``train.epochs``; ``resume`` is None (fresh), ``"auto"`` (``latest.pt`` of the output
        directory when present) or a checkpoint path. Returns a :class:`TrainResult`.

        SIGINT or SIGTERM (main thread) lets the current step finish, writes its checkpoint and raises
        :class:`TrainingStopped`; ``--resume auto`` then continues exactly there.
        """
        owns_group = self.env is None
        if self.env is None:
            self.env = init_distributed(self.config.train.device)
        try:
            with _StopRequests() as stops:
                return self._fit(resume, stops)
        finally:
            if owns_group:
                shutdown()

    def _fit(self, resume: str | None, stops: _StopRequests) -> TrainResult:
        cfg, t, env = self.config, self.config.train, self.env
        assert env is not None
        output = Path(t.output)
        failure = None
        if env.is_main:  # an output folder that cannot be written is found now, before any step
            try:
                check_writable(output)
                save_config(cfg, output / "config.yaml")
            except StorageError as err:
                failure = str(err)
        _raise_on_any_rank(failure)
        ckpt_path = resolve_resume(resume, output)
        ckpt = load_training_checkpoint(ckpt_path) if ckpt_path is not None else None
        state = TrainState(**ckpt["train_state"]) if ckpt is not None else TrainState()

        if t.threads:
            apply_threads(t.threads)
        model = self._build_model(ckpt)
        trainable, total = apply_trainable(model, t.trainable)
        if env.is_main:
            print(f"training {trainable:,} of {total:,} parameters (train.trainable={t.trainable})", file=sys.stderr)
        objective = ContrastiveObjective(model, t.multi_label_loss_weight, t.multi_label_pooling,
                                         t.group_objectives)
        wrapped: torch.nn.Module = objective
        if env.world_size > 1:
            wrapped = wrap_ddp(objective, env)
        seed_everything(t.seed + env.rank)
        if env.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

        factory = self.loader_factory or build_loader_factory(cfg, env)
        hooks = build_hooks(cfg.evaluate.hooks) + self.extra_hooks
        accum = t.accumulation
        with isolated_rng(env.device):
            loader: TrainLoader | None = factory(state.epoch, state.batch)
        steps_per_epoch = loader.num_batches // accum
        if steps_per_epoch < 1:
            raise ConfigError(f"an epoch has {loader.num_batches} batches per rank, fewer than "
                              f"train.accumulation_steps={accum}; add data or lower the batch size")
        global_batch = int(cfg.data.get("batch_size", 256)) * env.world_size
        lrs = [scale_lr(lr, global_batch, t.accumulation_steps, t.lr_reference_batch)
               for lr in (t.base_lr, t.warmup_lr, t.min_lr)]
        schedule = WarmupCosineSchedule(base_lr=lrs[0], warmup_lr=lrs[1], min_lr=lrs[2],
                                        warmup_steps=round(t.warmup_epochs * steps_per_epoch),
                                        total_steps=t.epochs * steps_per_epoch)
        optimizer = build_optimizer(model, schedule(state.step), t.weight_decay, t.betas, t.eps)
        use_amp, amp_dtype = amp_settings(t.amp, env.device)
        scaler = torch.amp.GradScaler("cuda") if use_amp and t.amp == "fp16" else None
        if ckpt is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            self._restore_rng(ckpt)

        total_steps = t.epochs * steps_per_epoch
        end = min(total_steps, t.max_steps) if t.max_steps else total_steps
        record = data_record(cfg.data.get("sources") or [])
        if ckpt is not None and state.step < end:
            check_same_data(ckpt.get("data"), record, str(ckpt_path))
        if env.is_main and ckpt_path is not None:
            print(f"resuming from step {state.step} of {end} ({ckpt_path})" if state.step < end else
                  f"nothing to do: {ckpt_path} is at step {state.step}, the run ends at step {end}", file=sys.stderr)
        manager = CheckpointManager(output, cfg.evaluate.best_metric, cfg.evaluate.best_mode)
        if env.is_main:
            manager.remove_stale_temporaries()
        logger = MetricLogger(output, enabled=env.is_main, tensorboard=t.tensorboard)
        if ckpt is not None:
            logger.truncate_after(state.step)
        bar = tqdm(total=total_steps, initial=min(state.step, total_steps), unit="step", dynamic_ncols=True,
                   disable=not (env.is_main and t.progress) or state.step >= end, file=sys.stderr)
        image_size = model.config.vision.image_size
        result = TrainResult(step=state.step, model=model)
        window = _Window()
        model.train()
        keep_frozen_batchnorm(model)

        def evaluate(epoch: int) -> dict[str, float]:
            if not hooks:
                return {}
            model.eval()
            metrics: dict[str, float] = {}
            with isolated_rng(env.device), torch.no_grad():
                for hook in hooks:
                    metrics.update(hook(model, state.step) or {})
            model.train()
            keep_frozen_batchnorm(model)
            metrics = broadcast_object(metrics)
            logger.log({"step": state.step, "epoch": epoch, **metrics}, kind="eval")
            result.metrics = metrics
            return metrics

        def checkpoint(metrics: Mapping[str, float]) -> None:
            best = manager.is_improvement(metrics, state.best_metric)
            if best:
                state.best_metric = float(metrics[str(manager.best_metric)])
            rng = all_gather_object(capture_rng_state())
            failure = None
            if env.is_main:
                try:
                    result.checkpoint = manager.save(model, best=best, optimizer=optimizer, scaler=scaler,
                                                     state=state, rng=rng, config=cfg.to_dict(), data=record)
                except StorageError as err:  # a run that cannot checkpoint stops: hours with nothing saved help nobody
                    failure = (f"training stopped at step {state.step}: {err}; --resume auto continues from the last "
                               "checkpoint")
            _raise_on_any_rank(failure)

        def log(epoch: int, batch: int, lr: float, grad_norm: torch.Tensor | None, skipped: int) -> None:
            nonlocal window
            assert window.sums is not None
            means = (all_reduce_mean(window.sums / window.micro_batches)).tolist()
            images = int(all_reduce_sum(torch.tensor(window.images, dtype=torch.float64)).item())
            elapsed = max(time.perf_counter() - window.started, 1e-9)
            record: dict[str, Any] = {
                "step": state.step, "epoch": epoch, "batch": batch, "loss": means[0], "itc": means[1],
                "multi_label": means[2] if model.config.multi_label > 0 else None, "lr": lr,
                "scale": model.scale().item(),
                "multi_label_scale": model.scale(multi_label=True).item() if model.config.multi_label > 0 else None,
                "grad_norm": grad_norm.item() if grad_norm is not None else None,
                "images_per_s": images / elapsed,
                "skipped": int(all_reduce_sum(torch.tensor(skipped, dtype=torch.float64)).item()),
                **dict(zip(objective.group_weights, means[3:], strict=True)),
            }
            logger.log(record)
            bar.set_postfix(loss=f"{means[0]:.4f}", lr=f"{lr:.2e}", img_s=f"{images / elapsed:.1f}")
            result.losses = {"loss": means[0], "itc": means[1], "multi_label": means[2]}
            window = _Window()

        stopping = False

        def stop_signal() -> int:
            """The signal to stop for (0: none); ranks agree, so that all of them checkpoint at the same step."""
            signum = stops.signum or 0
            if env.world_size > 1 and all_reduce_sum(torch.tensor(float(signum > 0), device=env.device)).item():
                signum = signum or int(signal.SIGTERM)
            return signum

        try:
            for epoch in range(state.epoch, t.epochs):
                if t.max_steps and state.step >= t.max_steps:
                    break
                start = state.batch if epoch == state.epoch else 0
                if loader is None:
                    with isolated_rng(env.device):
                        loader = factory(epoch, start)
                if loader.num_batches // accum != steps_per_epoch:
                    raise ConfigError(f"epoch {epoch} has {loader.num_batches} batches per rank, epoch lengths "
                                      f"must stay constant ({steps_per_epoch * accum})")
                with isolated_rng(env.device):
                    batches = iter(loader)
                lr, grad_norm = schedule(state.step), None
                for b in range(start, steps_per_epoch * accum):
                    with isolated_rng(env.device):
                        batch = next(batches, None)
                    if batch is None:
                        raise InputError(f"the data loader stopped after {b} of {loader.num_batches} batches "
                                         f"of epoch {epoch}")
                    images = batch["images"].to(env.device, non_blocking=True)
                    texts = batch["texts"].to(env.device, non_blocking=True)
                    words = batch["prompt_words"].to(env.device) if t.multi_label_targets == "words" else None
                    if tuple(images.shape[-2:]) != (image_size, image_size):
                        raise InputError(f"the loader gives {tuple(images.shape[-2:])} images but the model trains at "
                                         f"{image_size}x{image_size}; set the data image size to {image_size}")
                    micro = b % accum
                    if micro == 0:
                        lr = schedule.apply(optimizer, state.step)
                    last_micro = micro == accum - 1
                    sync = contextlib.nullcontext() if last_micro or wrapped is objective else wrapped.no_sync()
                    with sync:
                        with torch.autocast(env.device.type, dtype=amp_dtype, enabled=use_amp):
                            out = wrapped(images, texts, words)
                        if not bool(torch.isfinite(out.total)):
                            # Stop before the update: the weights and the last checkpoint stay finite.
                            raise DivergenceError(
                                f"loss is {out.total.item()} at step {state.step + 1}; lower train.base_lr or "
                                "resume from the last checkpoint with another seed")
                        loss = out.total / accum
                        (scaler.scale(loss) if scaler is not None else loss).backward()
                    window.add(out, images.shape[0])
                    if not last_micro:
                        continue

                    if scaler is not None:
                        scaler.unscale_(optimizer)
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad) \
                        if t.clip_grad > 0 else None
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    state.step += 1
                    state.epoch, state.batch = epoch, b + 1
                    bar.update(1)
                    if b + 1 == steps_per_epoch * accum:
                        break  # the epoch-end block logs, evaluates and checkpoints
                    stopping = bool(t.max_steps) and state.step >= t.max_steps
                    if (t.log_every and state.step % t.log_every == 0) or (stopping and window.micro_batches):
                        log(epoch, b + 1, lr, grad_norm, getattr(loader, "skipped", 0))
                    metrics = evaluate(epoch) if t.eval_every and state.step % t.eval_every == 0 else {}
                    ckpt_due = bool(t.ckpt_every) and state.step % t.ckpt_every == 0
                    signalled = stop_signal()
                    if ckpt_due or stopping or signalled or manager.is_improvement(metrics, state.best_metric):
                        checkpoint(metrics)
                    if signalled:
                        raise TrainingStopped(signalled, state.step, result.checkpoint)
                    if stopping:
                        break
                if stopping:
                    break  # stopped inside the epoch: its checkpoint holds the data position

                skipped = getattr(loader, "skipped", 0)
                loader = None
                state.epoch, state.batch = epoch + 1, 0
                if window.micro_batches:
                    log(epoch, steps_per_epoch * accum, lr, grad_norm, skipped)
                due = cfg.evaluate.at_epoch_end or (t.eval_every and state.step % t.eval_every == 0)
                checkpoint(evaluate(epoch) if due else {})
        finally:
            bar.close()
            logger.close()
        result.step = state.step
        return result
