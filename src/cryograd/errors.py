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


#: Environment variable naming the folder where a rank started by ``cryograd --nproc`` leaves its
#: error line for the launcher, which prints one line for the whole job.
REPORT_DIR_VARIABLE = "CRYOGRAD_REPORT_DIR"


def print_error(message: str) -> None:
    """Print ``cryograd: error: <message>`` on stderr, or hand it to the launcher.

    A process started by cryograd's own launcher (``$CRYOGRAD_REPORT_DIR`` set) writes the line to
    ``rank<RANK>.txt`` there instead, so that a job whose ranks all stop prints one line, not one
    per rank. Anything that goes wrong writing there falls back to stderr.
    """
    import os
    import sys

    folder = os.environ.get(REPORT_DIR_VARIABLE)
    if folder:
        try:
            path = os.path.join(folder, f"rank{int(os.environ.get('RANK', '0'))}.txt")
            with open(path + ".tmp", "w", encoding="utf-8") as fh:
                fh.write(message)
            os.replace(path + ".tmp", path)
            return
        except (OSError, ValueError):
            pass
    sys.stderr.write(f"cryograd: error: {message}\n")
    sys.stderr.flush()


def read_reports(folder: str) -> dict[int, str]:
    """The error lines left by ranks in ``folder`` (see :func:`print_error`), by rank."""
    import os

    reports: dict[int, str] = {}
    try:
        names = os.listdir(folder)
    except OSError:
        return reports
    for name in names:
        if name.startswith("rank") and name.endswith(".txt"):
            try:
                with open(os.path.join(folder, name), encoding="utf-8") as fh:
                    reports[int(name[4:-4])] = fh.read().strip()
            except (OSError, ValueError):
                continue
    return reports
