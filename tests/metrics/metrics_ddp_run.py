"""Two CPU processes (gloo) update the metrics with DistributedSampler-style shards; each rank writes
what compute() returned to <out>/rank<k>.json. Run by test_metric_ddp.py as a subprocess:

    python tests/metrics/metrics_ddp_run.py <out_dir> <port>
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from amad.metrics import CaptionMetrics, TranslationBLEU, VQAAccuracy, metric_dict

PREDS = ["red", "a blue circle", "two dogs in the snow", "Ein roter Kreis.", "yes"]
REFS = [
    ["red"],
    ["a blue circle", "the circle is blue"],
    ["two dogs play in snow", "dogs in snow"],
    ["Ein roter Kreis oben."],
    ["no", "yes", "yes"],
]
IDS = [10, "b", 12, 13, 14]


def shards(world: int, n: int) -> list[list[int]]:
    """DistributedSampler(shuffle=False, drop_last=False): pad to a multiple of world by repeating."""
    idx = list(range(n))
    total = -(-n // world) * world
    idx += idx[: total - n]
    return [idx[r:total:world] for r in range(world)]


def make_metrics(**kwargs):
    return {
        "vqa": VQAAccuracy(**kwargs),
        "caption": CaptionMetrics(tokenizer="simple", **kwargs),
        "bleu": TranslationBLEU(**kwargs),
    }


def run(rank: int, world: int, out: str, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    result = {}
    mine = shards(world, len(PREDS))[rank]
    for name, m in make_metrics().items():
        for j in range(0, len(mine), 2):  # batches of 2
            b = mine[j : j + 2]
            m.update([PREDS[i] for i in b], [REFS[i] for i in b], ids=[IDS[i] for i in b])
        result[name] = metric_dict(m)
    # A rank that saw nothing: rank 1 adds no batch at all.
    m = VQAAccuracy()
    if rank == 0:
        m.update(PREDS, REFS, ids=IDS)
    result["vqa_one_rank"] = metric_dict(m)
    # After compute, local state is restored (unsynced): updating again keeps working. Every rank
    # must call compute() the same number of times (it is a collective), so both add a batch.
    m.update(["red"], [["red"]], ids=[99])
    result["vqa_again"] = metric_dict(m)
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    mp.spawn(run, args=(2, sys.argv[1], int(sys.argv[2])), nprocs=2, join=True)
