"""One trainer over several processes (``accelerate launch`` / ``torchrun``).

Rank 0 is the trainer the single-process worker is: it alone reads pairs from
the bus, decides each version, writes it and publishes it. The other ranks
only train: rank 0 sends them each version's inputs, and every rank runs the
same DPO step under DDP (only the main process saves). Between versions rank 0
sends a heartbeat every poll, so the others never sit in a collective call
for longer than the process group's timeout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparring.config import TrainerConfig
from sparring.schemas import PreferencePair
from sparring.training.dpo import TrainingDiverged, train_version


@dataclass
class Ranks:
    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> Ranks:
        """The launcher's WORLD_SIZE/RANK; with more than one process, the process
        group is set up (NCCL on CUDA, gloo on a CPU) through accelerate."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
        return cls(rank=state.process_index, world_size=state.num_processes)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def send(self, message: tuple[Any, ...]) -> None:
        """Rank 0: hand ``message`` to every other rank (no-op alone)."""
        if self.world_size > 1:
            self._broadcast(message)

    def close(self) -> None:
        """Leave the process group together; a rank exiting with it still up can
        abort at interpreter shutdown ("terminate called without an active
        exception") and fail the whole launch."""
        if self.world_size <= 1:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def receive(self) -> tuple[Any, ...]:
        return self._broadcast(None)

    def _broadcast(self, message: tuple[Any, ...] | None) -> tuple[Any, ...]:
        import torch.distributed as dist

        box: list[Any] = [message]
        dist.broadcast_object_list(box, src=0)
        return tuple(box[0])


def follow(ranks: Ranks, log: Any) -> int:
    """A non-zero rank's loop: train what rank 0 sends until it says stop;
    returns how many versions it helped train."""
    done = 0
    log.info("trainer.rank_started", rank=ranks.rank, world_size=ranks.world_size)
    while True:
        kind, *body = ranks.receive()
        if kind == "stop":
            return done
        if kind != "train":
            continue  # a heartbeat
        base, pairs, out_dir, cfg, seed, adapter_from = body
        try:
            train_version(
                base,
                [PreferencePair.model_validate(p) for p in pairs],
                Path(out_dir),
                TrainerConfig.model_validate(cfg),
                seed=seed,
                adapter_from=Path(adapter_from) if adapter_from else None,
            )
        except TrainingDiverged:
            continue  # rank 0 saw it too: it refuses the pairs and goes on
        done += 1
