"""Blocks read as training goes (`--streaming`): a `datasets.IterableDataset` of texts, packed on the fly,
whose position is part of each checkpoint, so a resumed run sees exactly the blocks it would have seen.

`datasets` keeps the position of a stream (`state_dict()`: the file and row it reached, the packing
batch it is in and how many of its blocks were taken, the mixing generator's state) and continues from
it (`load_state_dict()`) without re-reading what came before. `BlockStream` adds the epochs: a stream
read to its end starts again from the top, the way a cached corpus does. With several processes each
reads its own shard (`shard`), and every process's position is saved.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch


def shard(stream, accelerator):
    """This process's share of `stream`: with several processes, each reads its own (whole files where the
    corpus has a multiple of the processes' number of files, else every Nth block), so that none is read
    twice and none skipped across ranks. A mixture shards each corpus before mixing them, and so keeps its
    shares on every rank. The position (`state_dict`) is this process's own."""
    if accelerator.num_processes == 1:
        return stream
    from datasets.distributed import split_dataset_by_node

    return split_dataset_by_node(stream, rank=accelerator.process_index, world_size=accelerator.num_processes)


class BlockStream(torch.utils.data.IterableDataset):
    """The training blocks of a streamed run; `make()` opens the stream at its start."""

    def __init__(self, make: Callable[[], object]):
        self.make = make
        self.epoch = 0  # passes finished
        self.current = None  # the stream being read
        self.restart_at: dict | None = None  # a checkpoint's position, for the next __iter__

    def __iter__(self):
        stream = self.make()
        from_top, empty = self.restart_at is None, True
        if self.restart_at is not None:
            stream.load_state_dict(self.restart_at)
            self.restart_at = None
        self.current = stream
        for block in stream:
            empty = False
            yield block
        if empty and from_top:  # a pass from the top with no block: the loop would wait forever for a batch
            from nlptl.errors import NlptlError

            raise NlptlError("the streamed corpus gave no training block in a whole pass; check --corpus "
                             "(and --max-eval-blocks, which takes the first blocks)")
        self.epoch += 1

    def state_dict(self) -> dict:
        """Where the stream is: what a checkpoint saves. Exact at a step boundary (the loader reads no
        batch ahead: no workers, no prefetch)."""
        position = self.current.state_dict() if self.current is not None else None
        return {"epoch": self.epoch, "position": copy.deepcopy(position)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.restart_at = state["epoch"], state["position"]
