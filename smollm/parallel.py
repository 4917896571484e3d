"""How one run's model is spread over its ranks: DDP (the default; every rank a whole copy) or
FSDP2 (`train.parallel: fsdp`; parameters, gradients and optimizer state sharded).

As in torchtitan, the parallelism is applied to a plain model after it is built, so `model.py`
never learns about it: `fully_shard` per decoder block, then the root, which holds the embeddings,
the final norm and the tied output layer as one unit. On CUDA the shards compute in bf16 and
reduce gradients in fp32; on CPU (gloo) everything stays fp32. Checkpoints hold the full, unsharded
model and optimizer state in the plain format a one-process run writes, so a run saved at one
world size resumes at another (an FSDP run at world size 1 resumes with `train.parallel: ddp`).
"""

from __future__ import annotations

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from smollm.config import SmolError

PARALLEL = ("ddp", "fsdp")
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def check_parallel(parallel: str, world_size: int) -> None:
    """FSDP shards over ranks: it needs a distributed launch (torchrun or srun -n N)."""
    if parallel == "fsdp" and world_size == 1:
        raise SmolError(
            "train.parallel=fsdp needs a distributed launch (torchrun --nproc_per_node N, or "
            "srun -n N); one process trains with train.parallel=ddp, and resumes an FSDP run"
        )


def shard(model: torch.nn.Module, device: torch.device, amp: torch.dtype | None) -> None:
    """FSDP2 in place: each decoder block its own unit, then the root (embeddings, final norm and
    the tied output layer together). Before the optimizer is built: it must see the shards."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=amp, reduce_dtype=torch.float32) if amp else None
    kwargs = {"mesh": mesh, **({"mp_policy": policy} if policy else {})}
    for block in model.model.layers:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The whole model and optimizer state, as a one-process run holds them (a collective under
    FSDP: every rank calls it; the full tensors land on rank 0's CPU, the others get {})."""
    if not is_sharded(model):
        return model.state_dict(), optimizer.state_dict()
    weights = get_model_state_dict(model, options=FULL)
    named = get_optimizer_state_dict(model, optimizer, options=FULL)
    if "param_groups" not in named:  # ranks other than 0 receive nothing (they save nothing)
        return weights, named
    ids: dict[str, int] = {}  # parameter names -> the positions a plain optimizer numbers them by
    groups = [{**g, "params": [ids.setdefault(n, len(ids)) for n in g["params"]]}
              for g in named["param_groups"]]  # fmt: skip
    return weights, {
        "state": {ids[n]: s for n, s in named["state"].items()},
        "param_groups": groups,
    }


def load_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, weights: dict,
                    optim: dict) -> None:  # fmt: skip
    """The inverse of full_state: a plain checkpoint into a plain or a sharded model."""
    if not is_sharded(model):
        model.load_state_dict(weights)
        optimizer.load_state_dict(optim)
        return
    set_model_state_dict(model, weights, options=FULL)
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    named = {"state": {order[i]: s for i, s in optim["state"].items()},
             "param_groups": [{**g, "params": [order[i] for i in g["params"]]}
                              for g in optim["param_groups"]]}  # fmt: skip
    set_optimizer_state_dict(model, optimizer, named, options=FULL)


def whole_copy(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """An unsharded model of the same config on `device` (the main rank's copy for evaluation
    and sampling, which must not run the sharded model alone); fill it with `gather_into`."""
    from smollm.model import SmolLM

    return SmolLM(model.config).to(device).eval()


def gather_into(model: torch.nn.Module, copy: torch.nn.Module | None) -> None:
    """The sharded model's current weights into `copy` (a collective: every rank calls it; only
    the main rank has a copy)."""
    weights = get_model_state_dict(model, options=FULL)
    if copy is not None:
        copy.load_state_dict(weights)
