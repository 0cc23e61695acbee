"""Safe file output: early checks, atomic and durable publication, cleanup on any interruption.

Every file the package writes (samples, checkpoints, JSON, plots) goes through `atomic_output`:
a hidden temp file in the target's folder, created with mode 0o666 so the umask (and any default
ACL) applies as for any ordinary file; fsynced, then published under the final name with a real
no-clobber check at that moment (a hard link fails atomically if the name appeared meanwhile), and
the folder fsynced. The temp file is removed on any exception, Ctrl-C, or SIGTERM once
`install_termination_handler` has run.
"""
from __future__ import annotations

import errno
import os
import secrets
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

__all__ = ["OutputError", "Terminated", "atomic_output", "check_writable",
           "install_termination_handler"]

# link() errors meaning "this file system has no hard links", not "you may not"
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK,
                  errno.ENOSYS}


class OutputError(ValueError):
    """An output path that cannot be written; the message names the path and the problem."""


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM, so that cleanup runs as on Ctrl-C."""


def _exists_error(path: Path) -> FileExistsError:
    return FileExistsError(f"{path} exists; pass --force to overwrite it")


def check_writable(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Fail early, before expensive work, if `path` cannot be written; returns it as a Path.

    Creates missing parent folders. Raises OutputError for a folder given as the path or a parent
    that cannot be created or written to, FileExistsError for an existing file without overwrite.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder, not a file; name a file (inside it, if you like)")
    if os.path.lexists(path) and not overwrite:
        raise _exists_error(path)
    parent = path.parent
    blocker = next((p for p in (parent, *parent.parents) if os.path.lexists(p)), None)
    if blocker is not None and not blocker.is_dir():
        raise OutputError(f"cannot write {path}: {blocker} is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot write {path}: cannot create the folder {parent} "
                          f"({e.strerror or e})") from None
    try:
        _make_temp(path).unlink()
    except OSError as e:
        raise OutputError(f"cannot write {path}: cannot create files in {parent} "
                          f"({e.strerror or e})") from None
    return path


def _make_temp(path: Path) -> Path:
    """Create an empty, new, hidden `.<name>.<random>.tmp` next to path (mode 0o666 & ~umask)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def _fsync(path: Path, directory: bool = False) -> None:
    if directory and os.name != "posix":
        return  # folders cannot be opened (nor need fsync) on Windows
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError as e:
        if not (directory and e.errno == errno.EINVAL):  # some file systems refuse folder fsync
            raise
    finally:
        os.close(fd)


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic: fails if path exists, whoever created it and whenever
    except FileExistsError:
        raise _exists_error(path) from None
    except OSError as e:
        if e.errno not in _NO_HARD_LINKS:
            raise
        try:  # no hard links here: reserve the name atomically, then rename over our reservation
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            raise _exists_error(path) from None
        try:
            os.replace(tmp, path)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
    else:
        tmp.unlink()


@contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp path next to `path`; write it (and close it) inside the block.

    On normal exit the temp file is fsynced and published as `path` (replacing it only with
    overwrite; otherwise FileExistsError if it exists at that moment), then the folder is
    fsynced. On any exception, KeyboardInterrupt and Terminated included, the temp is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _make_temp(path)
    try:
        yield tmp
        _fsync(tmp)
        _publish(tmp, path, overwrite)
        _fsync(path.parent, directory=True)
    except BaseException:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def _raise_terminated(signum: int, frame) -> None:
    raise Terminated(f"terminated by signal {signum} (SIGTERM)")


def install_termination_handler() -> bool:
    """Make SIGTERM raise Terminated in the main thread. Idempotent; leaves a handler installed
    by someone else (or an ignored SIGTERM) alone. Returns whether ours is in place."""
    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(signal.SIGTERM)
    if current is _raise_terminated:
        return True
    if current is not signal.SIG_DFL:
        return False
    signal.signal(signal.SIGTERM, _raise_terminated)
    return True
