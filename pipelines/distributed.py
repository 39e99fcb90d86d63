"""The process group of a training run (or a single process): rank, world size, device and the
reductions the training loop needs (DistributedDataParallel under ``torchrun``)."""

from __future__ import annotations

import os

import torch


class Dist:
    """The process group (or a single process): rank, world size, device, reductions."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.initialised = False
        if torch.cuda.is_available() and os.environ.get("BRUNO_DEVICE", "") != "cpu":
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.world > 1:
            import torch.distributed as dist

            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
            self.initialised = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        if not self.initialised:
            return values
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def any(self, flag: bool) -> bool:
        return self.sum([1.0 if flag else 0.0])[0] > 0

    def wrap(self, model):
        """``model`` for training: itself, or its DistributedDataParallel wrapper under DDP."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            model, device_ids=None if self.device.type == "cpu" else [self.device]
        )

    def barrier(self):
        if self.initialised:
            import torch.distributed as dist

            dist.barrier()

    def close(self):
        if self.initialised:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.initialised = False
