"""Files: the one atomic-write helper, the one file-state digest, and JSON reading with errors that name the file.

Every file medseg writes (images, metrics, summaries, reports, plans, manifests, ledgers' side files, pipeline
state, checkpoints) goes through :func:`atomic_write`: the bytes go to a hidden temporary file in the destination
folder (``.NAME.tmpPID``), are flushed and fsynced, and the temporary file is renamed over ``NAME``
(``os.replace``, atomic on POSIX). A process killed at any moment, or a disk that fills up, leaves either the
previous file or the complete new one under the final name — never a truncated one — and the error names the final
file, never the temporary one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from medseg.errors import MedsegError, OutputError

__all__ = [
    "LOCK_NAME",
    "FolderLock",
    "atomic_json",
    "atomic_text",
    "atomic_write",
    "atomic_write_many",
    "atomic_write_via",
    "is_disk_full",
    "nesting_depth",
    "os_problem",
    "part_lock_name",
    "read_json",
    "remove_stale_temporaries",
    "state_digest",
]

#: How deep JSON nesting may go before a file is refused (Python's parser recurses; real files nest < 20 levels).
MAX_JSON_DEPTH = 200

_PROBLEMS = {
    errno.ENOSPC: "no space left on the disk",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOENT: "no such file or folder",
    errno.ENOTDIR: "a path component is a file, not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.EFBIG: "the file is too large for this file system",
    errno.EIO: "input/output error (failing disk or network file system)",
}


def os_problem(exc: BaseException) -> str:
    """The problem an ``OSError`` (or ``MemoryError``) stands for, in words, without file names in it."""
    if isinstance(exc, MemoryError):
        return "not enough memory"
    code = getattr(exc, "errno", None)
    if code in _PROBLEMS:
        return _PROBLEMS[code]
    text = getattr(exc, "strerror", None) or " ".join(str(exc).split()) or type(exc).__name__
    return str(text)[:200]


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) means the disk or the quota is full."""
    seen: set[int] = set()
    item: BaseException | None = exc
    while item is not None and id(item) not in seen:
        seen.add(id(item))
        if getattr(item, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(item)
        if _PROBLEMS[errno.ENOSPC] in text or _PROBLEMS[errno.EDQUOT] in text or "disk is full" in text:
            return True
        item = item.__cause__ or item.__context__
    return False


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], Any]) -> Path:
    """Write ``path`` through ``write(binary_handle)`` on a temporary file in the same folder, fsync, rename.

    Missing parent folders are created. On any error (``KeyboardInterrupt`` included) the temporary file is removed
    and ``path`` keeps its previous content.

    Returns:
        ``path``.

    Raises:
        OutputError: The folder cannot be created or the file cannot be written (read-only, full, no permission);
            the message names ``path``.
    """
    path = Path(path)
    tmp = _stage(path, write)
    _commit([(tmp, path)])
    return path


def _stage(path: Path, write: Callable[[BinaryIO], Any]) -> Path:
    """Write the temporary file of ``path`` (``.NAME.tmpPID`` beside it) and fsync it; return its path.

    Raises:
        OutputError: Naming ``path`` (or its folder), never the temporary file; the temporary file is removed.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder: {os_problem(exc)}", path.parent) from exc
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except (OSError, MemoryError) as exc:
        _remove(tmp)
        raise OutputError(f"cannot write: {os_problem(exc)}", path) from exc
    except BaseException:
        _remove(tmp)
        raise
    return tmp


def _commit(staged: list[tuple[Path, Path]]) -> None:
    """Rename each staged temporary file over its target, then make the renames durable.

    Raises:
        OutputError: A rename failed (the temporaries not yet renamed are removed).
    """
    try:
        for tmp, path in staged:
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise OutputError(f"cannot write: {os_problem(exc)}", path) from exc
    except BaseException:
        for tmp, _ in staged:
            _remove(tmp)
        raise
    for folder in {path.parent for _, path in staged}:
        _fsync_folder(folder)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (best effort: not every file system lets a folder be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_via(path: str | os.PathLike[str], produce: Callable[[Path], Any]) -> Path:
    """Write ``path`` with a library that writes files itself (nibabel, SimpleITK), atomically.

    ``produce(target)`` writes ``target`` — a file of the same name in a hidden temporary folder beside ``path`` —
    and may write companion files there (``.nhdr``/``.mhd`` data files). Every file is fsynced, the companions are
    renamed into place first and ``path`` last, and the temporary folder is removed, whatever happens.

    Raises:
        OutputError: The folder cannot be created or written (read-only, full, no permission); names ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".medseg-write-", dir=path.parent))
    except OSError as exc:
        raise OutputError(f"cannot write into the output folder: {os_problem(exc)}", path.parent) from exc
    try:
        target = staging / path.name
        try:
            produce(target)
            written = sorted(staging.iterdir(), key=lambda p: p == target)  # companions first, the named file last
            for item in written:
                with open(item, "rb") as handle:
                    os.fsync(handle.fileno())
            for item in written:
                os.replace(item, path.parent / item.name)
        except (OSError, MemoryError) as exc:
            raise OutputError(f"cannot write: {os_problem(exc)}", path) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _fsync_folder(path.parent)
    return path


def atomic_write_many(contents: Mapping[str | os.PathLike[str], str | bytes]) -> list[Path]:
    """Write several files as one: all temporary files are written and fsynced before any is renamed into place.

    A full disk or any other error while writing leaves every previous file as it was, so files that belong
    together (``metrics.csv``, ``summary.json`` and ``report.html`` of one evaluation) never disagree.

    Raises:
        OutputError: A folder cannot be created or a file cannot be written; the message names the final file.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for target, data in contents.items():
            payload = data.encode("utf-8") if isinstance(data, str) else data
            path = Path(target)
            staged.append((_stage(path, lambda h, b=payload: h.write(b)), path))
    except BaseException:
        for tmp, _ in staged:
            _remove(tmp)
        raise
    _commit(staged)
    return [path for _, path in staged]


def atomic_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) atomically (see :func:`atomic_write`)."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda h: h.write(data))


def atomic_json(path: str | os.PathLike[str], data: Any, *, indent: int | None = 2, allow_nan: bool = False) -> Path:
    """Write ``data`` as JSON atomically; NaN and infinity are refused (they are not JSON) unless ``allow_nan``."""
    return atomic_text(path, json.dumps(data, indent=indent, allow_nan=allow_nan) + "\n")


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> None:
    """Delete the temporary files (``.NAME.tmpPID``) a killed process left in ``folder``."""
    folder = Path(folder)
    if folder.is_dir():
        for path in folder.glob(".*.tmp*"):
            _remove(path)


def state_digest(paths: Iterable[str | os.PathLike[str]], *, extra: str = "") -> str:
    """SHA-256 over the state of files: each one's absolute path, size and modification time (ns).

    A folder counts every file below it (sorted); a missing path counts as missing. ``extra`` (e.g. a command line)
    is hashed first. Used wherever medseg decides whether inputs changed: the batch ledger, stored fingerprints and
    pipeline steps.
    """
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        p = Path(os.path.abspath(path))
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for file in files:
            try:
                st = file.stat()
                digest.update(f"{file}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{file}\0missing\n".encode())
    return digest.hexdigest()


def nesting_depth(data: Any) -> int:
    """How deeply lists and mappings nest in ``data`` (an iterative walk: safe for any depth)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def read_json(path: str | os.PathLike[str], what: str = "JSON file",
              error: type[MedsegError] = MedsegError,
              object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None) -> Any:
    """Read a JSON file, raising ``error`` with one line naming the file on any problem.

    Problems caught: a missing or unreadable file, text that is not UTF-8, an empty file, invalid JSON (with line and
    column), nesting deeper than :data:`MAX_JSON_DEPTH` levels (which would exhaust Python's recursion), and a file
    too large for memory. ``object_pairs_hook`` is passed to :func:`json.loads` (e.g. to refuse repeated keys).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except (OSError, MemoryError) as exc:
        raise error(f"cannot read the {what}: {os_problem(exc)}", path) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"the {what} is not UTF-8 text (byte {exc.start})", path) from None
    if not text.strip():
        raise error(f"the {what} is empty", path)
    try:
        data = json.loads(text, object_pairs_hook=object_pairs_hook)
    except json.JSONDecodeError as exc:
        raise error(f"the {what} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
                    path) from None
    except RecursionError:
        raise error(f"the {what} nests deeper than {MAX_JSON_DEPTH} levels", path) from None
    except MemoryError:
        raise error(f"the {what} is too large to read: not enough memory", path) from None
    if nesting_depth(data) > MAX_JSON_DEPTH:
        raise error(f"the {what} nests deeper than {MAX_JSON_DEPTH} levels", path)
    return data


LOCK_NAME = ".medseg.lock"


def part_lock_name(part: int, parts: int) -> str:
    """The lock file of part ``part`` (0-based) of ``parts`` of a sharded batch."""
    return f".medseg.part-{part}-of-{parts}.lock"


class FolderLock:
    """A lock on an output folder, so that two runs never write one folder at once.

    The lock is an OS advisory lock (``flock``) on ``FOLDER/.medseg.lock``, which also records who holds it (process
    id, host, command, start time). The operating system releases it when the holder exits, even when killed, so a
    stale lock file never blocks a later run. Use as a context manager; taking a lock this process already holds
    (a command that locks its output folder and then calls a function that locks it again) is a no-op.

    A batch sharded over processes (``torchrun`` ranks, or jobs given ``--num-parts``/``--part-id``) is one run:
    each part takes ``.medseg.lock`` *shared* and its own ``.medseg.part-I-of-K.lock`` exclusively, so the parts
    work side by side while a second run of the same part, or an unsharded run, is refused.

    Args:
        folder: The folder to lock (created when missing).
        what: The command that takes it (for the message a second run gets), e.g. ``"medseg predict"``.
        wait: Wait for the holder to finish instead of refusing at once.
        part: ``(I, K)``: part I (0-based) of a batch sharded into K parts; ``None``: the whole batch.

    Raises:
        OutputError: The folder is locked by another run (``wait=False``) or cannot be created; the message names
            the folder and the holder.
    """

    #: Locks this process holds (real path and part → nesting depth): taking a held lock again is a no-op.
    _held: ClassVar[dict[tuple[str, tuple[int, int] | None], int]] = {}

    def __init__(self, folder: str | os.PathLike[str], what: str, wait: bool = False,
                 part: tuple[int, int] | None = None) -> None:
        self.folder = Path(folder)
        self.what = what
        self.wait = wait
        self.part = part
        self._handles: list[Any] = []
        self._key: tuple[str, tuple[int, int] | None] | None = None

    def __enter__(self) -> FolderLock:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; the lock is a no-op there
            return self
        self._key = (os.path.realpath(self.folder), self.part)
        if self._key in FolderLock._held:
            FolderLock._held[self._key] += 1
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot use the output folder: {os_problem(exc)}", self.folder) from exc
        try:
            if self.part is None:
                self._handles.append(self._take(LOCK_NAME, fcntl.LOCK_EX))
            else:
                self._handles.append(self._take(LOCK_NAME, fcntl.LOCK_SH))
                self._handles.append(self._take(part_lock_name(*self.part), fcntl.LOCK_EX))
        except BaseException:
            self._release()
            raise
        FolderLock._held[self._key] = 1
        return self

    def _take(self, name: str, mode: int) -> Any:
        import fcntl

        try:
            handle = open(self.folder / name, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        except OSError as exc:
            raise OutputError(f"cannot use the output folder: {os_problem(exc)}", self.folder) from exc
        try:
            fcntl.flock(handle, mode | (0 if self.wait else fcntl.LOCK_NB))
        except OSError:
            handle.close()
            raise OutputError(f"the output folder is in use by {self._holders(name)}; wait for it to finish (or pass "
                              "--wait)", self.folder) from None
        if mode == fcntl.LOCK_EX:
            import socket
            import sys
            import time

            handle.seek(0)
            handle.truncate()
            command = " ".join(["medseg", *sys.argv[1:]])[:120] if sys.argv else self.what
            part = "" if self.part is None else f" part {self.part[0]}/{self.part[1]}"
            handle.write(f"{self.what}{part} (pid {os.getpid()} on {socket.gethostname()}, started "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {command})\n")
            handle.flush()
        return handle

    def _holders(self, name: str) -> str:
        """Who holds ``name``: its recorded holder, or (for the shared folder lock) the parts that hold theirs."""
        import fcntl

        files = [self.folder / name] if name != LOCK_NAME else [self.folder / name,
                                                                 *sorted(self.folder.glob(".medseg.part-*.lock"))]
        found = []
        for path in files:
            with contextlib.suppress(OSError), open(path, "a+") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    fcntl.flock(handle, fcntl.LOCK_UN)
                    held = path.name == name and name != LOCK_NAME
                except OSError:
                    held = True
                if held:
                    handle.seek(0)
                    text = " ".join(handle.read().split())[:200]
                    if text:
                        found.append(text)
        return "; ".join(found[:4]) or "another process"

    def _release(self) -> None:
        import fcntl

        for handle in reversed(self._handles):
            with contextlib.suppress(OSError):
                fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
        self._handles = []

    def __exit__(self, *exc: object) -> None:
        if self._key is None or self._key not in FolderLock._held:
            return
        FolderLock._held[self._key] -= 1
        if FolderLock._held[self._key] > 0:
            return
        del FolderLock._held[self._key]
        self._release()
