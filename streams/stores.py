"""Local key-value stores behind the processor's changelog tables.

Why settled visits live here and not in the household value: a settled visit is needed
again only by a payment toward it or a (possibly late) refund, yet it is most of a
household's bytes after a few months. Kept inside the household value, every event
re-encoded and re-sent all of them to the changelog (21 KB per household after two years
of the soak log), and the worker's memory grew with every visit ever settled (32 MB/min in
the soak). Kept here, one small record per visit, the hot household stays the size of its
persons and open visits, and memory stays bounded with :class:`RocksStore`.

The changelog topic is the durable copy (written in the same Kafka transaction as the
outputs and offsets); a local store is a cache of it, wiped and rebuilt from the changelog
whenever the partition is assigned, as Kafka Streams does without a checkpoint file. So it
needs no write-ahead log of its own and may hold writes of a batch whose transaction later
fails: the stage dies on that failure and the next owner rebuilds from committed records.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from yibao.streams.exceptions import StoreError


class KVStore(Protocol):
    """What the processor needs of a store: point reads and writes of bytes."""

    def get(self, key: bytes) -> bytes | None: ...
    def put(self, key: bytes, value: bytes) -> None: ...
    def delete(self, key: bytes) -> None: ...
    def restore(self, records: Iterable[tuple[bytes, bytes | None]]) -> None: ...
    def close(self) -> None: ...


class MemoryStore:
    """A dict: for tests and small deployments (memory grows with the number of visits)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.data[key] = value

    def delete(self, key: bytes) -> None:
        self.data.pop(key, None)

    def restore(self, records: Iterable[tuple[bytes, bytes | None]]) -> None:
        for k, v in records:
            if v is None:
                self.data.pop(k, None)
            else:
                self.data[k] = v

    def close(self) -> None:
        self.data.clear()


def memory_stores(_partition: int) -> KVStore:
    """The store factory for tests and small deployments: a dict per partition."""
    return MemoryStore()


class RocksMemory:
    """One memory budget for all of a worker's RocksDB stores (one per ledger partition):
    a shared block cache that the memtables are charged to as well (RocksDB's write buffer
    manager), so the ceiling is ``cache_mb`` whatever the number of partitions or the data
    on disk. Without it each store had its own cache and memtables: 64 MB per partition."""

    def __init__(self, cache_mb: int = 64) -> None:
        try:
            from rocksdict import Cache, WriteBufferManager
        except ImportError as exc:  # pragma: no cover - rocksdict is a pinned dependency
            raise StoreError("the rocksdb store needs the rocksdict package") from exc
        size = cache_mb * 1024 * 1024
        self.cache = Cache(size)
        self.write_buffers = WriteBufferManager.new_write_buffer_manager_with_cache(
            size // 2, False, self.cache)


class RocksStore:
    """RocksDB through rocksdict (raw bytes), within a :class:`RocksMemory` budget."""

    def __init__(self, path: Path, memory: RocksMemory | None = None) -> None:
        try:
            from rocksdict import BlockBasedOptions, Options, Rdict, WriteOptions
        except ImportError as exc:  # pragma: no cover - rocksdict is a pinned dependency
            raise StoreError("the rocksdb store needs the rocksdict package") from exc
        memory = memory or RocksMemory(16)
        self.path = path
        shutil.rmtree(path, ignore_errors=True)  # a cache of the changelog: always rebuilt
        path.parent.mkdir(parents=True, exist_ok=True)
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_write_buffer_size(8 * 1024 * 1024)
        opts.set_max_write_buffer_number(2)
        opts.set_write_buffer_manager(memory.write_buffers)
        table = BlockBasedOptions()
        table.set_block_cache(memory.cache)
        table.set_bloom_filter(10, False)  # most lookups (a new visit's id) miss
        table.set_cache_index_and_filter_blocks(True)  # in the budget too
        opts.set_block_based_table_factory(table)
        try:
            self.db = Rdict(str(path), opts)
        except Exception as exc:
            raise StoreError(f"cannot open the rocksdb store at {path}: {exc}") from exc
        wo = WriteOptions()
        wo.disable_wal = True  # type: ignore[method-assign,assignment]  # a property at run time
        self.db.set_write_options(wo)

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self.db.get(key)
        return value

    def put(self, key: bytes, value: bytes) -> None:
        self.db.put(key, value)

    def delete(self, key: bytes) -> None:
        self.db.delete(key)

    def restore(self, records: Iterable[tuple[bytes, bytes | None]]) -> None:
        from rocksdict import WriteBatch

        wb = WriteBatch(raw_mode=True)
        for k, v in records:
            if v is None:
                wb.delete(k)
            else:
                wb.put(k, v)
            if wb.len() >= 10_000:
                self.db.write(wb)
                wb = WriteBatch(raw_mode=True)
        if not wb.is_empty():
            self.db.write(wb)

    def close(self) -> None:
        self.db.close()
        shutil.rmtree(self.path, ignore_errors=True)
