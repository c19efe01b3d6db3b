"""Run directories: nothing a run writes is ever half-written, and a killed run resumes.

Not part of the paper; this is the plumbing that train.py, pool.py and model.py share so that
training never loses work:
- every file and directory is written under a temporary name, flushed to the disk, then renamed
  into place (a rename within one directory is atomic on POSIX), so a crash, even of the
  machine, leaves the old version or the new one, never a torn one;
- a checkpoint holds everything a run needs to continue exactly where it stopped: model,
  optimizer, every random stream (Python's, torch's CPU and CUDA ones), the step, the counters
  and the experience pool;
- on resume the JSONL logs are cut back to the checkpoint's step (no duplicates, no holes), and a
  config that would change what the run computes is refused;
- sft.py's loop checkpoints too (SFTCheckpoint), so a killed SFT continues where it stopped.
"""
import json
import os
import shutil
import sys
import uuid

import torch

from support import ranks
from support.errors import UserError, on_interrupt

# --- Atomic writes --------------------------------------------------------------------------


def atomic_write(path: str, text: str):
    """Write a text file: temporary name, fsync, rename, fsync of the directory (the rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _sync(os.path.dirname(os.path.abspath(path)))


def atomic_dir(out_dir: str, write):
    """Create or replace a directory: `write(tmp)` fills a temporary sibling, which is then
    swapped into place by two renames. A crash between them leaves `<dir>.old-*` beside a
    missing `<dir>`; `find_checkpoint` knows that case."""
    out = os.path.abspath(os.path.expanduser(out_dir))
    if os.path.isfile(out):
        raise UserError(f"{out_dir} is a file, not a directory")
    parent, base = os.path.split(out)
    os.makedirs(parent, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp, old = os.path.join(parent, f".{base}.tmp-{tag}"), os.path.join(parent, f".{base}.old-{tag}")
    try:
        write(tmp)
        _readable(tmp)
        _synced(tmp)   # on the disk before the rename, or a power cut could keep a torn file
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(out):
        os.rename(out, old)
    os.rename(tmp, out)
    _sync(parent)   # the renames themselves
    shutil.rmtree(old, ignore_errors=True)


def _sync(path: str):
    """fsync a file or a directory (where the system lets a directory be opened: not Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _synced(directory: str):
    """Every file under `directory`, then every directory, flushed to the disk."""
    for root, _, files in os.walk(directory, topdown=False):
        for name in files:
            _sync(os.path.join(root, name))
        _sync(root)


def _readable(directory: str):
    """Every file the mode a new file gets here (644 under the usual umask): safetensors writes
    weights through a private temporary file (600), which would hide them from a group."""
    mask = os.umask(0)
    os.umask(mask)
    for root, _, files in os.walk(directory):
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def append_jsonl(path: str, rows: list[dict]):
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def truncate_log(path: str, last_step: int):
    """Keep only the lines of a JSONL log up to `last_step`, so a resumed run continues the log
    with no duplicates and no holes."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    keep = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= last_step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError):
            break   # a torn last line from the crash
    atomic_write(path, "".join(keep))


# --- Checkpoints ----------------------------------------------------------------------------

CHECKPOINT = "checkpoint"


def rng_state(py_rng) -> dict:
    """Every random stream a run draws from."""
    state = {"python": py_rng.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(py_rng, state: dict):
    """Restore every stream. CUDA generators are restored one per GPU that exists now: a run
    resumed with fewer visible GPUs (another host, CUDA_VISIBLE_DEVICES) restores the first ones
    and says in one line what it left out (torch.cuda.set_rng_state_all would fail on them)."""
    py_rng.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        saved, n = state["cuda"], torch.cuda.device_count()
        for i, s in enumerate(saved[:n]):
            torch.cuda.set_rng_state(s, i)
        if len(saved) > n:
            print(f"warning: the checkpoint holds {len(saved)} CUDA random streams and {n} "
                  f"GPU(s) are visible: restored the first {n}", file=sys.stderr)


def save_checkpoint(run_dir, step, model, tok, opt, pool, py_rng, counters, extra=None):
    """Write checkpoint/ atomically (model, tokenizer, optimizer, RNG states, step, counters,
    pool). A crash at any moment leaves a complete checkpoint: the old one or the new one.
    `extra`: more entries for state.pt (with several processes: their number and every rank's
    random streams, see ranks.py)."""
    def write(tmp):
        os.makedirs(tmp)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        # save_dtype: the dtype final/ is saved in (model.save_model), which the float32
        # checkpoint itself no longer tells a resumed run
        torch.save({"step": step, "optimizer": opt.state_dict(), "rng": rng_state(py_rng),
                    "counters": counters, "save_dtype": getattr(model, "save_dtype", None),
                    **(extra or {})},
                   os.path.join(tmp, "state.pt"))
        pool.save(os.path.join(tmp, "pool.jsonl"))
    atomic_dir(os.path.join(run_dir, CHECKPOINT), write)


def find_checkpoint(run_dir):
    """The newest complete checkpoint: checkpoint/, or the old one that a crash between the two
    renames of atomic_dir left behind."""
    path = os.path.join(run_dir, CHECKPOINT)
    if os.path.exists(os.path.join(path, "state.pt")):
        return path
    olds = [os.path.join(run_dir, n) for n in os.listdir(run_dir)
            if n.startswith(f".{CHECKPOINT}.old-")] if os.path.isdir(run_dir) else []
    olds = [p for p in olds if os.path.exists(os.path.join(p, "state.pt"))]
    return max(olds, key=os.path.getmtime) if olds else None


def load_state(ckpt: str) -> dict:
    """state.pt, every tensor on the CPU whatever device saved it (a run saved on cuda:1
    resumes on a host with one GPU, or none): the optimizer's load_state_dict moves its
    state to the parameters' device, and random states are CPU tensors anyway."""
    path = os.path.join(ckpt, "state.pt")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:   # noqa: BLE001  (a truncated or damaged file)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot read {path} ({first[:120]}): the checkpoint is damaged; restore "
                        f"it, or delete {ckpt} to start the run again") from None


class SFTCheckpoint:
    """sft.py's checkpoint/, inside its output directory, every `every` optimizer steps (0:
    never): the trainable weights (with LoRA, the adapters), the optimizer and the schedule,
    every random stream, the batches still to come, the history so far and the flags. Saving
    the finished model replaces the whole directory, and with it the checkpoint. With `resume`,
    `restore` puts a checkpoint back in place, so that on the same device with the same thread
    count the resumed run computes bit for bit what the uninterrupted one would have. Only the
    flags in RESUMABLE_SFT may differ (`--device auto` and `cpu` may, where both mean the device
    the checkpoint was made on: `flags` holds the resolved one, device_used); --threads may,
    although another thread count can change the last digits on a CPU."""

    RESUMABLE_SFT = {"resume", "overwrite", "device", "threads", "checkpoint_every", "out"}

    def __init__(self, out_dir: str, every: int, steps: int, flags: dict, resume: bool):
        self.out_dir, self.every, self.steps, self.resume = out_dir, every, steps, resume
        self.flags = {k: v for k, v in flags.items() if k not in self.RESUMABLE_SFT}
        self.saved_step = self.resumed_from = None
        on_interrupt(self.interrupted)

    def interrupted(self) -> str:
        if self.saved_step is None:
            return f"; no SFT checkpoint yet in {self.out_dir}"
        return (f"; the SFT checkpoint of step {self.saved_step} is kept; go on with the same "
                "command and --resume")

    def restore(self, model, opt, sched, py_rng):
        """(step, batches to come, history, timings) of the checkpoint put in place, or None:
        not resuming, or no checkpoint yet (then the run starts from step 0)."""
        ckpt = find_checkpoint(self.out_dir) if self.resume else None
        if ckpt is None:
            if self.resume:
                print(f"no SFT checkpoint in {self.out_dir} yet: starting from step 0")
            return None
        state = load_state(ckpt)
        changed = sorted(k for k in self.flags.keys() | state["flags"].keys()
                         if self.flags.get(k) != state["flags"].get(k))
        if changed:
            raise UserError("--resume with flags that change what the SFT computes: " + ", ".join(
                f"{k} {state['flags'].get(k)!r} -> {self.flags.get(k)!r}" for k in changed) +
                f"; give the flags it was made with, or delete {ckpt} to start again")
        params = dict(model.named_parameters())
        trainable = {n for n, p in params.items() if p.requires_grad}
        if set(state["weights"]) != trainable:
            raise UserError(f"{ckpt} holds other weights than this model trains (LoRA or not, "
                            f"another model?); delete it to start again")
        with torch.no_grad():
            for name, value in state["weights"].items():
                params[name].copy_(value)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["schedule"])
        set_rng_state(py_rng, state["rng"])
        self.saved_step = self.resumed_from = state["step"]
        print(f"resumed the SFT from step {state['step']} ({ckpt})")
        return state["step"], state["batches"], state["history"], state["timings"]

    def save(self, step, model, opt, sched, py_rng, batches, history, timings):
        """After optimizer step `step`: write checkpoint/ atomically when `every` divides it
        (the last step writes none: the finished model follows)."""
        if not self.every or step % self.every or step >= self.steps:
            return
        weights = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}

        def write(tmp):
            os.makedirs(tmp)
            torch.save({"step": step, "weights": weights, "optimizer": opt.state_dict(),
                        "schedule": sched.state_dict(), "rng": rng_state(py_rng),
                        "batches": batches, "history": history, "timings": timings,
                        "flags": self.flags}, os.path.join(tmp, "state.pt"))
        atomic_dir(os.path.join(self.out_dir, CHECKPOINT), write)
        self.saved_step = step


# --- The run directory ----------------------------------------------------------------------

TIMINGS = ("tokens_per_s", "ms_per_decode_step")   # besides the t_<phase> seconds


def is_timing(key: str) -> bool:
    """Does this metric measure the machine (seconds, throughput) rather than the run? Two runs
    that compute the same thing agree on every other metric."""
    return key.startswith("t_") or key in TIMINGS


def check_run_dir(args, resumable: set):
    """A new run refuses to write over a different one; --resume checks that the saved config
    is compatible (only the flags in `resumable` may change). Writes nothing."""
    cfg_path = os.path.join(args.run_dir, "config.json")
    if args.resume:
        if not os.path.exists(cfg_path):
            raise UserError(f"--resume: no run in {args.run_dir} (no config.json)")
        with open(cfg_path) as f:
            saved = json.load(f)
        changed = sorted(k for k, v in vars(args).items()
                         if k not in resumable and k in saved and saved[k] != v)
        if changed:
            raise UserError("--resume with a config that changes what the run computes: " +
                            ", ".join(f"{k} {saved[k]!r} -> {getattr(args, k)!r}"
                                      for k in changed))
    elif os.path.isdir(args.run_dir) and os.listdir(args.run_dir) and not args.overwrite:
        raise UserError(f"{args.run_dir} already holds a run; pass --resume to continue it or "
                        "--overwrite to replace it")


def start_run_dir(args, logs: list[str], start_step: int):
    """Called once everything has loaded: only now is anything written. A new run starts empty
    logs; a resumed one cuts its logs back to the checkpoint's step."""
    if not args.resume and os.path.isdir(args.run_dir):
        shutil.rmtree(args.run_dir)   # --overwrite (check_run_dir refused otherwise)
    os.makedirs(args.run_dir, exist_ok=True)
    keep = find_checkpoint(args.run_dir)
    for name in os.listdir(args.run_dir):   # what a crash left half-written or half-swapped
        path = os.path.join(args.run_dir, name)
        if (".tmp-" in name or ".old-" in name) and path != keep:
            shutil.rmtree(path, ignore_errors=True)
    atomic_write(os.path.join(args.run_dir, "config.json"),
                 json.dumps(vars(args), indent=1, sort_keys=True))
    for path in logs:
        if start_step == 0:
            atomic_write(path, "")
        truncate_log(path, start_step)


class Run:
    """The run directory as train.py sees it, on every rank: rank 0 writes and speaks, the other
    ranks stay silent, and the collectives a checkpoint needs run on every rank. One process:
    rank 0. It also counts the skipped (non-finite) updates, which checkpoints keep."""

    def __init__(self, args):
        self.args, self.main = args, ranks.is_main()
        self.metrics_path = os.path.join(args.run_dir, "metrics.jsonl")
        self.samples_path = os.path.join(args.run_dir, "samples.jsonl")
        self.counters = {"bad_in_a_row": 0, "skipped_total": 0}
        self.step = self.saved_step = None   # the last step logged, and checkpointed
        self.started = False                 # has anything been written yet?
        on_interrupt(self.interrupted)

    def interrupted(self) -> str:
        """What Ctrl-C says: where the run stopped, what is kept, the command that goes on."""
        if not self.started:
            return f" before the run started; {self.args.run_dir} is as it was"
        kept = (f"the checkpoint of step {self.saved_step} is kept" if self.saved_step else
                "no checkpoint yet")
        return (f" at step {self.step}; {kept}; go on with: python train.py --resume "
                f"--run-dir {self.args.run_dir}")

    def say(self, *words, file=None):
        if self.main:
            print(*words, file=file)

    def find_checkpoint(self):
        """With --resume, the checkpoint to continue from (None: start from the beginning)."""
        if not self.args.resume:
            return None
        ckpt = find_checkpoint(self.args.run_dir)
        if ckpt is None:
            self.say("no checkpoint yet: starting the run from the beginning")
        return ckpt

    def resume(self, ckpt, model, opt, py_rng, pool_class):
        """Put the checkpoint's optimizer, random streams and counters in place; returns (its
        step, its pool), or (0, an empty pool) without one (pool_class: pool.Pool, which stands
        on this file, so it is handed in, not imported). Then rank 0 starts writing: a new
        run's empty logs, or a resumed run's logs cut back to its step."""
        start, pool = 0, pool_class()
        if ckpt:
            state = load_state(ckpt)
            if state.get("world_size", 1) != ranks.world_size():
                raise UserError(f"--resume: this run was trained with {state.get('world_size', 1)} "
                                f"process(es) and is resumed with {ranks.world_size()}; resume "
                                "it with the same number (each rank's random streams are in the "
                                "checkpoint)")
            opt.load_state_dict(state["optimizer"])
            model.save_dtype = state.get("save_dtype")   # the dtype final/ is saved in
            # every rank continues its own streams (state["rng"] is rank 0's)
            set_rng_state(py_rng, state.get("rank_rng", [state["rng"]])[ranks.rank()])
            start, self.counters = state["step"], state["counters"]
            self._check_not_finished(start)
            self.counters["bad_in_a_row"] = 0   # a person resumed: a fresh chance
            pool = pool_class.load(os.path.join(ckpt, "pool.jsonl"))
            self.say(f"resumed from step {start} ({len(pool)} pool entries)")
        ranks.barrier()   # every rank has read the run directory before rank 0 writes into it
        if self.main:
            start_run_dir(self.args, [self.metrics_path, self.samples_path], start)
        self.started, self.step, self.saved_step = True, start, start or None
        return start, pool

    def _check_not_finished(self, start):
        """--resume does not extend a finished run unless --steps asks for more. A run stopped
        in its final evaluation is not finished: resuming it saves final/ and evaluates."""
        steps, run_dir = self.args.steps, self.args.run_dir
        if start > steps:
            raise UserError(f"--resume: the checkpoint is at step {start}, past --steps {steps}")
        evaluated = not self.args.final_eval or os.path.exists(os.path.join(run_dir, "eval.json"))
        if start == steps and os.path.isdir(os.path.join(run_dir, "final")) and evaluated:
            raise UserError(f"the run in {run_dir} is finished (step {start}); pass --steps N "
                            f"with N > {start} to continue it")

    def evaluates(self, step) -> bool:
        """Is `step` one of the periodic evaluations? Rank 0 alone evaluates."""
        every = self.args.eval_every
        return self.main and bool(every) and step % every == 0

    def log(self, metrics, samples=None):
        self.step = metrics["step"]
        if self.main:
            append_jsonl(self.metrics_path, [metrics])
            if samples is not None:
                append_jsonl(self.samples_path, samples)

    def count_skipped(self, metrics):
        """Count a skipped update (metrics["skipped_update"]) and log the run's total."""
        c, skipped = self.counters, metrics["skipped_update"]
        c["bad_in_a_row"] = c["bad_in_a_row"] + 1 if skipped else 0
        c["skipped_total"] += skipped
        metrics["skipped_total"] = c["skipped_total"]

    def too_many_skipped(self) -> bool:
        return self.counters["bad_in_a_row"] >= self.args.max_bad_updates

    def stop_unstable(self, step, model, tok, opt, pool, py_rng):
        """Checkpoint (the skipped updates never touched the weights), say why, exit 1."""
        self.checkpoint(step, model, tok, opt, pool, py_rng)
        self.say(f"error: {self.counters['bad_in_a_row']} non-finite updates in a row (last at "
                 f"step {step}); stopping. The checkpoint at step {step} holds the last finite "
                 "weights; lower --lr or raise --beta before resuming.", file=sys.stderr)
        sys.exit(1)

    def checkpoint(self, step, model, tok, opt, pool, py_rng):
        """Every rank's random streams go into rank 0's checkpoint (one process: its own)."""
        extra = {} if ranks.world_size() == 1 else \
            {"world_size": ranks.world_size(), "rank_rng": ranks.gather_objects(rng_state(py_rng))}
        if self.main:
            save_checkpoint(self.args.run_dir, step, model, tok, opt, pool, py_rng,
                            self.counters, extra)
        self.saved_step = step

    def save_pool_and_curves(self, pool):
        """pool.jsonl, and curves.png when matplotlib is installed (its path, or None)."""
        pool.save(os.path.join(self.args.run_dir, "pool.jsonl"))
        return plot_curves(self.args.run_dir)

    def write_json(self, name, obj):
        atomic_write(os.path.join(self.args.run_dir, name), json.dumps(obj, indent=1))


def read_jsonl_log(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(run_dir: str):
    """curves.png from metrics.jsonl, when matplotlib is installed: a title that names the run,
    a y label and a title saying what each panel shows, whole steps on the x axis."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None
    rows = read_jsonl_log(os.path.join(run_dir, "metrics.jsonl"))
    with open(os.path.join(run_dir, "config.json")) as f:
        cfg = json.load(f)
    # (title, y label, y range or None for the data's own, keys)
    panels = [
        ("reward of the rollouts (mean)", "reward (0 or 1)", (0, 1.05),
         ["reward", "reward_feedback", "reward_plain"]),
        ("zero-shot test accuracy (greedy)", "accuracy", (0, 1.05),
         sorted({k for r in rows for k in r if k.startswith("eval/")})),
        ("groups whose G rewards are all equal\n(zero advantage: no gradient)", "fraction",
         (0, 1.05), ["zero_std_frac"]),
        ("KL to the SFT model (k3, per token)", "KL", None, ["kl"]),
        ("response length", "tokens", "from 0", ["response_length"]),
        ("language channel: problems given a context, retrieved\nproblems of the same family, "
         "summaries that are right", "fraction", (0, 1.05),
         ["coverage", "retrieval_precision", "summary_correct"])]
    fig, axes = plt.subplots(2, 3, figsize=(14, 8))
    for ax, (title, ylabel, ylim, keys) in zip(axes.flat, panels):
        for k in keys:
            pts = [(r["step"], r[k]) for r in rows if r.get(k) is not None]
            if pts:
                ax.plot(*zip(*pts), label=k, marker="." if k.startswith("eval/") else None)
        if not ax.lines:
            ax.text(0.5, 0.5, "not logged in this run", ha="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ylim == "from 0":
            ax.set_ylim(0, max([1.0] + [v for line in ax.lines for v in line.get_ydata()]) * 1.1)
        elif ylim:
            ax.set_ylim(*ylim)
        if len(ax.lines) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(run_title(cfg))
    fig.tight_layout()
    path = os.path.join(run_dir, "curves.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def run_title(cfg: dict) -> str:
    """The run in a few words: its arm, its data and its seed."""
    if cfg.get("p_feedback", 0) == 0:
        arm = "GRPO"
    else:
        arm = f"LANPO (feedback {cfg.get('feedback')}, p_t {cfg.get('p_feedback')}"
        arm += f", scored {cfg['score_context']})" if cfg.get("score_context", "prompt") != \
            "prompt" else ")"
    return (f"{arm}: {cfg.get('data')} data, {cfg.get('steps')} steps of "
            f"{cfg.get('problems_per_step')} problems x G = {cfg.get('group_size')}, seed "
            f"{cfg.get('seed')}, from {cfg.get('init')}")
