"""Two CPU processes (gloo) against one process holding the concatenated batch.

The processes are started with ``torch.multiprocessing.spawn`` and a ``file://`` rendezvous. The
``tiny`` model runs with ``vision.gumbel=False`` (and no DropPath): Gumbel noise is drawn per
forward from each rank's own generator, so with it on the two layouts would see different noise;
without it the forward is deterministic and every difference would come from the distributed code
(gathering, the global-batch BatchNorm of the heads, DDP averaging). Both layouts compute in float64:
at random initialisation the tiny model's gradients reach a few hundred, where float32 rounding of
differently ordered sums alone exceeds the 1e-5 tolerance.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import groupvit
from groupvit.train.config import TrainConfig
from groupvit.train.distributed import AllReduceBatchNorm1d, DistEnv, synchronize_head_batchnorm, wrap_ddp
from groupvit.train.losses import ContrastiveObjective
from groupvit.train.random_data import RandomPairsLoader
from groupvit.train.trainer import Trainer

WORLD = 2
BATCH = 8  # global; 4 per rank
TOL = 1e-5


def _model() -> groupvit.GroupViT:
    torch.manual_seed(0)
    return groupvit.create_model("tiny", vision__gumbel=False, vision__drop_path_rate=0.0).double()


def _batches() -> list[dict[str, torch.Tensor]]:
    loader = RandomPairsLoader(size=2 * BATCH, batch_size=BATCH, image_size=32, multi_label=3, seed=3)
    return [{"images": b["images"].double(), "texts": b["texts"]} for b in loader]


def _two_steps(objective: nn.Module, model: groupvit.GroupViT, batches, part: slice) -> list[dict]:
    """Two forward/backward/update steps; the losses, gradients and BN buffers after each.

    The update is plain SGD: Adam divides by the gradient's running RMS, which turns float rounding in
    near-zero gradients into lr-sized steps and would hide real differences behind that noise.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    records = []
    for batch in batches:
        out = objective(batch["images"][part], batch["texts"][part])
        out.total.backward()
        records.append({
            "total": out.total.detach(), "itc": out.itc.detach(), "multi_label": out.multi_label.detach(),
            "grads": {n: p.grad.detach().clone() for n, p in model.named_parameters()},
        })
        optimizer.step()
        optimizer.zero_grad()
        records[-1]["buffers"] = {n: b.clone() for n, b in model.named_buffers()}
    records.append({"params": {n: p.detach().clone() for n, p in model.named_parameters()}})
    return records


def _bn_uneven(rank: int) -> dict[str, torch.Tensor]:
    """AllReduceBatchNorm1d with 3 rows on rank 0 and 5 on rank 1; loss = sum(out * weights)."""
    torch.manual_seed(1)
    x, weights = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 6, dtype=torch.float64)
    rows = slice(0, 3) if rank == 0 else slice(3, 8)
    bn = AllReduceBatchNorm1d(6).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    local = x[rows].clone().requires_grad_(True)
    out = bn(local)
    (out * weights[rows]).sum().backward()
    return {"out": out.detach(), "grad": local.grad, "mean": bn.running_mean, "var": bn.running_var}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        env = DistEnv(rank=rank, world_size=WORLD, local_rank=rank, device=torch.device("cpu"), backend="gloo")
        model = _model()
        synchronize_head_batchnorm(model, env)
        objective = wrap_ddp(ContrastiveObjective(model), env)
        per_rank = BATCH // WORLD
        records = _two_steps(objective, model, _batches(), slice(rank * per_rank, (rank + 1) * per_rank))
        head_bn = type(model.image_projector.bn).__name__
        bn = _bn_uneven(rank)

        # The trainer itself under two ranks: a short run from a generated source.
        cfg = TrainConfig.from_dict({
            "model": {"preset": "tiny"},
            "data": {"sources": [{"type": "random", "size": 16}], "batch_size": 4},
            "train": {"epochs": 1, "warmup_epochs": 0.5, "base_lr": 1.0, "amp": "none", "device": "cpu",
                      "log_every": 1, "ckpt_every": 1, "output": str(Path(out_dir) / "run"),
                      "tensorboard": False, "progress": False},
        })
        result = Trainer(cfg, env=env).fit()
        ckpt = torch.load(Path(out_dir) / "run" / "latest.pt", weights_only=True)
        torch.save({"records": records, "head_bn": head_bn, "bn": bn, "trainer_step": result.step,
                    "trainer_rng_ranks": len(ckpt["rng"]), "trainer_state": result.model.state_dict()},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(str(tmp / "rendezvous"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.fixture(scope="module")
def single() -> list[dict]:
    model = _model()
    return _two_steps(ContrastiveObjective(model), model, _batches(), slice(0, BATCH))


def test_heads_use_global_batchnorm_under_gloo(ranks):
    assert [r["head_bn"] for r in ranks] == ["AllReduceBatchNorm1d"] * WORLD


@pytest.mark.parametrize("step", [0, 1])
def test_losses_match_one_process(ranks, single, step):
    # Each rank's loss covers its own rows; their mean is the loss over the whole batch.
    for key in ("total", "itc", "multi_label"):
        mean = sum(r["records"][step][key] for r in ranks) / WORLD
        assert abs(mean.item() - single[step][key].item()) <= TOL, key


@pytest.mark.parametrize("step", [0, 1])
def test_gradients_match_one_process(ranks, single, step):
    expected = single[step]["grads"]
    for r in ranks:
        grads = r["records"][step]["grads"]
        assert grads.keys() == expected.keys()
        worst = max((grads[n] - expected[n]).abs().max().item() for n in expected)
        assert worst <= TOL, worst
    # Both temperatures and the global-batch BN parameters get their gradient through every rank.
    assert expected["multi_label_logit_scale"].abs().item() > 0
    assert expected["text_projector.bn.weight"].abs().max().item() > 0


@pytest.mark.parametrize("step", [0, 1])
def test_batchnorm_statistics_match_one_process(ranks, single, step):
    expected = single[step]["buffers"]
    for r in ranks:
        for name, value in expected.items():
            got = r["records"][step]["buffers"][name]
            assert torch.allclose(got.double(), value.double(), atol=TOL, rtol=0), name


def test_weights_after_two_steps_match_one_process(ranks, single):
    expected = single[-1]["params"]
    for r in ranks:
        worst = max((r["records"][-1]["params"][n] - expected[n]).abs().max().item() for n in expected)
        assert worst <= TOL, worst


def test_allreduce_batchnorm_matches_full_batchnorm(ranks):
    torch.manual_seed(1)
    x, weights = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 6, dtype=torch.float64)
    bn = nn.BatchNorm1d(6).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    full = x.clone().requires_grad_(True)
    out = bn(full)
    (out * weights).sum().backward()
    got_out = torch.cat([ranks[0]["bn"]["out"], ranks[1]["bn"]["out"]])
    got_grad = torch.cat([ranks[0]["bn"]["grad"], ranks[1]["bn"]["grad"]])
    torch.testing.assert_close(got_out, out.detach(), atol=TOL, rtol=0)
    torch.testing.assert_close(got_grad, full.grad, atol=TOL, rtol=0)
    for r in ranks:  # unbiased running variance over all 8 rows, as SyncBatchNorm
        torch.testing.assert_close(r["bn"]["mean"], bn.running_mean, atol=TOL, rtol=0)
        torch.testing.assert_close(r["bn"]["var"], bn.running_var, atol=TOL, rtol=0)


def test_trainer_keeps_ranks_in_sync(ranks):
    # 16 samples over 2 ranks of 4 per batch: 2 steps; weights and BN buffers identical on both ranks.
    assert [r["trainer_step"] for r in ranks] == [2, 2]
    assert ranks[0]["trainer_rng_ranks"] == WORLD  # one generator state per rank in the checkpoint
    for name, value in ranks[0]["trainer_state"].items():
        assert torch.equal(value, ranks[1]["trainer_state"][name]), name
