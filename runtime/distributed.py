"""Scale-out under a launcher: ``accelerate launch`` (or ``torchrun``) starts N copies of
``ethos featurize``; each scores its block of pairs and rank 0 gathers the blocks into the table
one process writes.

- **Ranks.** :func:`launch_from_env` reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (set by the
  launcher for every process); :func:`shard_of` maps a rank onto featurize's existing shards:
  ``num_shards = WORLD_SIZE``, ``shard_index = RANK`` (the rank's contiguous block of the usable
  pairs). No process group is opened: ranks meet through files only, so this works on any
  launcher, and across machines when ``--out`` lies on a shared file system.
- **Parts.** Each rank writes its block with :func:`write_part` into
  ``<out folder>/.<out name>.parts/part-<rank>-of-<N>.parquet`` (atomically), then a completion
  marker ``part-<rank>-of-<N>.done.json`` (atomically) holding the part's sha256 and the run's
  *signature* (sha256 of the shard count, data and model fingerprints, layer and lens identities).
- **Gather.** Rank 0 (:func:`finish_rank`) waits until every rank's marker is there, carries its
  own signature and matches its part's sha256 — a marker left by an earlier run with other data,
  plan or model is not taken; one left by an identical run holds the same scores — then merges the
  parts with :func:`ethos.runtime.featurize.merge_scores` (which checks they are exactly blocks
  0..N-1 of one run), writes ``out`` like a single process, and removes the parts it merged.
  It gives up after ``timeout_s`` (``$ETHOS_GATHER_TIMEOUT`` seconds, default 6 hours), naming the
  ranks whose parts are missing. Other ranks return as soon as their part is written.

The launcher kills every rank when one fails, so a failed rank never leaves rank 0 waiting.

**Training** (``ethos train`` under a launcher, :func:`open_group`) needs more than files: trl's
trainer runs data-parallel (DDP) over a process group, and ethos joins the same group. Besides it
ethos opens a small gloo group of its own, for its control messages, with a long timeout
(``$ETHOS_GATHER_TIMEOUT``, default 6 hours: rank 0 may apply a policy or compute probe directions
while the others wait). Through it :meth:`Group.share` runs a step on rank 0 only — applying the
policy, computing the concept directions, deciding what to resume, writing the outputs — and hands
its result, or its failure, to every rank; :meth:`Group.main_first` lets rank 0 fill a cache
before the others read it; :meth:`Group.barrier` waits for every rank.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import EthosError, UsageError
from .io import atomic_write_text

T = TypeVar("T")

DEFAULT_GATHER_TIMEOUT_S = 6 * 3600.0
_SIGNED = ("num_shards", "total_pairs", "data_fingerprint", "model_fingerprint", "layer")


@dataclass(frozen=True)
class Launch:
    """This process's place in a launch of ``world_size`` processes."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _whole(env: Mapping[str, str], var: str) -> int:
    text = env[var]
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{var}={text!r} is not a whole number (set by accelerate launch or torchrun)") from None


def launch_from_env(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The launch this process is part of, from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; None for a
    plain single process (no ``WORLD_SIZE``, or ``WORLD_SIZE=1``)."""
    env = os.environ if environ is None else environ
    if not env.get("WORLD_SIZE", "").strip():
        return None
    world = _whole(env, "WORLD_SIZE")
    if world < 1:
        raise UsageError(f"WORLD_SIZE={world} must be at least 1")
    if world == 1:
        return None
    if not env.get("RANK", "").strip():
        raise UsageError(f"WORLD_SIZE={world} but RANK is not set; start the processes with accelerate launch or torchrun")
    rank = _whole(env, "RANK")
    if not 0 <= rank < world:
        raise UsageError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
    local = _whole(env, "LOCAL_RANK") if env.get("LOCAL_RANK", "").strip() else rank
    return Launch(rank, world, local)


def shard_of(launch: Launch | None, num_shards: int = 1, shard_index: int = 0) -> tuple[int, int]:
    """featurize's ``(num_shards, shard_index)`` for this process: the ones given for a plain
    process, ``(WORLD_SIZE, RANK)`` under a launcher (where giving them too is a usage error)."""
    if launch is None:
        return num_shards, shard_index
    if (num_shards, shard_index) != (1, 0):
        raise UsageError(
            f"--num-shards/--shard-index split the pairs by hand; under a launcher (WORLD_SIZE={launch.world_size}) "
            "each rank scores its own block already: drop them"
        )
    return launch.world_size, launch.rank


# ---------------------------------------------------------------------------------------------
# Parts on disk


def parts_dir(out: str | os.PathLike[str]) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.parts"


def part_path(out: str | os.PathLike[str], rank: int, world_size: int) -> Path:
    return parts_dir(out) / f"part-{rank}-of-{world_size}.parquet"


def marker_path(out: str | os.PathLike[str], rank: int, world_size: int) -> Path:
    return parts_dir(out) / f"part-{rank}-of-{world_size}.done.json"


def signature(meta: Mapping[str, Any]) -> str:
    """sha256 of what must agree between the parts of one run (a featurize table's ``attrs["ethos"]``)."""
    signed = {k: meta.get(k) for k in _SIGNED}
    signed["lenses"] = {name: info.get("lens") for name, info in sorted((meta.get("concepts") or {}).items())}
    return hashlib.sha256(json.dumps(signed, sort_keys=True, default=str).encode()).hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def write_part(table: Any, out: str | os.PathLike[str], launch: Launch) -> Path:
    """Write this rank's block (a featurize table of shard ``rank`` of ``world_size``) and then its
    completion marker, both atomically. Returns the part's path."""
    from .featurize import write_scores

    meta = table.attrs.get("ethos", {})
    if (meta.get("num_shards"), meta.get("shard_index")) != (launch.world_size, launch.rank):
        raise EthosError(
            f"rank {launch.rank} of {launch.world_size} scored shard {meta.get('shard_index')} of "
            f"{meta.get('num_shards')}; featurize must run with num_shards=WORLD_SIZE, shard_index=RANK"
        )
    part = write_scores(table, part_path(out, launch.rank, launch.world_size))
    record = {
        "rank": launch.rank,
        "world_size": launch.world_size,
        "rows": len(table),
        "sha256": _sha256(part),
        "signature": signature(meta),
    }
    atomic_write_text(marker_path(out, launch.rank, launch.world_size), json.dumps(record, sort_keys=True) + "\n")
    return part


def _ready(out: Path, rank: int, world: int, sig: str) -> Path | None:
    """The part of ``rank`` when its marker is complete, of this run, and matches the part file."""
    try:
        record = json.loads(marker_path(out, rank, world).read_text(encoding="utf-8"))
        part = part_path(out, rank, world)
        if record.get("signature") != sig or record.get("rank") != rank or record.get("world_size") != world:
            return None
        return part if _sha256(part) == record.get("sha256") else None
    except (OSError, ValueError):
        return None


def gather_parts(out: str | os.PathLike[str], launch: Launch, sig: str, *,
                 timeout_s: float = DEFAULT_GATHER_TIMEOUT_S, poll_s: float = 0.5) -> list[Path]:
    """Wait until every rank's part of the run with signature ``sig`` is complete; their paths in
    rank order. Raises :class:`EthosError` naming the missing ranks after ``timeout_s``."""
    out = Path(out)
    world = launch.world_size
    deadline = time.monotonic() + timeout_s
    found: dict[int, Path] = {}
    while True:
        for rank in range(world):
            if rank not in found and (part := _ready(out, rank, world, sig)) is not None:
                found[rank] = part
        if len(found) == world:
            return [found[r] for r in range(world)]
        if time.monotonic() >= deadline:
            missing = [r for r in range(world) if r not in found]
            raise EthosError(
                f"waited {timeout_s:g} s for the parts of rank(s) {', '.join(map(str, missing))} of {world} in "
                f"{parts_dir(out)}; did every rank start with the same data, policy and model, and does "
                "--out lie on a file system every rank sees? (ETHOS_GATHER_TIMEOUT sets the wait in seconds)"
            )
        time.sleep(poll_s)


def _timeout_from_env() -> float:
    text = os.environ.get("ETHOS_GATHER_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_GATHER_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"ETHOS_GATHER_TIMEOUT={text!r} is not a number of seconds") from None
    if value <= 0:
        raise UsageError(f"ETHOS_GATHER_TIMEOUT={text!r} must be positive")
    return value


def finish_rank(table: Any, out: str | os.PathLike[str], launch: Launch, *,
                timeout_s: float | None = None, poll_s: float = 0.5) -> Any:
    """End a featurize rank: write its part; on rank 0 also wait for the others, merge, write
    ``out`` (the single-process table) and return the merged table. Other ranks return None."""
    from .featurize import merge_scores, write_scores

    write_part(table, out, launch)
    if not launch.is_main:
        return None
    sig = signature(table.attrs.get("ethos", {}))
    timeout = _timeout_from_env() if timeout_s is None else timeout_s
    parts = gather_parts(out, launch, sig, timeout_s=timeout, poll_s=poll_s)
    from .featurize import read_scores

    part_stats = [read_scores(p).attrs.get("ethos", {}).get("stats", {}) for p in parts]
    merged = merge_scores(parts)
    stats = merged.attrs["ethos"]["stats"]
    for key in ("model_seconds", "seconds"):  # the ranks ran side by side: the run took the longest
        stats[key] = max(float(s.get(key, 0.0)) for s in part_stats)
    stats["ranks"] = launch.world_size
    write_scores(merged, out)
    for rank, part in enumerate(parts):
        part.unlink(missing_ok=True)
        marker_path(out, rank, launch.world_size).unlink(missing_ok=True)
    try:
        parts_dir(out).rmdir()
    except OSError:
        pass  # something else is in there (a later run's part): leave it
    return merged


# ---------------------------------------------------------------------------------------------
# Training: a process group


class Group:
    """This process's place in a training launch, joined to the other ranks by a process group; a
    plain process (``launch`` None) is a group of one, where every method just runs its step.

    Every rank must call the same methods in the same order (they are collectives)."""

    def __init__(self, launch: Launch | None, control: Any = None) -> None:
        self.launch = launch
        self._control = control  # ethos's gloo group (None: a plain process)

    @property
    def rank(self) -> int:
        return self.launch.rank if self.launch else 0

    @property
    def world_size(self) -> int:
        return self.launch.world_size if self.launch else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _broadcast(self, value: Any = None) -> Any:
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0, group=self._control)
        return box[0]

    def _from_main(self, fn: Callable[[], T]) -> tuple[bool, T | None]:
        """Rank 0: run ``fn``; then every rank learns whether it succeeded (and its result). On
        rank 0 a failure is raised again after telling the others; on another rank it becomes an
        :class:`EthosError` naming rank 0's failure, with its exit code."""
        if self.is_main:
            try:
                value = fn()
            except Exception as e:  # (Ctrl-C: the launcher stops every rank)
                code = e.exit_code if isinstance(e, EthosError) else 1
                message = str(e) if isinstance(e, EthosError) else f"{type(e).__name__}: {e}"
                self._broadcast(("failed", message.splitlines()[0] if message else type(e).__name__, code))
                raise
            self._broadcast(("ok", value, 0))
            return True, value
        status, value, code = self._broadcast()
        if status != "ok":
            raise EthosError(f"rank 0 of {self.world_size} failed ({value}); rank {self.rank} stopped",
                             exit_code=code or 1)
        return True, value

    def share(self, fn: Callable[[], T]) -> T:
        """Rank 0 runs ``fn`` and every rank returns its result (pickled; keep it small and on the
        CPU). When ``fn`` fails on rank 0, rank 0 raises it and every other rank raises an
        :class:`EthosError` that names it, with the same exit code."""
        if self._control is None:
            return fn()
        return self._from_main(fn)[1]  # type: ignore[return-value]

    def main_first(self, fn: Callable[[], T]) -> T:
        """Rank 0 runs ``fn`` first (e.g. loading a model that is converted into a cache on first
        use), then, once it succeeded, every other rank runs ``fn`` itself."""
        if self._control is None:
            return fn()
        if self.is_main:
            return self._from_main(fn)[1]  # type: ignore[return-value]
        self._from_main(lambda: None)
        return fn()

    def barrier(self) -> None:
        """Wait until every rank is here."""
        if self._control is not None:
            import torch.distributed as dist

            dist.barrier(group=self._control)


_GROUP: Group | None = None
_OPENED_DEFAULT = False


def open_group(launch: Launch | None = None, environ: Mapping[str, str] | None = None) -> Group:
    """The training group of this process: a group of one for a plain process; under a launcher
    (``RANK``/``WORLD_SIZE``) the process group trl's trainer trains over — opened here through
    accelerate's ``PartialState``, exactly as transformers opens it (NCCL on GPUs, gloo on the
    CPU), unless it is open already — plus ethos's gloo group for its control messages, which
    waits up to ``$ETHOS_GATHER_TIMEOUT`` seconds (default 6 hours). Opened once per process.
    Data-parallel only: an FSDP or DeepSpeed launch (accelerate's ``ACCELERATE_USE_FSDP`` /
    ``ACCELERATE_USE_DEEPSPEED``) is a usage error."""
    global _GROUP, _OPENED_DEFAULT
    launch = launch if launch is not None else launch_from_env(environ)
    if launch is None:
        return Group(None)
    import datetime

    import torch.distributed as dist

    if _GROUP is not None and _GROUP.launch == launch and dist.is_initialized():
        return _GROUP
    env = os.environ if environ is None else environ
    for var, what in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if env.get(var, "").strip().lower() in ("1", "true", "yes"):
            raise UsageError(f"{what} ({var}) is not supported by ethos train: it trains data-parallel (DDP), every "
                             "process holding the whole model, and rank 0 saves the weights it holds; launch "
                             "without an FSDP/DeepSpeed accelerate config")
    timeout = _timeout_from_env()
    if not dist.is_available():
        raise EthosError(f"WORLD_SIZE={launch.world_size}: this torch has no torch.distributed")
    if not dist.is_initialized():
        from accelerate import PartialState
        from transformers import TrainingArguments

        from .device import default_device

        if default_device().type == "cpu":
            PartialState(cpu=True)
        else:  # with transformers' timeout for the trainer's collectives (TrainingArguments.ddp_timeout)
            ddp_timeout = TrainingArguments.__dataclass_fields__["ddp_timeout"].default
            PartialState(timeout=datetime.timedelta(seconds=ddp_timeout))
        _OPENED_DEFAULT = True
    if (dist.get_rank(), dist.get_world_size()) != (launch.rank, launch.world_size):
        raise EthosError(f"the process group has rank {dist.get_rank()} of {dist.get_world_size()}, the launcher "
                         f"said RANK={launch.rank} of WORLD_SIZE={launch.world_size}")
    control = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout))
    _GROUP = Group(launch, control)
    return _GROUP


def close_group() -> None:
    """Close what :func:`open_group` opened (the command line calls it before exiting)."""
    global _GROUP, _OPENED_DEFAULT
    if _GROUP is None:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        if _GROUP._control is not None:
            dist.destroy_process_group(_GROUP._control)
        if _OPENED_DEFAULT:
            dist.destroy_process_group()
    _GROUP, _OPENED_DEFAULT = None, False
