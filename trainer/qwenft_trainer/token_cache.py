"""Tokenize once per run: the tokenized samples cached on the output volume.

Reading, validating and tokenizing a dataset through the chat template takes minutes on a
large dataset, and every rank of a job, and every restart of a pod, needs exactly the same
samples. So rank 0 validates and tokenizes once and saves the samples in
``output_dir/token-cache/<key>/``; the other ranks wait for that entry and load it, and a
restarted pod loads it instead of tokenizing again. The output volume is the one claim
every training pod mounts (ReadWriteMany across nodes), so one rank builds for all nodes.

The key (:mod:`qwenft_trainer.token_keys`) covers everything that shapes the samples: the
dataset's bytes, the tokenizer and its chat template, the settings that change the samples,
and the code and libraries that make them. Packing is not in it: the packing mode is decided
once the model has loaded, and the session packs the cached samples accordingly.

An entry is written like a checkpoint: into a temporary directory, ``meta.json`` (the key,
what went into it, the counts and the SHA-256 of ``samples.npz``) written and fsynced
last, then renamed into place. Loading checks all of it; an entry that fails a check is
reported and rebuilt, never trained on. ``samples.npz`` holds plain integer arrays, read
with ``allow_pickle=False``. While rank 0 builds it rewrites a heartbeat file every
:data:`HEARTBEAT_SECONDS`; a waiting rank that sees neither an entry nor a live heartbeat
for ``silence_seconds`` (an output directory that isn't shared, a rank 0 that died)
tokenizes for itself, which gives the same samples.

    prepared = load_or_build(config, env, tokenizer, build=validated_samples)
    prepared.train, prepared.eval, prepared.record.status  # "built" | "loaded" | "tokenized"

It is over 300 lines because writing an entry atomically, reading and checking it, and the
wait of the other ranks for rank 0 are one protocol.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwenft_trainer.checkpoints import fsync_dir
from qwenft_trainer.config import TrainConfig
from qwenft_trainer.data import TokenizedSample
from qwenft_trainer.distributed import DistributedEnv
from qwenft_trainer.summary import TokenCacheRecord
from qwenft_trainer.telemetry import build_log_record, emit
from qwenft_trainer.token_keys import FORMAT, CacheKey, build_key, file_sha256

if TYPE_CHECKING:
    import numpy as np
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

CACHE_SUBDIR = "token-cache"
SAMPLES_FILE = "samples.npz"
META_FILE = "meta.json"  # written last: an entry without it is incomplete
HEARTBEAT_SECONDS = 5.0
SILENCE_SECONDS = 120.0
POLL_SECONDS = 0.25
BEAT_FILE = ".building"  # rewritten by rank 0 while it hashes, checks and builds

Samples = tuple[list[TokenizedSample], list[TokenizedSample] | None]


class DamagedEntry(Exception):
    """A cache entry that can't be trusted (partial, corrupt, or not of this key)."""


@dataclass(frozen=True)
class PreparedSamples:
    """The run's samples and where they came from."""

    train: list[TokenizedSample]
    eval: list[TokenizedSample] | None
    record: TokenCacheRecord


def cache_root(config: TrainConfig) -> Path:
    return Path(config.output_dir) / CACHE_SUBDIR


# --- storage ---------------------------------------------------------------------------


def _to_arrays(prefix: str, samples: Sequence[TokenizedSample]) -> dict[str, np.ndarray]:
    import numpy as np

    lengths = np.fromiter((len(s.input_ids) for s in samples), dtype=np.int64, count=len(samples))
    offsets = np.zeros(len(samples) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    chain = itertools.chain.from_iterable
    spans = [(i, start, end) for i, s in enumerate(samples) for start, end in s.reasoning_spans]
    return {
        f"{prefix}.offsets": offsets,
        f"{prefix}.input_ids": np.fromiter(
            chain(s.input_ids for s in samples), dtype=np.int32, count=total
        ),
        f"{prefix}.labels": np.fromiter(
            chain(s.labels for s in samples), dtype=np.int32, count=total
        ),
        f"{prefix}.truncated": np.array([s.truncated for s in samples], dtype=np.bool_),
        f"{prefix}.spans": np.array(spans, dtype=np.int64).reshape(-1, 3),
    }


def _from_arrays(prefix: str, arrays: Any, count: int) -> list[TokenizedSample]:
    import numpy as np

    try:
        offsets = arrays[f"{prefix}.offsets"]
        ids, labels = arrays[f"{prefix}.input_ids"], arrays[f"{prefix}.labels"]
        truncated, spans = arrays[f"{prefix}.truncated"], arrays[f"{prefix}.spans"]
    except (KeyError, ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise DamagedEntry(f"{SAMPLES_FILE} can't be read ({prefix}): {err}") from err
    if (
        offsets.shape != (count + 1,)
        or offsets[0] != 0
        or bool(np.any(np.diff(offsets) < 0))
        or ids.shape != labels.shape
        or ids.shape != (int(offsets[-1]),)
        or truncated.shape != (count,)
        or spans.ndim != 2
        or spans.shape[1] != 3
        or (spans.size and not (spans[:, 0].min() >= 0 and spans[:, 0].max() < count))
    ):
        raise DamagedEntry(f"{SAMPLES_FILE} holds inconsistent {prefix} arrays")
    id_list, label_list = ids.tolist(), labels.tolist()
    bounds = offsets.tolist()
    by_sample: dict[int, list[tuple[int, int]]] = {}
    for index, start, end in spans.tolist():
        by_sample.setdefault(index, []).append((start, end))
    return [
        TokenizedSample(
            id_list[bounds[i] : bounds[i + 1]],
            label_list[bounds[i] : bounds[i + 1]],
            truncated=bool(truncated[i]),
            reasoning_spans=tuple(by_sample.get(i, ())),
        )
        for i in range(count)
    ]


def _write_synced(path: Path, write: Callable[[Any], None]) -> None:
    with path.open("wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())


def write_entry(root: Path, key: CacheKey, samples: Samples, *, build_id: str) -> Path:
    """Publish the samples as entry ``root/<key.name>``: temporary directory, then rename."""
    import numpy as np

    train, held_out = samples
    arrays: dict[str, Any] = _to_arrays("train", train)
    if held_out is not None:
        arrays.update(_to_arrays("eval", held_out))
    root.mkdir(parents=True, exist_ok=True)
    temp = root / f".tmp-{key.name}-{build_id}"
    temp.mkdir()
    try:
        _write_synced(temp / SAMPLES_FILE, lambda handle: np.savez(handle, **arrays))
        meta = {
            "format": FORMAT,
            "key": key.digest,
            "inputs": key.inputs,
            "build_id": build_id,
            "created": time.time(),
            "train_samples": len(train),
            "eval_samples": None if held_out is None else len(held_out),
            "samples_sha256": file_sha256(temp / SAMPLES_FILE),
        }
        payload = (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()
        _write_synced(temp / META_FILE, lambda handle: handle.write(payload))
        fsync_dir(temp)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)  # a disk that filled up keeps no half entry
        raise
    entry = root / key.name
    if entry.exists():  # a damaged entry of this key: the caller found it untrustworthy
        shutil.rmtree(entry)
    os.replace(temp, entry)
    fsync_dir(root)
    return entry


def read_meta(entry: Path) -> dict[str, Any] | None:
    """The entry's meta.json, or None while it has none (absent or not yet complete)."""
    try:
        text = (entry / META_FILE).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise DamagedEntry(f"{META_FILE} can't be read: {err}") from err
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise DamagedEntry(f"{META_FILE} is not valid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise DamagedEntry(f"{META_FILE} holds no mapping")
    return meta


def read_entry(entry: Path, key: CacheKey, meta: dict[str, Any]) -> Samples:
    """The entry's samples, after checking its format, key, checksum and arrays."""
    import numpy as np

    if meta.get("format") != FORMAT:
        raise DamagedEntry(f"format {meta.get('format')!r}, this trainer reads {FORMAT}")
    if meta.get("key") != key.digest:
        raise DamagedEntry("it was written for another key")
    samples_file = entry / SAMPLES_FILE
    try:
        checksum = file_sha256(samples_file)
    except OSError as err:
        raise DamagedEntry(f"{SAMPLES_FILE} can't be read: {err}") from err
    if checksum != meta.get("samples_sha256"):
        raise DamagedEntry(f"{SAMPLES_FILE} does not match its checksum in {META_FILE}")
    train_count, eval_count = meta.get("train_samples"), meta.get("eval_samples")
    if not isinstance(train_count, int) or not (eval_count is None or isinstance(eval_count, int)):
        raise DamagedEntry(f"{META_FILE} lacks the sample counts")
    try:
        with np.load(samples_file, allow_pickle=False) as arrays:
            train = _from_arrays("train", arrays, train_count)
            held_out = None if eval_count is None else _from_arrays("eval", arrays, eval_count)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise DamagedEntry(f"{SAMPLES_FILE} can't be read: {err}") from err
    return train, held_out


def prune(root: Path, keep: set[Path]) -> list[Path]:
    """Remove everything under ``root`` but ``keep`` (entries of stale keys, crashed builds)."""
    removed = []
    for child in root.iterdir():
        if child in keep:
            continue
        try:
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink(missing_ok=True)
        except OSError as err:
            log.warning("can't remove the stale token cache %s: %s", child, err)
            continue
        removed.append(child)
    return removed


# --- coordination ----------------------------------------------------------------------


@contextmanager
def heartbeat(path: Path, build_id: str, every: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """Rewrite ``path`` every ``every`` seconds while the body runs; remove it after."""
    done = threading.Event()

    def beat() -> None:
        count = 0
        while True:
            try:
                path.write_text(f"{build_id} {count}\n", encoding="utf-8")
            except OSError as err:
                log.warning("can't write the token cache heartbeat %s: %s", path, err)
                return
            count += 1
            if done.wait(every):
                return

    missing = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        log.warning("can't create %s: %s", path.parent, err)
    thread = threading.Thread(target=beat, name="token-cache-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        path.unlink(missing_ok=True)
        for directory in missing:  # a refused dataset leaves no output directory behind
            try:
                directory.rmdir()
            except OSError:
                break  # not empty: the entry (or more) was written there


def _read_beat(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def wait_for_entry(
    entry: Path, key: CacheKey, beat_file: Path, *, silence_seconds: float
) -> Samples | None:
    """Rank 0's entry once it is complete; None after ``silence_seconds`` without a sign of it.

    A complete entry that fails its checks is left to rank 0 to rebuild; this waits for
    one with another build id.
    """
    rejected: set[object] = set()
    warned: set[str] = set()
    last_beat: str | None = None
    quiet_since = time.monotonic()
    while True:
        meta: dict[str, Any] | None = None
        try:
            meta = read_meta(entry)
            if meta is not None and meta.get("build_id") not in rejected:
                return read_entry(entry, key, meta)
        except DamagedEntry as err:
            rejected.add(meta.get("build_id") if meta is not None else None)
            if str(err) not in warned:
                warned.add(str(err))
                log.warning("token cache %s is damaged (%s); waiting for rank 0", entry, err)
        beat = _read_beat(beat_file)
        now = time.monotonic()
        if beat != last_beat:
            last_beat, quiet_since = beat, now
        elif now - quiet_since > silence_seconds:
            return None
        time.sleep(POLL_SECONDS)


def _load_own(entry: Path, key: CacheKey) -> Samples | None:
    """The entry when it is complete and sound (rank 0: a damaged one is rebuilt)."""
    try:
        meta = read_meta(entry)
        return read_entry(entry, key, meta) if meta is not None else None
    except DamagedEntry as err:
        log.warning("token cache %s is damaged (%s); tokenizing again", entry, err)
        return None


def load_or_build(
    config: TrainConfig,
    env: DistributedEnv,
    tokenizer: PreTrainedTokenizerBase,
    *,
    build: Callable[[TrainConfig, PreTrainedTokenizerBase], Samples],
    silence_seconds: float = SILENCE_SECONDS,
) -> PreparedSamples:
    """The run's samples: loaded from the cache, or built (rank 0 saves them for the rest).

    ``build`` validates and tokenizes; whatever it raises (an invalid dataset) propagates.
    """
    started = time.monotonic()
    root = cache_root(config)
    beat_file = root / BEAT_FILE
    status = "loaded"
    if env.is_main:
        build_id = uuid.uuid4().hex
        with heartbeat(beat_file, build_id):
            key = build_key(config, tokenizer)
            entry = root / key.name
            samples = _load_own(entry, key)
            if samples is None:
                samples = build(config, tokenizer)
                status = _save(root, key, samples, build_id=build_id)
            if status != "tokenized":
                for path in prune(root, keep={entry, beat_file}):
                    log.info("removed stale token cache %s", path)
    else:
        key = build_key(config, tokenizer)
        entry = root / key.name
        waited = wait_for_entry(entry, key, beat_file, silence_seconds=silence_seconds)
        if waited is None:
            log.warning(
                "rank %d saw no token cache %s and no rank 0 building it for %.0fs: "
                "tokenizing here (is output_dir on a volume every node shares?)",
                env.rank,
                entry,
                silence_seconds,
            )
            waited, status = build(config, tokenizer), "tokenized"
        samples = waited
    seconds = round(time.monotonic() - started, 3)
    record = TokenCacheRecord(status=status, key=key.digest, path=str(entry), seconds=seconds)
    train, held_out = samples
    log.info(
        "token cache %s %s: %d train, %s eval samples in %.1fs",
        key.name,
        status,
        len(train),
        "no" if held_out is None else len(held_out),
        seconds,
    )
    emit(build_log_record("token_cache", rank=env.rank, **record.model_dump()))
    return PreparedSamples(train, held_out, record)


def _save(root: Path, key: CacheKey, samples: Samples, *, build_id: str) -> str:
    """Write the entry: "built", or "tokenized" when it can't be saved."""
    try:
        write_entry(root, key, samples, build_id=build_id)
    except OSError as err:
        log.warning("can't save the token cache in %s (%s); a restart tokenizes again", root, err)
        return "tokenized"
    return "built"
