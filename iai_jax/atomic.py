"""Writing files and folders so that a crash never leaves half of them.

A file is written under a temporary name in its own folder, flushed to disk
and renamed over the old one (:func:`write_text`, :func:`write_json`,
:func:`write_bytes`). A folder of outputs (a converted checkpoint, the
outputs of a prediction) is written into a fresh staging folder next to it
and then swapped in as a whole (:func:`staged_dir`): until the swap the old
folder is untouched, after it the old content is gone. The staging folder
of a process killed before its swap is deleted by the next write. The swap is one
``renameat2(RENAME_EXCHANGE)`` call on Linux; elsewhere two renames.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
from typing import Any, Iterator

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _fsync_dir(path: str) -> None:
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def write_bytes(path: str, data: bytes) -> str:
  """``data`` to ``path`` via a temporary file in the same folder."""
  path = os.path.abspath(path)
  folder = os.path.dirname(path)
  tmp = os.path.join(folder, f'.{os.path.basename(path)}.tmp-{os.getpid()}')
  try:
    with open(tmp, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise
  _fsync_dir(folder)
  return path


def write_text(path: str, text: str) -> str:
  return write_bytes(path, text.encode('utf-8'))


def write_json(path: str, obj: Any, **kwargs) -> str:
  """``json.dump(obj)`` to ``path`` atomically (``kwargs`` go to dumps)."""
  return write_text(path, json.dumps(obj, **kwargs))


def _exchange(a: str, b: str) -> bool:
  """Swap two paths in one step (Linux renameat2); False where the system
  cannot."""
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.renameat2
  except (OSError, AttributeError):
    return False
  fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                 ctypes.c_char_p, ctypes.c_uint]
  if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b),
        _RENAME_EXCHANGE) == 0:
    return True
  err = ctypes.get_errno()
  if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
    return False
  raise OSError(err, os.strerror(err), b)


def replace_dir(new: str, old: str) -> None:
  """Put folder ``new`` at path ``old`` (which may not exist); the previous
  content of ``old`` is deleted after the swap."""
  if not os.path.lexists(old):
    os.rename(new, old)
    return
  if _exchange(new, old):
    shutil.rmtree(new)             # now the previous content
    return
  aside = f'{old}.old-{os.getpid()}'
  os.rename(old, aside)
  os.rename(new, old)
  shutil.rmtree(aside, ignore_errors=True)


def staging_path(final: str) -> str:
  """A fresh folder name next to ``final``, on the same file system."""
  final = os.path.abspath(final)
  return os.path.join(os.path.dirname(final),
                      f'.{os.path.basename(final)}.partial-{os.getpid()}')


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


def remove_stale_stages(final: str) -> list[str]:
  """Delete the staging folders of ``final`` left by processes that no
  longer run (killed before their swap); returns their paths."""
  final = os.path.abspath(final)
  folder, prefix = os.path.dirname(final), f'.{os.path.basename(final)}.partial-'
  removed = []
  if not os.path.isdir(folder):
    return removed
  for name in os.listdir(folder):
    pid = name[len(prefix):]
    if name.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
      shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
      removed.append(os.path.join(folder, name))
  return removed


@contextlib.contextmanager
def staged_dir(final: str) -> Iterator[str]:
  """Yields an empty staging folder; when the block ends normally it
  replaces ``final`` as a whole, when it raises (or is interrupted) it is
  removed and ``final`` stays as it was."""
  final = os.path.abspath(final)
  remove_stale_stages(final)
  stage = staging_path(final)
  if os.path.lexists(stage):
    shutil.rmtree(stage)
  os.makedirs(stage)
  try:
    yield stage
  except BaseException:
    shutil.rmtree(stage, ignore_errors=True)
    raise
  replace_dir(stage, final)
  _fsync_dir(os.path.dirname(final))
