"""Errors about the user's input, and how the command-line tools report them.

An :class:`InputError` says what is wrong with a file or a config value in the
user's terms (the file, the key, the annotation, what was expected). The tools
print it as one line, without a traceback: the traceback would point into
torch or mmengine, not at the user's file. ``MMDEFORM_TRACEBACK=1`` shows it.
"""
import os
import re
import sys
from typing import Callable, Optional, Sequence


class ReportedError(Exception):
    """An error whose message says all a user needs; the tools print it without a traceback."""


class InputError(ReportedError):
    """A file or config value the user gave is broken; the message says which and how."""


class CheckpointReadError(InputError, ValueError):
    """A checkpoint file cannot be read (truncated, not a checkpoint, corrupt)."""


class CheckpointFamilyError(InputError, ValueError):
    """A checkpoint holds the weights of another model family than the config builds."""


class CorruptImageError(InputError, ValueError):
    """An image of a dataset cannot be decoded."""


class AnnotationError(InputError, ValueError):
    """An annotation file holds something that cannot be repaired (e.g. duplicate image ids)."""


class ConfigMismatchError(InputError, ValueError):
    """Two settings of a config contradict each other (e.g. num_classes and the classes)."""


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line.

    A DataLoader worker re-raises an error as ``Type("Caught Type in DataLoader
    worker ... Original Traceback ... Type: message")``; the message is its last line.
    """
    message = str(exc)
    if 'Original Traceback' in message:
        last = [line for line in message.splitlines() if line.strip()][-1]
        message = re.sub(rf'^([\w.]+\.)?{type(exc).__name__}: ', '', last)
    return f'{type(exc).__name__}: {message}'


REPORTED = (ReportedError, FileNotFoundError)


def run_tool_main(main: Callable, argv: Optional[Sequence[str]] = None):
    """Call ``main(argv)``; report a :class:`ReportedError` or a missing file on stderr
    and exit with status 1 instead of printing a traceback."""
    try:
        return main(argv)
    except REPORTED as exc:
        if os.environ.get('MMDEFORM_TRACEBACK'):
            raise
        # one write, newline included: print() writes the text and the newline separately,
        # and on an unbuffered stderr (PYTHONUNBUFFERED) a data-loader worker's own complaint
        # (libpng's) could land between them, on the same line
        sys.stderr.write(f'error: {one_line(exc)}\n')
        sys.stderr.flush()
        sys.exit(1)


__all__ = ['ReportedError', 'InputError', 'CheckpointReadError', 'CheckpointFamilyError', 'CorruptImageError',
           'AnnotationError', 'ConfigMismatchError', 'one_line', 'run_tool_main']
