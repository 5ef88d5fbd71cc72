"""Write a directory or file completely or not at all."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from compressor.errors import CompressorError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def normal_permissions(path: Path) -> None:
    """What a plain open()/mkdir() would have given: scratch files and directories are created private
    (0600/0700), and some writers (safetensors) create their files that way too."""
    mask = _umask()
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in paths:
        item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)


def check_can_write(target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise CompressorError(f"{target} already exists; pass --overwrite to replace it")


@contextlib.contextmanager
def atomic_directory(target: str | Path, overwrite: bool = False):
    """Yield a scratch directory beside ``target``; it becomes ``target`` only if the block succeeds."""
    target = Path(target)
    check_can_write(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield scratch
        normal_permissions(scratch)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
            scratch.rename(target)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            scratch.rename(target)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: str | Path, overwrite: bool = False):
    """Yield a scratch file path beside ``target``; it replaces ``target`` only if the block succeeds."""
    target = Path(target)
    check_can_write(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(prefix=f".{target.name}.partial-", dir=target.parent)
    os.close(fd)
    try:
        yield Path(scratch)
        normal_permissions(Path(scratch))
        os.replace(scratch, target)
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)
