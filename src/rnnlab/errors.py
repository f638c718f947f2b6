"""The one exception type that the CLI turns into a one-line message."""


class RnnlabError(Exception):
    """A problem the user can fix (bad input, missing file, wrong option).

    The CLI prints ``rnnlab: error: <message>`` and exits with status 2; library callers
    can catch it like any other exception.
    """
