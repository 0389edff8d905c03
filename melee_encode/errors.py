"""The error family: every error this toolkit raises about its input derives from `MeleeError`.

The message of each is one line that says what is wrong and, where it can, what to do. Commands
catch `MeleeError` only (`run_command`), print `<command>: error: <reason>` and exit with code 2;
anything else is a bug and keeps its traceback. `melee_model` adds its own (checkpoints, an encoding
mismatch) on the same base.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class MeleeError(Exception):
    """Base of every error about the toolkit's input; the message is the one-line reason."""


class ConfigError(MeleeError, ValueError):
    """A config file, option or argument value that cannot work as given."""


class ReplayError(MeleeError):
    """A replay that cannot become a 1v1 training game."""


class SourceError(MeleeError):
    """An input that is not a replay, folder or archive we can read."""


class StoreError(MeleeError):
    """A store that cannot be opened or written as asked."""


class LeaseError(StoreError):
    """The store is leased to another live writer, or this writer lost its lease."""


def run_command(prog: str, main: Callable[[], int]) -> int:
    """Run a command's `main`; a MeleeError becomes one line on stderr and exit code 2."""
    try:
        return main()
    except MeleeError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
