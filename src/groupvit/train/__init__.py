"""Training GroupViT: losses, distributed helpers, optimizer and schedule, checkpoints, the loop.

Nothing here is imported by the model package; ``import groupvit`` does not load it.

    from groupvit.train import Trainer, load_config
    Trainer(load_config("configs/tiny-cpu.yaml", ["train.epochs=1"])).fit(resume="auto")
"""

from groupvit.train.checkpoint import CheckpointManager, TrainState, load_training_checkpoint
from groupvit.train.config import EvaluateSection, TrainConfig, TrainSection, load_config, save_config
from groupvit.train.distributed import AllReduceBatchNorm1d, DistEnv, init_distributed
from groupvit.train.losses import ContrastiveObjective, GroupViTLoss, LossOutput, multi_label_targets
from groupvit.train.optim import WarmupCosineSchedule, build_optimizer, scale_lr, weight_decay_groups
from groupvit.train.trainer import EvalHook, LoaderFactory, Trainer, TrainLoader, TrainResult

__all__ = [
    "AllReduceBatchNorm1d", "CheckpointManager", "ContrastiveObjective", "DistEnv", "EvalHook", "EvaluateSection",
    "GroupViTLoss", "LoaderFactory", "LossOutput", "TrainConfig", "TrainLoader", "TrainResult", "TrainSection",
    "TrainState", "Trainer", "WarmupCosineSchedule", "build_optimizer", "init_distributed", "load_config",
    "load_training_checkpoint", "multi_label_targets", "save_config", "scale_lr", "weight_decay_groups",
]
