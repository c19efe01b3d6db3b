"""Several processes (`torchrun`): who owns which problems, where ranks meet, who writes.

Not part of the paper's algorithm (the paper trained on 8 GPUs; this is how the same loop runs on
N processes). torch.distributed does the communication; this file is the plumbing that train.py
needs around it, so that `train_step` still reads as the paper's loop:

- `python train.py` is one process with no process group: every function here is then the
  identity (returns its input untouched), so a one-process run computes exactly what it did
  before this file existed.
- `torchrun --nproc_per_node N train.py` starts N processes (ranks). --problems-per-step stays
  the global batch: rank r owns a contiguous share of the step's problems, whole groups of G, so
  group advantages never need communication (`share`).
- The update's gradients are summed across ranks with an explicit all-reduce (`sum_grads`),
  after every micro-batch weight was computed with the *global* row and token counts
  (`total`): the sum over ranks is then the one-process gradient of the union batch, for every
  loss aggregation. Why not DistributedDataParallel: DDP all-reduces inside each backward and
  needs the same number of backward calls on every rank, but update() cuts each rank's rows
  into token-budgeted micro-batches (and skips zero-advantage rows), so the counts differ; DDP
  would also hide the model behind a wrapper that model.sample and lora.BaseModel would have to
  see through. One all-reduce after the micro-batches is the same arithmetic, said in one line.
- After the update each rank writes the summaries of its own problems; then the step's
  problems, rollouts, rewards and summaries are gathered to every rank in rank order
  (`gather`), so every rank grows the same pool and retrieves the same contexts next step.
- Rank 0 alone writes into the run directory (metrics, samples, pool, checkpoints,
  evaluations); `is_main` says who that is. Evaluation runs on rank 0 alone (the others wait at
  the next collective): simpler than splitting it, and evaluation draws nothing from the run's
  random streams, so the ranks stay in step.
- Seeds: one --seed; rank 0 draws from the seed itself (so N = 1 is the one-process run) and
  rank r > 0 from a seed derived from (seed, r) (`rank_seed`).
- Backends: nccl on CUDA (each rank on cuda:LOCAL_RANK), gloo on the CPU.

Multi-node runs need the run directory on a filesystem every node sees (resume reads the
checkpoint on every rank); only one node has been tried, on the CPU.
"""
import dataclasses
import datetime
import hashlib
import math
import os
import sys
import traceback
from contextlib import contextmanager

import torch
import torch.distributed as dist

from support.errors import UserError

# A rank waits at the next collective while rank 0 alone evaluates or writes a checkpoint: give
# that room (torch's nccl default is 10 minutes). A crashed rank does not wait for this:
# torchrun stops the others as soon as one process fails.
TIMEOUT = datetime.timedelta(hours=2)


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init(device: str) -> str:
    """Join the process group when torchrun started us (it sets WORLD_SIZE, RANK, LOCAL_RANK,
    MASTER_ADDR/PORT); returns the device this rank computes on. A plain `python train.py`
    creates no process group and keeps the device it was given."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or distributed():
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:   # each rank owns one GPU: --device auto, cuda or cuda:K become cuda:LOCAL_RANK
        device = f"cuda:{local}"
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return device


def _device():
    """Where the small tensors of `total` and `sum_grads` live: nccl reduces CUDA tensors
    only (on this rank's GPU), gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def close():
    if distributed():
        dist.destroy_process_group()


def rank_seed(seed: int) -> int:
    """Rank 0 keeps --seed (a one-process run is rank 0 of one); rank r > 0 gets a seed derived
    from (seed, r) by a hash, so no two ranks and no two --seed values share a stream."""
    r = rank()
    if r == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}/rank{r}".encode()).digest()[:7], "big")


# --- Where ranks meet -----------------------------------------------------------------------

class PeerFailed(Exception):
    """A collective failed, almost always because another rank died (gloo: "Connection closed
    by peer"); that rank's own error says why, so this rank stops without a second error."""


@contextmanager
def _meeting(where: str):
    try:
        yield
    except RuntimeError as e:
        raise PeerFailed(f"{where}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from e


def share(items: list) -> list:
    """This rank's contiguous share of rank 0's list (the step's problems): every rank drew the
    list from its own stream, rank 0's draw is the step's. Shares differ by at most one item
    when N does not divide the list (the gradient stays exact: see `total`)."""
    if not distributed():
        return items
    box = [items]
    with _meeting("the step's problems"):
        dist.broadcast_object_list(box, src=0)
    items, r, n = box[0], rank(), world_size()
    return items[r * len(items) // n:(r + 1) * len(items) // n]


def gather(record):
    """The whole step, on every rank: a dataclass whose fields are this rank's per-item lists
    (or None, the same on every rank) comes back with every rank's lists concatenated in rank
    order. One process: the record itself."""
    if not distributed():
        return record
    names = [f.name for f in dataclasses.fields(record)]
    mine = [getattr(record, n) for n in names]
    everyone = [None] * world_size()
    with _meeting("the gathered step"):
        dist.all_gather_object(everyone, mine)
    return dataclasses.replace(record, **{
        n: None if mine[i] is None else [x for part in everyone for x in part[i]]
        for i, n in enumerate(names)})


def gather_objects(obj, what="the checkpoint's random streams"):
    """Every rank's `obj`, in rank order, on every rank (the random streams a checkpoint holds;
    the placebo bank's share of each rank)."""
    if not distributed():
        return [obj]
    everyone = [None] * world_size()
    with _meeting(what):
        dist.all_gather_object(everyone, obj)
    return everyone


def total(*numbers: float) -> list:
    """Sums over ranks (float64, so counts of tokens stay exact); one process: the numbers."""
    if not distributed():
        return list(numbers)
    t = torch.tensor(numbers, dtype=torch.float64, device=_device())
    with _meeting("a sum over ranks"):
        dist.all_reduce(t)
    return [type(x)(v) for x, v in zip(numbers, t.tolist())]


def sum_grads(params):
    """Sum every parameter's gradient over ranks, in place. A rank whose rows all had zero
    advantage has no gradient (None): it adds zeros, unless no rank has one (then the
    parameter keeps None and the optimizer skips it, as in one process). One all-reduce per
    parameter: no flat copy of every gradient (that copy is a model's worth of memory)."""
    if not distributed():
        return
    params = [p for p in params if p.requires_grad]
    has = torch.tensor([float(p.grad is not None) for p in params], device=_device())
    with _meeting("the gradient all-reduce"):
        dist.all_reduce(has)
        for p, h in zip(params, has.tolist()):
            if h == 0:
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)


def barrier():
    if distributed():
        with _meeting("the start"):
            dist.barrier()


class LossTotals:
    """What the update sums over ranks: the whole step's rows and tokens (every micro-batch's
    loss weight divides by them, so the gradients summed over ranks are the union batch's),
    each inner epoch's loss (every rank skips a non-finite update, or none does), and the
    step's loss statistics. One process: the plain sums."""
    KEYS = ("loss", "pg_loss", "kl", "clip_frac", "ratio", "is_weight")

    def __init__(self, response_mask):
        self.counts = total(response_mask.shape[0], int(response_mask.sum()))
        self.weighted, self.epoch_loss = [], 0.0

    def add(self, weight, stats):
        self.weighted.append((weight, stats))
        self.epoch_loss += weight * stats["loss"]

    def epoch_is_finite(self, grad_norm) -> bool:
        epoch_loss, = total(self.epoch_loss)
        self.epoch_loss = 0.0
        return math.isfinite(epoch_loss) and bool(torch.isfinite(grad_norm))

    def result(self, grad_norm) -> dict:
        """Weighted means over every micro-batch of every epoch and rank, and the last norm."""
        total_w, *sums = total(sum(w for w, _ in self.weighted),
                               *(sum(w * s[k] for w, s in self.weighted) for k in self.KEYS))
        if not total_w:   # every A_i was 0 and beta = 0: nothing to learn this step
            return {"loss": 0.0, "pg_loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "ratio": 1.0,
                    "grad_norm": 0.0}
        return {**{k: v / total_w for k, v in zip(self.KEYS, sums)}, "grad_norm": float(grad_norm)}


# --- Errors -----------------------------------------------------------------------------------

def run_cli(main, argv=None):
    """errors.run_cli for N processes: a rank that fails says so in one line that names it
    (after the traceback of an unexpected error), then exits; torchrun stops the other ranks
    when one process fails (its default, --max-restarts 0), and a rank that sees the failure
    first (its collective breaks) says `stopped`, not `error`. One process: errors.run_cli."""
    from support.errors import run_cli as one_process
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return one_process(main, argv)
    who = f"rank {os.environ.get('RANK', '?')} of {os.environ['WORLD_SIZE']}"
    try:
        return main(argv)
    except UserError as e:
        print(f"error ({who}): {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except PeerFailed as e:   # not this rank's error: the failed rank printed its own
        print(f"stopped ({who}): another rank failed ({e})", file=sys.stderr, flush=True)
        sys.exit(1)
    except Exception as e:   # noqa: BLE001  (the traceback first, then the one line)
        traceback.print_exc()
        print(f"error ({who}): {type(e).__name__}: {e}".splitlines()[0], file=sys.stderr,
              flush=True)
        sys.exit(1)
    finally:
        close()
