"""The one error type users see.

Every problem with the user's input (files, columns, parameters) is raised as :class:`CryogradError`
with a message of one line that names the file (and row or column) and the problem. The command-line
interface prints it on stderr as ``cryograd: error: <message>`` and exits with status 2.
"""

from __future__ import annotations


class CryogradError(Exception):
    """A problem with the user's input or environment, reported as one line.

    Parameters
    ----------
    message
        One line naming the file (and row or column) and what is wrong with it.
    """

    exit_code: int = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
