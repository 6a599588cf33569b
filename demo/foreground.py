"""``python -m demo.foreground COMMAND...``: run ``make run``'s loop as the terminal's
foreground job, so Ctrl-C is its normal end.

Ctrl-C sends SIGINT to the terminal's foreground process group. Under ``make`` that
group holds ``make`` itself, which then dies of the signal however its recipe ends.
This puts COMMAND (honcho) in a process group of its own and makes that group the
foreground one: Ctrl-C reaches honcho (which stops every process and exits 130) and
not ``make``; the terminal goes back to ``make``'s group after. The exit status is
COMMAND's, except that the end Ctrl-C asked for (130, or death by SIGINT) is 0.
Without a terminal COMMAND simply runs in this process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

INTERRUPTED = {128 + signal.SIGINT, -signal.SIGINT}


def exit_status(code: int) -> int:
    """COMMAND's status for ``make``: 0 after Ctrl-C, 128 + N for death by signal N."""
    if code in INTERRUPTED:
        return 0
    return 128 - code if code < 0 else code


def run(argv: list[str]) -> int:
    try:
        tty = os.open("/dev/tty", os.O_RDWR)
    except OSError:  # no controlling terminal: nothing to hand over
        return exit_status(subprocess.call(argv))
    ours = os.getpgrp()
    # Taking the terminal back from the background would stop us with SIGTTOU.
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        child = subprocess.Popen(argv, process_group=0)
        with contextlib.suppress(OSError):  # not our terminal's session: run all the same
            os.tcsetpgrp(tty, child.pid)
        # A Ctrl-C that lands before the hand-over reaches us too: pass it on, don't die.
        signal.signal(signal.SIGINT, lambda *_: child.send_signal(signal.SIGINT))
        code = child.wait()
    finally:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(tty, ours)
        os.close(tty)
    return exit_status(code)


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m demo.foreground COMMAND [ARG...]")
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
