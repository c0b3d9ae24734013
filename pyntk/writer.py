"""Carrying out an edit plan, transactionally: lock, re-check, then either patch the changed
values in place (same sizes) or rewrite: metadata re-encoded, tensor data copied unchanged to a
temporary file beside the model, fsync, verify, atomic rename. The file is always the whole old
one or the whole new one; the rename (or the in-place write) is the commit point, and
:func:`is_applied` tells afterwards which side of it an interrupted edit stopped on.

Temporary files are named ``.MODEL.gguf.pyntk-tmp-PID`` and locked (flock) while being written, so
any pyntk process can tell a live one from one left by a killed edit, whatever its process id
means in that process's namespace (containers).

One transaction, kept whole (over 500 lines): locking, temporary files and the copy must be read together
to see that the file is always the whole old one or the whole new one.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import struct
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from gguf import GGUFValueType, Keys

from .edit import EditPlan, NewValue, replan
from .errors import PyntkError
from .gguf_file import Entry, GGUFFile, encode_entry, encode_value
from .record import LAYOUT_KEY, RECORD_PREFIX

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, run one edit at a time
    fcntl = None

TEMP_MARK = ".pyntk-tmp-"  # temporary files are named .MODEL.gguf.pyntk-tmp-PID
COPY_CHUNK = 32 << 20
SPACE_MARGIN = 16 << 20  # free space kept beyond the new file's size

@dataclass
class EditResult:
    plan: EditPlan
    mode: str  # "in-place", "rewrite" or "nothing"
    seconds: float
    bytes_written: int
    removed_temps: List[str] = field(default_factory=list)
    not_kept: List[str] = field(default_factory=list)  # the original's attributes a rewrite lost

    def to_dict(self) -> Dict[str, Any]:
        return {"mode": self.mode, "seconds": self.seconds, "bytes_written": self.bytes_written,
                "removed_temporary_files": list(self.removed_temps), "not_kept": list(self.not_kept)}


def _free_bytes(directory: str) -> int:
    return shutil.disk_usage(directory).free


def _writable_bits(st: os.stat_result) -> bool:
    return bool(st.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _read_only_fs(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & getattr(os, "ST_RDONLY", 1))
    except (AttributeError, OSError):
        return False


def check_writable(plan: EditPlan) -> None:
    """Refuse, naming the fix, when the edit could not be written."""
    if plan.in_place or plan.output == plan.source:
        st = os.stat(plan.source)
        if _read_only_fs(plan.source):
            raise PyntkError(f"{plan.source}: is on a read-only file system; write an edited copy "
                             f"elsewhere with -o OUT.gguf")
        if not _writable_bits(st) or not os.access(plan.source, os.W_OK):
            raise PyntkError(f"{plan.source}: the file is read-only; make it writable (chmod u+w) "
                             f"or write an edited copy with -o OUT.gguf")
    if not plan.in_place:
        directory = os.path.dirname(plan.output) or "."
        if not os.path.isdir(directory):
            raise PyntkError(f"{directory}: no such directory for the output; create it first")
        dst = os.stat(directory)
        if _read_only_fs(directory):
            raise PyntkError(f"{directory}: is on a read-only file system; write the edited copy "
                             f"elsewhere with -o OUT.gguf")
        if not _writable_bits(dst) or not os.access(directory, os.W_OK | os.X_OK):
            if plan.output != plan.source:  # -o names the place: choosing another is the fix
                raise PyntkError(f"{directory}: the directory is read-only, so -o {plan.output} cannot be "
                                 f"written; choose an -o path in a writable directory")
            raise PyntkError(f"{directory}: the directory is read-only, so the edited file cannot be "
                             f"written beside the original; make it writable (chmod u+w) or write the "
                             f"copy elsewhere with -o OUT.gguf")


@contextmanager
def _locked(path: str) -> Iterator[None]:
    """An exclusive flock on ``path``'s current inode; refuses at once if another edit holds it."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    while True:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise PyntkError(f"{path}: another pyntk process is editing this file right now; wait "
                                 f"for it to finish, then run the command again") from None
            raise
        st = os.fstat(fd)
        try:
            now = os.stat(path)
        except FileNotFoundError:
            os.close(fd)
            raise PyntkError(f"{path}: the file disappeared while pyntk was locking it; check the path") from None
        if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
            break
        os.close(fd)  # replaced by another edit in the meantime: lock the new file
    try:
        yield
    finally:
        os.close(fd)


def temp_name(output: str) -> str:
    directory, name = os.path.split(output)
    return os.path.join(directory, f".{name}{TEMP_MARK}{os.getpid()}")


def stale_temps(directory: str) -> List[str]:
    """Temporary files in ``directory`` left by interrupted edits of any model in it.

    One is stale when the process that named it is gone (its id is not running here, or is this
    process's, which is not writing it: a process started again in a fresh container often gets
    the id of the one that was killed) and no process holds its lock: a live edit keeps its
    temporary file locked, which also protects one named by a process in another pid namespace.
    """
    found = []
    try:
        names = sorted(os.listdir(directory or "."))
    except OSError:
        return []
    for entry in names:
        head, mark, pid = entry.rpartition(TEMP_MARK)
        if not (mark and head.startswith(".") and pid.isdigit()):
            continue
        path = os.path.join(directory, entry)
        if (int(pid) == os.getpid() or not _alive(int(pid))) and not _busy(path):
            found.append(path)
    return found


def remove_stale_temps(directory: str) -> List[str]:
    """Delete ``stale_temps(directory)``; returns those removed."""
    removed = []
    for stale in stale_temps(directory):
        try:
            os.unlink(stale)
            removed.append(stale)
        except OSError:
            pass
    return removed


def _busy(path: str) -> bool:
    """Whether a process holds a lock on ``path`` (True when pyntk cannot even look)."""
    if fcntl is None:  # pragma: no cover - the process id alone decides
        return False
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)  # releases the probe's lock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def apply(plan: EditPlan, *, progress: Optional[Callable[[int], None]] = None) -> EditResult:
    """Carry out a plan: re-check it under the lock, then patch in place or rewrite atomically."""
    started = time.perf_counter()
    directory = os.path.dirname(plan.output)
    if plan.nothing_to_do:  # still clear up after interrupted edits, unless an edit is under way
        try:
            with _locked(plan.source):
                removed = remove_stale_temps(directory)
        except PyntkError:  # another edit holds the lock: leave its directory alone
            removed = []
        return EditResult(plan, "nothing", 0.0, 0, removed)
    check_writable(plan)
    with _locked(plan.source):
        # Re-validate under the lock: an in-place edit re-parses (cheap with the layout hint); a
        # rewrite, which needs the whole parse anyway, reuses the plan's if the metadata bytes and
        # the size are unchanged, else parses again.
        if plan.in_place:
            fresh = replan(plan, GGUFFile(plan.source, layout_key=LAYOUT_KEY))
        elif plan.head is not None and _unchanged(plan):
            fresh = plan
        else:
            fresh = replan(plan, GGUFFile(plan.source))
        if fresh.signature() != plan.signature() or fresh.output != plan.output:
            raise PyntkError(f"{plan.source}: the file changed while this edit was being prepared; "
                             f"run the command again")
        removed = remove_stale_temps(directory)
        not_kept: List[str] = []
        if fresh.in_place:
            written = _patch(fresh)
            mode = "in-place"
        else:
            written, not_kept = _rewrite(fresh, progress)
            mode = "rewrite"
    return EditResult(fresh, mode, time.perf_counter() - started, written, removed, not_kept)


def is_applied(plan: EditPlan) -> bool:
    """Whether ``plan.output`` holds every value the plan writes, read back from the file: after an
    interruption, whether the edit took effect, wherever the interruption fell."""
    try:
        gguf = GGUFFile(plan.output, layout_key=LAYOUT_KEY)
        # pyntk.layout is written as a placeholder and filled in by the rewrite: its value is not planned
        checked = [c for c in plan.changes if not (c.key == LAYOUT_KEY and c.new is not None)]
        raws = gguf.raw_values([c.key for c in checked if c.new is not None and c.key in gguf.entries])
    except (OSError, PyntkError, ValueError):
        return False
    for c in checked:
        entry = gguf.entries.get(c.key)
        if c.new is None:
            if entry is not None:
                return False
        elif (entry is None or (entry.type, entry.array_type) != (c.new.type, c.new.array_type)
              or raws[c.key] != c.new.raw):
            return False
    return True


def _unchanged(plan: EditPlan) -> bool:
    with open(plan.source, "rb") as f:
        return os.fstat(f.fileno()).st_size == plan.file_size and f.read(len(plan.head)) == plan.head


def _patch(plan: EditPlan) -> int:
    """Write the changed values over the old ones: one pwrite spanning them all, then fsync."""
    lo = min(c.old.value_start for c in plan.changes)
    hi = max(c.old.end for c in plan.changes)
    fd = os.open(plan.source, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    try:
        span = bytearray(os.pread(fd, hi - lo, lo))
        if len(span) != hi - lo:
            raise PyntkError(f"{plan.source}: the file shrank while being edited; check it and run again")
        for c in plan.changes:
            span[c.old.value_start - lo:c.old.end - lo] = c.new.raw
        if os.pwrite(fd, bytes(span), lo) != len(span):  # pragma: no cover - a short write of < 1 page
            raise OSError(errno.EIO, "short write")
        os.fsync(fd)
    finally:
        os.close(fd)
    return hi - lo


def _needed_by_pyntk(name: str, arch: str) -> bool:
    return (name in (Keys.General.ARCHITECTURE, Keys.General.ALIGNMENT)
            or name.startswith(arch + ".") or name.startswith(RECORD_PREFIX))


def _anchor(entries: List[Entry], arch: str) -> int:
    """Index after which new keys go: after the architecture's block, before the vocabulary."""
    first_big = next((i for i, e in enumerate(entries) if e.array_type is not None and e.value is None), None)
    limit = len(entries) if first_big is None else first_big
    arch_keys = [i for i in range(limit) if entries[i].key.startswith(arch + ".")]
    if arch_keys:
        return arch_keys[-1]
    return limit - 1


def build_metadata(src: GGUFFile, desired: Dict[str, Optional[NewValue]], arch: str) -> Tuple[bytes, int]:
    """The new file's header, key/values, tensor infos and padding; and the data offset in it.

    Unchanged entries and the tensor infos are copied byte for byte (tensor offsets are relative to
    the data section); new keys go after the architecture's block.
    """
    if src.partial:
        raise ValueError("build_metadata needs a fully parsed file")
    entries = list(src.entries.values())
    with open(src.path, "rb") as f:
        head = f.read(src.data_offset)
    pieces: List[Tuple[str, bytes]] = []
    new_keys = [(k, v) for k, v in desired.items() if v is not None and k not in src.entries]
    anchor = _anchor(entries, arch)

    def encode(name: str, v: NewValue) -> bytes:
        return encode_value(GGUFValueType.STRING, name) + struct.pack("<I", int(v.type)) + v.raw

    if anchor < 0:
        pieces.extend((k, encode(k, v)) for k, v in new_keys)
    for i, e in enumerate(entries):
        if e.key in desired:
            v = desired[e.key]
            if v is not None:
                pieces.append((e.key, encode(e.key, v)))
        elif e.key == LAYOUT_KEY:  # filled in below; one of another type (a damaged file) is replaced
            pieces.append((e.key, encode_entry(e.key, GGUFValueType.ARRAY, [0, 0], GGUFValueType.UINT64)))
        else:
            pieces.append((e.key, head[e.start:e.end]))
        if i == anchor:
            pieces.extend((k, encode(k, v)) for k, v in new_keys)
    header_size = 4 + 4 + 8 + 8
    offset, prefix_end, layout_index = header_size, header_size, None
    for index, (name, raw) in enumerate(pieces):
        offset += len(raw)
        if _needed_by_pyntk(name, arch):
            prefix_end = offset
        if name == LAYOUT_KEY:
            layout_index = index
    kv_end = offset
    if layout_index is not None:
        raw = encode_entry(LAYOUT_KEY, GGUFValueType.ARRAY, [prefix_end, kv_end], GGUFValueType.UINT64)
        assert len(raw) == len(pieces[layout_index][1])
        pieces[layout_index] = (LAYOUT_KEY, raw)
    header = head[:8] + struct.pack("<QQ", src.tensor_count, len(pieces))
    infos = head[src.kv_end:src.tensor_info_end]
    meta = b"".join([header] + [raw for _, raw in pieces] + [infos])
    data_offset = -(-len(meta) // src.alignment) * src.alignment
    pad = data_offset - len(meta)
    old_pad = head[src.tensor_info_end:src.data_offset]
    padding = old_pad if len(old_pad) == pad else b"\0" * pad
    return meta + padding, data_offset


def _check_space(directory: str, needed: int) -> None:
    free = _free_bytes(directory)
    if free < needed + SPACE_MARGIN:
        raise PyntkError(f"{directory}: not enough free disk space for the rewrite (needs "
                         f"{human_size(needed + SPACE_MARGIN)}, {human_size(free)} free); free some space or write "
                         f"the edited copy to another disk with -o OUT.gguf")


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _copy_range(src_fd: int, dst_fd: int, src_off: int, dst_off: int, length: int,
                progress: Optional[Callable[[int], None]]) -> None:
    """Copy bytes between files: copy_file_range (in-kernel, reflinks where supported), else pread/pwrite.

    Each finished chunk is handed to the kernel for write-back at once (POSIX_FADV_DONTNEED starts
    it and drops the pages): the disk writes while the next chunk is copied, the final fsync has
    less left to do, and a multi-GiB rewrite does not fill the page cache with dirty pages.
    """
    use_kernel = hasattr(os, "copy_file_range")
    advise = getattr(os, "posix_fadvise", None)
    previous = None
    while length > 0:
        n = min(COPY_CHUNK, length)
        done = 0
        if use_kernel:
            try:
                done = os.copy_file_range(src_fd, dst_fd, n, src_off, dst_off)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                    raise
                use_kernel = False
                continue
        else:
            block = os.pread(src_fd, n, src_off)
            done = os.pwrite(dst_fd, block, dst_off) if block else 0
        if done <= 0:
            raise PyntkError("the model file ended early while its tensor data was being copied; the "
                             "original is untouched, check it with `pyntk info`")
        if advise is not None and previous is not None:
            try:
                advise(dst_fd, previous[0], previous[1], os.POSIX_FADV_DONTNEED)
            except OSError:  # pragma: no cover - advice only
                advise = None
        previous = (dst_off, done)
        src_off += done
        dst_off += done
        length -= done
        if progress is not None:
            progress(done)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _rewrite(plan: EditPlan, progress: Optional[Callable[[int], None]]) -> Tuple[int, List[str]]:
    """Write the new file beside the output and rename it over; returns its size and what of the
    original's attributes it could not keep."""
    src = plan.gguf if plan.gguf is not None and not plan.gguf.partial else GGUFFile(plan.source)
    meta, data_offset = build_metadata(src, plan.desired, plan.arch)
    data_len = max(0, src.file_size - src.data_offset)
    new_size = data_offset + data_len
    directory = os.path.dirname(plan.output) or "."
    _check_space(directory, new_size)
    tmp = temp_name(plan.output)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        try:
            if fcntl is not None:  # held until after the rename: marks the file as a live edit's
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            view = memoryview(meta)
            while view:
                view = view[os.write(fd, view):]
            with open(plan.source, "rb") as fsrc:
                _copy_range(fsrc.fileno(), fd, src.data_offset, data_offset, data_len, progress)
            not_kept = _keep_attributes(plan.source, fd)
            os.fsync(fd)
            if fcntl is None:  # pragma: no cover - Windows cannot rename a file still open
                os.close(fd)
                fd = -1
            _verify(tmp, src, data_offset, new_size)
            os.replace(tmp, plan.output)
        finally:
            if fd >= 0:
                os.close(fd)
    except OSError as e:
        _unlink(tmp)
        if e.errno == errno.ENOSPC:
            raise PyntkError(f"{directory}: the disk filled up while writing the edited file; the "
                             f"original is untouched; free some space or use -o on another disk") from None
        raise
    except BaseException:
        _unlink(tmp)
        raise
    _fsync_dir(directory)
    return new_size, not_kept


# Mode bits a chmod may silently refuse (setgid needs membership of the file's group). A chown
# clears setuid and setgid, so the mode is set after it; and, as `cp -p` does, neither is kept when
# the owner could not be: they would then grant the rights of the user running pyntk.
_SPECIAL_BITS = ((stat.S_ISUID, "setuid bit"), (stat.S_ISGID, "setgid bit"), (stat.S_ISVTX, "sticky bit"))


def _keep_attributes(source: str, fd: int) -> List[str]:
    """Give the new file the original's owner, mode (setuid, setgid and sticky bits included) and
    extended attributes (user.*, security.selinux, ACLs ...) as far as this process may; returns
    what could not be kept, each with the reason."""
    st = os.stat(source)
    lost = []
    wanted = stat.S_IMODE(st.st_mode)
    mode = wanted
    if hasattr(os, "fchown"):
        try:
            os.fchown(fd, st.st_uid, st.st_gid)
        except OSError as e:
            lost.append(f"owner {st.st_uid}:{st.st_gid} ({e.strerror})")
            mode &= ~(stat.S_ISUID | stat.S_ISGID)
    os.fchmod(fd, mode)
    got = stat.S_IMODE(os.fstat(fd).st_mode)
    lost += [f"{name} (not permitted for this user)" for bit, name in _SPECIAL_BITS if wanted & bit and not got & bit]
    if not hasattr(os, "listxattr"):  # pragma: no cover - Linux only
        return lost
    try:
        names = os.listxattr(source)
    except OSError:  # the file system has no extended attributes
        return lost
    for name in names:
        try:
            value = os.getxattr(source, name)
        except OSError as e:
            lost.append(f"extended attribute {name} (unreadable: {e.strerror})")
            continue
        try:
            os.setxattr(fd, name, value)
        except OSError as e:
            try:  # a label the new file got anyway (SELinux's default for the directory) is kept
                same = os.getxattr(fd, name) == value
            except OSError:
                same = False
            if not same:
                lost.append(f"extended attribute {name} ({e.strerror})")
    return lost


def _verify(tmp: str, src: GGUFFile, data_offset: int, new_size: int) -> None:
    """Re-read the new file before it replaces anything: same tensors, data where expected."""
    new = GGUFFile(tmp, layout_key=LAYOUT_KEY)  # the vocabulary was copied verbatim
    same = ([(t.name, t.shape, t.type, t.offset) for t in new.tensors]
            == [(t.name, t.shape, t.type, t.offset) for t in src.tensors])
    if not same or new.data_offset != data_offset or new.file_size != new_size:
        raise PyntkError(f"internal error: the rewritten file {tmp} did not verify; the original is "
                         f"untouched (please report this)")


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
