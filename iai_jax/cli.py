"""What every command-line entry point shares: absl flags and the config.

Every ``python -m iai_jax.*`` command and every script parses absl flags
(``--name=value``; ``--helpfull`` lists them). Those that take a config
define it with :func:`define_config_flag` (``--config=FILE[:variants]``
plus ``--config.some.key=value`` overrides) and start with :func:`run`,
which fails in a second, with one line naming the problem, on a config file
that does not exist, an unknown variant or key, or a value that cannot work
(:func:`iai_jax.config_lib.check_config` after the file's own edits and
after every override) - before any dataset or model work.
"""

from __future__ import annotations

import logging as logging_std
import sys
from typing import Callable

from absl import app, flags, logging
from ml_collections import config_flags


def define_config_flag(required: bool = True):
  """The ``--config`` flag (a configs/*.py file, optionally ``:variants``)."""
  holder = config_flags.DEFINE_config_file(
      'config', None, 'A configs/*.py file, optionally with ":variants" '
      '(e.g. configs/ytvis19.py:r101,ms); override keys with '
      '--config.some.key=value.', lock_config=True)
  if required:
    flags.mark_flag_as_required('config')
  return holder


def _precheck(argv) -> None:
  """Load --config and look up every --config.* key before absl parses."""
  from iai_jax import config_lib
  spec, overrides = None, []
  for arg in argv[1:]:
    if arg.startswith('--config='):
      spec = arg[len('--config='):]
    elif arg.startswith('--config.'):
      overrides.append(arg[len('--config.'):].split('=', 1)[0])
  if spec is None:
    return
  try:
    config = config_lib.load_config_file(spec)
    for key in overrides:
      config_lib.check_override_key(config, key)
  except ValueError as e:
    sys.exit(f'error: {e}')


def config(holder):
  """The flag's config after its overrides, checked (exits on a bad one)."""
  from iai_jax import config_lib
  try:
    value = holder.value
  except (ValueError, TypeError) as e:  # an override of the wrong type
    sys.exit(f'error: --config: {e}')
  try:
    config_lib.check_config(value)
  except ValueError as e:
    sys.exit(f'error: {e}')
  return value


def quiet_logs() -> None:
  """orbax and absl log every checkpoint at INFO; keep WARNING unless
  --verbosity was given."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


class EventLoopNoiseFilter(logging_std.Filter):
  """Drops the "Event loop is closed" tracebacks that asyncio tasks of the
  checkpoint library can log when a process ends on an error: they bury the
  one line that says what went wrong."""

  def filter(self, record) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return not (_is_event_loop_noise(exc)
                or 'Event loop is closed' in record.getMessage())


def _is_event_loop_noise(exc) -> bool:
  return isinstance(exc, RuntimeError) and 'Event loop is closed' in str(exc)


def silence_event_loop_noise() -> None:
  """Install :class:`EventLoopNoiseFilter` on the asyncio logger and drop
  the same error where Python reports exceptions nobody could catch."""
  logger = logging_std.getLogger('asyncio')
  if not any(isinstance(f, EventLoopNoiseFilter) for f in logger.filters):
    logger.addFilter(EventLoopNoiseFilter())
  previous = sys.unraisablehook

  def unraisable(info):
    if not _is_event_loop_noise(info.exc_value):
      previous(info)

  if not getattr(previous, '_iai_quiet', False):
    unraisable._iai_quiet = True
    sys.unraisablehook = unraisable
  import threading
  previous_thread = threading.excepthook

  def thread_hook(args):
    if not _is_event_loop_noise(args.exc_value):
      previous_thread(args)

  if not getattr(previous_thread, '_iai_quiet', False):
    thread_hook._iai_quiet = True
    threading.excepthook = thread_hook


def run(main: Callable, argv=None) -> None:
  """``app.run(main)`` after the config pre-check."""
  _precheck(sys.argv if argv is None else argv)
  silence_event_loop_noise()
  app.run(main, argv=argv)


def parse_own_flags(argv, define: Callable[[flags.FlagValues], None],
                    usage: str) -> flags.FlagValues:
  """absl flags of a command that a library module also offers as a
  function (``python -m iai_jax.evaluate``): parsed into a FlagValues of
  its own, so importing the module defines no global flag.

  ``argv``: the arguments without the program name (None: sys.argv[1:]).
  ``define(fv)`` defines the flags on ``fv``. A bad flag exits with one line.
  """
  fv = flags.FlagValues()
  define(fv)
  args = list(sys.argv[1:] if argv is None else argv)
  if '--help' in args or '-h' in args:
    print(usage + '\n\nflags:\n' + fv.main_module_help())
    sys.exit(0)
  try:
    rest = fv(['prog'] + args)
    fv.validate_all_flags()
  except flags.Error as e:
    sys.exit(f'error: {e}\nusage: {usage}')
  if len(rest) > 1:
    sys.exit(f'error: unexpected arguments {" ".join(rest[1:])}\n'
             f'usage: {usage}')
  return fv
