"""`yibao settle --jobs N`: the fold split by household across processes, merged by line.

The router (:mod:`yibao.rules.shard`) reads the log once and gives every line a shard;
each shard process re-reads the log, folds only its lines with the one-process fold, and
writes what each line gave (outputs or a dead letter) framed with its line number; the
parent merges the shards' files by line. The output is the one-process output byte for
byte, because within a component the order is the log's and across components nothing is
shared.

One thing is shared: the dedup window forgets ids by the newest event time of the whole log.
When the router finds a repeat whose first occurrence may have left the window (a shard
alone would see an older "newest" and might still remember it), every shard also decodes
the other shards' lines and passes their ids through its dedup window, without folding
them: each shard's window is then the one fold's, at every line.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import multiprocessing as mp
import os
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import msgspec

from yibao.cli.exceptions import ShardError
from yibao.rules.fold import Counts, DeadLetter, Fold
from yibao.rules.shard import Router
from yibao.schemas.exceptions import SchemaError

_FRAME = struct.Struct("<QBI")  # line, kind, payload length
_OUTPUTS, _DEAD = 0, 1
_FREEZE_EVERY = 20_000
_BUFFER = 1 << 20

#: below this many lines the processes cost more than they save
MIN_LINES_PER_JOB = 20_000


def default_jobs() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def route(path: Path, lines: Callable[[IO[bytes]], Iterator[bytes]], window_ms: int,
          jobs: int) -> tuple[bytes, bool]:
    """The shard of every line, and whether each shard must keep the whole log's dedup
    window (see the module docstring)."""
    router = Router(window_ms)
    add = router.add
    with open(path, "rb") as src:
        for raw in lines(src):
            add(raw)
    if not router.window_safe:
        print("settle: an event id repeats so long after its first occurrence that the first "
              "may have left the dedup window, so every process keeps the whole log's dedup "
              "window", file=sys.stderr)
    return router.shards(jobs), not router.window_safe


def _fold_shard(path: str, lines: Callable[[IO[bytes]], Iterator[bytes]],
                make_fold: Callable[[], Fold], shard_of: bytes, shard: int,
                out_path: str, whole_window: bool) -> None:
    from yibao.cli.filemode import dead_letter_record

    gc.freeze()  # what the fork inherited is not this process's to collect or finalise
    fold = make_fold()
    encoder = msgspec.json.Encoder()
    frame = _FRAME.pack
    buf = bytearray()
    with open(path, "rb") as src, open(out_path, "wb") as out:
        for n, raw in enumerate(lines(src), 1):
            if shard_of[n - 1] != shard:
                if whole_window:
                    pass_through_window(fold, raw)
                continue
            result = fold.feed(raw, n)
            if fold.counts.read % _FREEZE_EVERY == 0:
                gc.freeze()  # long-lived acyclic state, as in the one-process fold
            if isinstance(result, DeadLetter):
                payload = encoder.encode(dead_letter_record(result))
                buf += frame(n, _DEAD, len(payload))
                buf += payload
            elif result:
                body = bytearray()
                for o in result:
                    encoder.encode_into(o, body, -1)
                    body += b"\n"
                buf += frame(n, _OUTPUTS, len(body))
                buf += body
            if len(buf) > _BUFFER:
                out.write(buf)
                buf.clear()
        out.write(buf)
    Path(out_path + ".counts").write_bytes(msgspec.msgpack.encode(fold.counts))


def pass_through_window(fold: Fold, raw: bytes) -> None:
    """What another shard's line does to this shard's dedup window in the one fold: a valid
    event's id goes through it (a malformed line never reaches it); nothing is folded or
    counted."""
    try:
        event = fold.codec.decode(raw)
    except SchemaError:
        return
    fold.dedup.seen(event.event_id, event.occurred_at)


def _frames(path: Path) -> Iterator[tuple[int, int, bytes]]:
    header = _FRAME.size
    with open(path, "rb", buffering=_BUFFER) as f:
        while True:
            head = f.read(header)
            if not head:
                return
            line, kind, size = _FRAME.unpack(head)
            yield line, kind, f.read(size)


def _add_counts(total: Counts, part: Counts) -> None:
    total.read += part.read
    total.applied += part.applied
    total.duplicates += part.duplicates
    total.dead_lettered += part.dead_lettered
    total.outputs += part.outputs
    for k, v in part.by_output.items():
        total.by_output[k] = total.by_output.get(k, 0) + v


def settle_sharded(path: Path, lines: Callable[[IO[bytes]], Iterator[bytes]],
                   make_fold: Callable[[], Fold], shard_of: bytes, jobs: int,
                   out: IO[bytes], dead: IO[bytes] | None, whole_window: bool = False
                   ) -> Counts:
    """Fold each shard in its own process and write the merged outputs in line order."""
    ctx = (mp.get_context("fork") if "fork" in mp.get_all_start_methods()
           else mp.get_context("spawn"))
    work = Path(tempfile.mkdtemp(prefix="yibao-settle-"))
    try:
        parts = [work / f"shard-{k}" for k in range(jobs)]
        procs = [ctx.Process(target=_fold_shard, name=f"settle-shard-{k}",
                             args=(str(path), lines, make_fold, shard_of, k, str(parts[k]),
                                   whole_window))
                 for k in range(jobs)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        failed = [f"{p.name} exit {p.exitcode}" for p in procs if p.exitcode != 0]
        if failed:
            raise ShardError("settle: " + ", ".join(failed))
        buf = bytearray()
        for _line, kind, payload in heapq.merge(*(_frames(part) for part in parts)):
            if kind == _OUTPUTS:
                buf += payload
                if len(buf) > _BUFFER:
                    out.write(buf)
                    buf.clear()
            elif dead is not None:
                dead.write(payload + b"\n")
        out.write(buf)
        total = Counts()
        for part in parts:
            _add_counts(total, msgspec.msgpack.decode(
                Path(str(part) + ".counts").read_bytes(), type=Counts))
        return total
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
