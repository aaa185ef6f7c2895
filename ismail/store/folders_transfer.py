"""How messages enter a folder: APPEND, COPY and MOVE, each crash-safe.

The order is the same for all three, and it is what makes a SIGKILL at any
point harmless:

1. the message file is ready (APPEND: written to tmp/ and fsync'd; COPY and MOVE:
   the source file exists);
2. under the destination's lock, its index gets the new UIDs and is written
   durably, so UIDNEXT has passed them before anyone hears of them;
3. still under the lock, the files are put in place, each in one atomic step
   (rename from tmp/, hard link, or for MOVE a rename out of the source folder);
4. the destination's cur/ is fsync'd; for MOVE the source index then forgets them.

A crash after 2 leaves UIDs that name no file: wasted, never reused.  A view that
reads the index does so under the same lock, so it never sees a line whose file
is still on its way.  MOVE never copies: after any crash a moved message is in
the source or in the destination, once.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

from ..fsutil import unique_name
from .folders_box import Box, date_from_key, discard, size_from_key, sizes_suffix
from .folders_flags import INFO_SEP, SYSTEM_FLAGS, info_keywords, letters, normalize_flags
from .folders_model import MessageRef
from .uidlist import retry_windows

log = logging.getLogger("ismail.folders")


def append_to(box: Box, data: bytes | str | Path, flags: Iterable[str] = (),
              internaldate: float | None = None) -> int:
    """APPEND into ``box``: tmp/, fsync, UID in the index, rename into cur/, fsync cur/."""
    wanted = normalize_flags(flags)
    names = sorted(f for f in wanted if f not in SYSTEM_FLAGS)
    tmp, size, crlf_size = box.write_tmp(data)
    try:
        key = f"{tmp.name},S={size},W={crlf_size}"
        if internaldate is not None:
            os.utime(tmp, (internaldate, internaldate))
        with box.locked():
            table = box.keywords.define(names) if names else {}
            info = "2," + "".join(sorted(letters(wanted, table)))
            index = box.index_locked()
            uid = index.add(key, None, internaldate)
            box.write_locked(index)
            os.replace(tmp, box.cur / (key + INFO_SEP + info))
    except BaseException:
        discard(tmp)
        raise
    box.sync_dirs([box.cur])
    return uid


def copy_into(source: Box, refs: list[MessageRef], target: Box) -> list[tuple[int, int]]:
    """COPY: a new name (hard link, else a real copy) in ``target`` for each of ``refs``."""
    plan = [(ref, unique_name() + sizes_suffix(ref.key)) for ref in refs]
    pairs: list[tuple[int, int]] = []
    with target.locked():
        index = target.index_locked()
        table = _dest_keywords(target, refs)
        uids = [index.add(key, ref.size if size_from_key(key) is None else None, ref.internaldate)
                for ref, key in plan]
        target.write_locked(index)
        for (ref, key), new_uid in zip(plan, uids):
            if _place_copy(source, ref, key, target, table):
                pairs.append((ref.uid, new_uid))
    target.sync_dirs([target.cur])
    return pairs


def move_into(source: Box, refs: list[MessageRef], target: Box) -> list[tuple[int, int]]:
    """MOVE: rename each file of ``refs`` into ``target``'s cur/, then drop it from ``source``'s index."""
    pairs: list[tuple[int, int]] = []
    touched = {target.cur}
    with target.locked():
        index = target.index_locked()
        table = _dest_keywords(target, refs)
        plan = []
        for ref in refs:
            # A key the destination has seen before would bring its old UID back to life.
            key = ref.key if ref.key not in index.uids else unique_name() + sizes_suffix(ref.key)
            date = ref.internaldate if date_from_key(key) != ref.internaldate else None
            size = ref.size if size_from_key(key) is None else None
            plan.append((ref, key, index.add(key, size, date)))
        target.write_locked(index)
        for ref, key, new_uid in plan:
            moved_from = _place_move(source, ref, key, target, table)
            if moved_from is not None:
                touched.add(moved_from)
                pairs.append((ref.uid, new_uid))
    source.sync_dirs(touched)
    moved = {uid for uid, _ in pairs}
    with source.locked():
        index = source.index_locked()
        drop = [ref.key for ref in refs if ref.uid in moved and index.uids.get(ref.key) == ref.uid]
        for key in drop:
            index.remove(key)
        if drop:
            source.write_locked(index)
    return pairs


def _dest_keywords(target: Box, refs: list[MessageRef]) -> dict[str, str]:
    """Letters in ``target`` for every keyword of ``refs`` (the caller holds target's lock)."""
    names = sorted({f for ref in refs for f in ref.flags if f not in SYSTEM_FLAGS})
    return target.keywords.define(names) if names else {}


def _dest_info(source: Box, info: str, target: Box, table: dict[str, str]) -> str:
    """The info part for the new name in ``target``: keyword letters re-mapped to its table."""
    if target is source or target.path == source.path:
        return info if info.startswith("2,") else "2,"
    carry, names = info_keywords(info, source.keywords)
    out = set(carry)
    for name in names:
        letter = table.get(name) or target.keywords.find(name)
        if letter:
            out.add(letter)
    return "2," + "".join(sorted(out))


def _place_copy(source: Box, ref: MessageRef, key: str, target: Box, table: dict[str, str]) -> bool:
    src, filename = ref.subdir, ref.filename
    for _ in range(10):
        info = filename[len(ref.key) + 1:]
        dest = target.cur / (key + INFO_SEP + _dest_info(source, info, target, table))
        try:
            os.link(src / filename, dest)
            return True
        except FileNotFoundError:
            found = source.locate(ref.key)  # renamed by another session meanwhile
            if found is None:
                return False
            src, filename, _ = found
        except OSError:
            return _copy_file(src / filename, dest, target)
    return False


def _copy_file(src: Path, dest: Path, target: Box) -> bool:
    """A real copy where links fail (FAT, some shares): tmp/, fsync, rename."""
    tmp = target.tmp / dest.name
    try:
        with open(src, "rb") as f, open(tmp, "xb") as out:
            while block := f.read(1 << 20):
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
        return True
    except FileNotFoundError:
        discard(tmp)
        return False
    except BaseException:
        discard(tmp)
        raise


def _place_move(source: Box, ref: MessageRef, key: str, target: Box, table: dict[str, str]) -> Path | None:
    """Rename the file into ``target``; the directory it came from, or None if it is gone."""
    src, filename = ref.subdir, ref.filename
    for _ in range(10):
        info = filename[len(ref.key) + 1:]
        dest = target.cur / (key + INFO_SEP + _dest_info(source, info, target, table))
        try:
            retry_windows(os.replace, src / filename, dest)
            return src
        except FileNotFoundError:
            found = source.locate(ref.key)
            if found is None:
                return None
            src, filename, _ = found
        except OSError as e:
            # In use (Windows), or another volume: it stays where it is. A copy and a
            # delete could leave it in both places after a crash, which MOVE must not.
            log.warning("could not move %s: %s", src / filename, e)
            return None
    return None
