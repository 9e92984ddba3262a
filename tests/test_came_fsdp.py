"""CAME / CAME-8bit on FSDP2 (`fully_shard`) DTensor parameters, on 2 CPU ranks with gloo."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.fsdp import fully_shard

from sana_lightning.optim import CAME, CAME8bit


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 128), nn.GELU(), nn.Linear(128, 8))


def batch(step: int):
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(step))
    return x, torch.sin(x[:, :8])


def train(net, optimizer, steps, start=0):
    for step in range(start, start + steps):
        x, y = batch(step)
        loss = nn.functional.mse_loss(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def full_params(net) -> list[torch.Tensor]:
    return [(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone() for p in net.parameters()]


def worker(rank: int, port: int, directory: str, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        for name, cls in (("came", CAME), ("came8bit", CAME8bit)):
            net = model()
            for layer in net:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer)
            fully_shard(net)
            kwargs = {"min_8bit_size": 4096} if cls is CAME8bit else {}
            optimizer = cls(net.parameters(), lr=1e-3, **kwargs)
            train(net, optimizer, 5)
            # Round trip of the sharded state through torch.distributed.checkpoint (as Lightning's FSDP strategies
            # save it) into a fresh optimizer gives the same next steps.
            dcp.save({"optimizer": get_optimizer_state_dict(net, optimizer)}, checkpoint_id=f"{directory}/{name}")
            net.zero_grad(set_to_none=True)
            fresh = cls(net.parameters(), lr=1e-3, **kwargs)
            loaded = {"optimizer": get_optimizer_state_dict(net, fresh)}
            dcp.load(loaded, checkpoint_id=f"{directory}/{name}")
            set_optimizer_state_dict(net, fresh, loaded["optimizer"])
            snapshot = [p.detach().clone() for p in net.parameters()]
            train(net, optimizer, 2, start=5)
            continued = full_params(net)
            with torch.no_grad():
                for p, s in zip(net.parameters(), snapshot):
                    p.copy_(s)
            train(net, fresh, 2, start=5)
            results[(name, rank)] = (continued, full_params(net))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def fsdp_results(tmp_path_factory):
    manager = mp.Manager()
    results = manager.dict()
    directory = str(tmp_path_factory.mktemp("dcp"))
    mp.spawn(worker, args=(free_port(), directory, results), nprocs=2, join=True)
    return dict(results)


def test_came_under_fsdp2_matches_single_process_came(fsdp_results):
    net = model()
    train(net, CAME(net.parameters(), lr=1e-3), 7)
    sharded, _ = fsdp_results[("came", 0)]
    for a, b in zip(sharded, net.parameters()):
        torch.testing.assert_close(a, b.detach(), atol=1e-5, rtol=1e-4)  # factored stats of the full matrices


def test_came_8bit_under_fsdp2_trains_close_to_single_process_and_round_trips(fsdp_results):
    net = model()
    train(net, CAME8bit(net.parameters(), lr=1e-3, min_8bit_size=4096), 7)
    for name in ("came", "came8bit"):
        for rank in (0, 1):
            continued, resumed = fsdp_results[(name, rank)]
            for a, b in zip(continued, resumed):
                assert torch.equal(a, b)
    sharded, _ = fsdp_results[("came8bit", 0)]
    for a, b in zip(sharded, net.parameters()):
        assert (a - b.detach()).norm() <= 0.05 * b.norm()  # shard-local blocks quantise slightly differently
