"""One exception type for mistakes a user can fix (bad config, missing file, bad data).

The CLI prints these as a single line and exits non-zero, without a traceback; anything
else is a bug and keeps its traceback.
"""


class NCNError(Exception):
    """A user-facing error: the message alone must say what is wrong and how to fix it."""

    exit_code = 2
