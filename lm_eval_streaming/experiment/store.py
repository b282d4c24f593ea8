"""The results store of an experiment: a JSONL file of finished runs, and claims on cells in progress.

- Each finished cell is one line, a :class:`~lm_eval_streaming.records.Run` (``Run.to_dict()``),
  appended under a file lock (``<output>.lock``) in one write, flushed and fsynced. A torn last line
  (a kill in the middle of a write) is ignored on read and cut off before the next append.
- Several runners may share one output: a runner *claims* a cell (``<output>.claims.json``, under the
  same lock) before computing it, and other runners skip claimed cells. A claim records pid, host,
  process start time and a heartbeat; it is stale, and free again, when its process is gone (same
  host) or its heartbeat is older than ``STALE_AFTER_S`` (another host).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

from lm_eval_streaming.records import Run
from lm_eval_streaming.records.io import check_writable  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

STALE_AFTER_S = 600.0  # a claim from another host whose heartbeat is older than this is free again
HEARTBEAT_S = 30.0


def _lock(path: Path):
    from filelock import FileLock

    return FileLock(str(path) + ".lock")


# ------------------------------------------------------------------ finished runs
def _read_lines(path: Path) -> tuple[list[dict], int, bool]:
    """(entries with a cell key, byte offset after the last complete line, torn last line?)."""
    if not path.exists():
        return [], 0, False
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    torn = bool(data[end:].strip())
    entries, bad = [], 0
    for line in data[:end].split(b"\n"):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(entry, dict) and "cell_key" in entry and isinstance(entry.get("rows"), list):
            entries.append(entry)
    if bad or torn:
        logger.warning("%s: ignoring %s", path, ", ".join(
            ([f"{bad} line(s) that are not JSON"] if bad else []) +
            ([f"a torn last line ({len(data) - end} bytes, an interrupted write)"] if torn else [])))
    return entries, end, torn


def read_entries(path: str | os.PathLike) -> list[dict]:
    """Complete entries (old or new layout) of one JSONL file, as dicts."""
    return _read_lines(Path(path))[0]


def finished_keys(path: str | os.PathLike, experiment: str) -> set[str]:
    return {e["cell_key"] for e in read_entries(path) if e.get("experiment") == experiment}


def append_run(path: str | os.PathLike, run: Run) -> None:
    """Append one run as one full line, atomically with respect to other writers and kills, and release
    its cell's claim."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(run.to_dict()) + "\n").encode()
    with _lock(path):
        _, good_end, torn = _read_lines(path)
        if torn:  # cut the torn tail so the new line starts on a line of its own
            with open(path, "r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        _update_claims(path, lambda claims: claims.pop(run.cell_key, None))


# ------------------------------------------------------------------ claims
def _claims_path(path: Path) -> Path:
    return path.with_name(path.name + ".claims.json")


def _read_claims(path: Path) -> dict:
    try:
        claims = json.loads(_claims_path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _update_claims(path: Path, change) -> None:
    """Apply ``change(claims)`` and write the claims back atomically (caller holds the lock)."""
    claims = _read_claims(path)
    change(claims)
    target = _claims_path(path)
    if not claims:
        target.unlink(missing_ok=True)
        return
    tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(claims, indent=1))
    tmp.replace(target)


def _process_start(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return None


def my_claim(experiment: str) -> dict:
    pid, now = os.getpid(), time.time()
    return {"experiment": experiment, "pid": pid, "host": socket.gethostname(), "pid_started": _process_start(pid),
            "claimed_at": now, "heartbeat": now}


def is_stale(claim: dict, now: float | None = None) -> bool:
    """A claim whose runner is gone: dead pid (or a new process under that pid) on this host, or no
    heartbeat for STALE_AFTER_S from another host."""
    now = time.time() if now is None else now
    if claim.get("host") == socket.gethostname():
        started = _process_start(int(claim.get("pid", -1)))
        return started is None or (claim.get("pid_started") is not None and abs(started - claim["pid_started"]) > 1)
    return now - float(claim.get("heartbeat", 0)) > STALE_AFTER_S


def claim_next(path: str | os.PathLike, experiment: str, candidates: list[tuple[str, dict]]):
    """Under the lock: the first candidate ``(key, cell)`` neither finished nor claimed by a live runner,
    claimed for this process; None when there is none. Returns ``(picked, held_elsewhere)`` where
    ``held_elsewhere`` maps keys claimed by live runners to their claims."""
    path = Path(path)
    picked, held = None, {}
    with _lock(path):
        done = finished_keys(path, experiment)
        claims = _read_claims(path)
        for key, cell in candidates:
            if key in done:
                continue
            claim = claims.get(key)
            if claim is not None and claim.get("pid") != os.getpid() and not is_stale(claim):
                held[key] = claim
                continue
            picked = (key, cell)
            break
        if picked is not None:
            _update_claims(path, lambda c: c.__setitem__(picked[0], my_claim(experiment)))
    return picked, held


def release(path: str | os.PathLike, key: str) -> None:
    """Give up this process's claim on ``key`` (a failed or interrupted cell)."""
    path = Path(path)
    with _lock(path):
        _update_claims(path, lambda c: c.pop(key) if c.get(key, {}).get("pid") == os.getpid() else None)


def heartbeat(path: str | os.PathLike, key: str) -> None:
    path = Path(path)

    def beat(claims):
        if claims.get(key, {}).get("pid") == os.getpid():
            claims[key]["heartbeat"] = time.time()

    with _lock(path):
        _update_claims(path, beat)
