"""Where commands write: one rule for "may this path be written" and "may this folder be replaced".

Every output a command writes (``--out``, ``--json``, ``--plot``, ``--markdown``, ``--storage``,
``--trace-dir``) is checked here *before* any work: its folder exists or can be made and is
writable, a file is not asked for where a folder is (or the reverse), and images and videos carry
a suffix we write. Files are written under a hidden temporary name in the same folder and renamed,
with the permissions the umask gives (not ``mkstemp``'s 0600); a failure leaves nothing behind and
its message names the path the user gave, never the temporary one.

A folder is replaced (``--force``) only when it is empty or holds what the command itself writes
(an rfcache bundle, by its manifest); the working directory, a folder above it and ``/`` never.
This module imports nothing heavy, so every command and the bundle writer can use it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from rfcache.errors import RfcacheError

__all__ = [
    "BUNDLE_MARKER",
    "OutputError",
    "check_file_output",
    "check_folder_output",
    "file_mode",
    "folder_mode",
    "is_bundle_folder",
    "replace_folder",
    "write_file",
]

#: the file and the field that make a folder an rfcache bundle (what ``--force`` may replace)
BUNDLE_MARKER = ("manifest.json", "format", "rfcache-bundle")
_MAX_MARKER_BYTES = 16 * 2**20


class OutputError(RfcacheError, ValueError):
    """An output path cannot be used, or a folder may not be replaced."""


def _where(flag: str | None, path: Path | str) -> str:
    return f"{flag} {path}" if flag else str(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file here (0o666 less the umask)."""
    return 0o666 & ~_umask()


def folder_mode() -> int:
    """The mode ``mkdir`` would give a new folder here (0o777 less the umask)."""
    return 0o777 & ~_umask()


def _existing_ancestor(path: Path) -> Path:
    probe = path.parent if str(path.parent) else Path(".")
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def _check_writable_folder(folder: Path, where: str) -> None:
    """``folder`` (an existing path) is a folder a file can be created in; tried, not guessed."""
    if not folder.is_dir():
        raise OutputError(f"{where}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".rfcache-probe.", dir=folder)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise OutputError(f"{where}: cannot create a file in {folder} ({why})") from None
    os.close(fd)
    os.unlink(probe)


def check_file_output(
    path: str | os.PathLike[str], *, flag: str | None = None, suffixes: Iterable[str] | None = None, what: str = "file"
) -> Path:
    """``path`` can be written as a file: not a folder, a known suffix (``suffixes``, lower case with
    the dot), and its folder exists (or its nearest existing ancestor is a folder) and is writable.
    Nothing is created. Returns ``path`` as a :class:`Path`."""
    path = Path(path)
    where = _where(flag, path)
    if path.is_dir() or str(path).endswith(os.sep):
        raise OutputError(f"{where}: is a folder; give a {what} name")
    if suffixes is not None:
        allowed = tuple(suffixes)
        if path.suffix.lower() not in allowed:
            names = ", ".join(allowed[:-1]) + " or " + allowed[-1] if len(allowed) > 1 else allowed[0]
            raise OutputError(f"{where}: a {what} is written as {names}")
    if path.exists() and not path.is_file():
        raise OutputError(f"{where}: exists and is not a regular file")
    _check_writable_folder(_existing_ancestor(path), where)
    return path


def _protected(path: Path) -> bool:
    """``/``, the working directory, or a folder above it."""
    try:
        target = path.resolve()
        cwd = Path.cwd().resolve()
    except OSError:
        return True
    return target == target.parent or target == cwd or target in cwd.parents


def is_bundle_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder whose manifest says it is an rfcache bundle."""
    name, key, value = BUNDLE_MARKER
    manifest = Path(path) / name
    try:
        if manifest.is_symlink() or not manifest.is_file() or manifest.stat().st_size > _MAX_MARKER_BYTES:
            return False
        data = json.loads(manifest.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get(key) == value


def _replaceable(path: Path, ours: Callable[[Path], bool]) -> bool:
    try:
        empty = not any(path.iterdir())
    except OSError:
        return False
    return empty or ours(path)


def check_folder_output(
    path: str | os.PathLike[str],
    *,
    flag: str | None = None,
    force: bool = False,
    ours: Callable[[Path], bool] | None = is_bundle_folder,
    what: str = "bundle",
) -> Path:
    """``path`` can be written as a folder (a whole folder written at once, e.g. a bundle).

    An existing ``path`` needs ``force`` and must then be empty or ``ours`` (by default: an rfcache
    bundle); with ``ours=None`` an existing folder is written into (``--trace-dir``). ``/``, the
    working directory and the folders above it are refused whatever ``force`` says.
    """
    path = Path(path)
    where = _where(flag, path)
    if path.exists() or path.is_symlink():
        if not path.is_dir() or path.is_symlink():
            raise OutputError(f"{where}: exists and is not a folder")
        if ours is not None:
            if _protected(path):
                raise OutputError(f"{where}: is the working directory, a folder above it or /; never replaced")
            if not force:
                raise OutputError(f"{where}: already exists; choose another {flag or 'path'} or pass --force")
            if not _replaceable(path, ours):
                raise OutputError(
                    f"{where}: not an rfcache {what} and not empty; --force replaces only a {what} it wrote "
                    "(folder left untouched)"
                )
        _check_writable_folder(path if ours is None else _existing_ancestor(path), where)
    else:
        _check_writable_folder(_existing_ancestor(path), where)
    return path


def replace_folder(
    built: Path, out: Path, *, force: bool = False, ours: Callable[[Path], bool] | None = is_bundle_folder
) -> Path:
    """Rename the complete folder ``built`` to ``out``, replacing ``out`` only as
    :func:`check_folder_output` allows (checked again here, right before removing anything)."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        check_folder_output(out, force=force, ours=ours or (lambda _: False))
        shutil.rmtree(out)
    os.chmod(built, folder_mode())
    built.rename(out)
    return out


def write_file(
    path: str | os.PathLike[str], write: Callable[[Path], object], *, flag: str | None = None, suffix: str = ""
) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a hidden temporary file in the same folder
    (ending in ``suffix``, for writers that choose a format by suffix), which is then given the
    umask's mode and renamed to ``path``. Parent folders are created. On any failure the temporary
    file is removed and an :class:`OSError` becomes one line naming ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"{_where(flag, path)}: cannot write ({exc.strerror or type(exc).__name__})") from None
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"{_where(flag, path)}: cannot write ({exc.strerror or type(exc).__name__})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path
