"""The one exception type for problems a user can fix."""


class JaxgenError(Exception):
    """Bad input or environment: the message names the problem and the fix in one sentence.

    The command-line scripts print it as ``error: <message>`` and exit with status 2; library
    callers can catch it.
    """
