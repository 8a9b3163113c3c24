"""Atomic file writes whose results get the permissions a plain ``open()`` / ``mkdir()`` would give.

Why this exists: every write that matters (checkpoints, exports, tokenizers, plots) goes to a temporary name and
is renamed into place, so a crash never leaves half a file. But ``tempfile.mkstemp`` creates files with mode
``0o600`` and ``tempfile.mkdtemp`` directories with ``0o700`` on purpose (temporary files are private), and some
writers do the same internally (``safetensors.torch.save_file`` writes ``0o600``). The rename keeps that mode, so
an exported model folder was unreadable to the group and to other users (a shared model directory, a server
running as another user). These helpers give the final files ``0o666 & ~umask`` and directories
``0o777 & ~umask``, exactly what ``open()`` and ``mkdir()`` would.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux ``/proc``), else by setting and
    restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(*, directory: bool = False) -> int:
    """The mode ``open()`` (``0o666``) or ``mkdir()`` (``0o777``) gives a new file or directory under the umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def apply_default_mode(path: str | os.PathLike[str]) -> None:
    """Give ``path`` the default mode; for a directory, also everything inside it (links are left alone)."""
    path = Path(path)
    file_mode, dir_mode = default_mode(), default_mode(directory=True)
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs:
                if not os.path.islink(os.path.join(root, name)):
                    os.chmod(os.path.join(root, name), dir_mode)
            for name in files:
                if not os.path.islink(os.path.join(root, name)):
                    os.chmod(os.path.join(root, name), file_mode)
        os.chmod(path, dir_mode)
    else:
        os.chmod(path, file_mode)


def mkstemp(dir: str | os.PathLike[str], prefix: str = "", suffix: str = ".tmp") -> tuple[int, str]:
    """``tempfile.mkstemp`` in ``dir``, but the file has the default mode, so renaming it into place gives a
    normally readable file. Returns ``(fd, path)``; the caller closes ``fd``."""
    fd, tmp = tempfile.mkstemp(dir=dir, prefix=prefix, suffix=suffix)
    try:
        os.chmod(tmp, default_mode())
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, tmp


def mkdtemp(dir: str | os.PathLike[str], prefix: str = "") -> Path:
    """``tempfile.mkdtemp`` in ``dir`` with the default directory mode (so it can be renamed into place)."""
    tmp = Path(tempfile.mkdtemp(dir=dir, prefix=prefix))
    os.chmod(tmp, default_mode(directory=True))
    return tmp


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file in the same folder and an atomic rename; the
    file gets the default mode."""
    path = Path(path)
    fd, tmp = mkstemp(path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
