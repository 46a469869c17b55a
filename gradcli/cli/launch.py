"""The `gradcli` program's first lines: start the worker, then parse (cli.py).

A gradient command spends most of its start-up in the worker importing TensorFlow (about
3.5 s); the CLI process needs about 0.2 s to import Typer and Rich and parse. This module
imports neither: it starts the worker first (supervisor.prestart, for a command that runs
in a worker and asks for no help or version), so both start-ups overlap, then hands over to
cli.main, which gives the worker its job once parsed or kills it unheard if parsing fails.
A shell asking for tab completions (COMPLETE_VAR set) gets no worker, and neither does a
command line that is certain to fail parsing (prescan.py): a typo answers as fast as --help.
"""

from __future__ import annotations

import os
import sys

# set by the completion scripts of `gradcli --show-completion` (Typer's protocol)
COMPLETE_VAR = "_GRADCLI_COMPLETE"


def prestart(argv: list[str]) -> None:
    """Start the worker now unless the command line is certain to fail parsing."""
    from gradcli.cli.prescan import certainly_fails
    from gradcli.process import supervisor

    if supervisor.wants_worker(argv) and not certainly_fails(argv):
        supervisor.prestart(argv)


def main(argv: list[str] | None = None) -> None:
    if argv is None:  # the program itself: before anything else is imported (safepath.py)
        from gradcli.process.safepath import drop_working_directory

        drop_working_directory()
    from gradcli.process import supervisor

    try:
        if COMPLETE_VAR not in os.environ:
            prestart(sys.argv[1:] if argv is None else list(argv))
        from gradcli.cli.app import main as cli_main
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM before the CLI could take over
        supervisor.discard_prestarted()
        terminated = isinstance(exc, supervisor.Terminated)
        sys.stderr.write("terminated\n" if terminated else "interrupted\n")
        sys.exit(143 if terminated else 130)
    if argv is not None:
        cli_main(argv)
        return
    try:
        cli_main(argv)
    except SystemExit as exc:
        if "tensorflow" not in sys.modules:  # a worker ran the job: a normal exit is quick
            raise
        # GRADCLI_INPROCESS=1 ran TensorFlow here: skip its slow teardown (worker.leave)
        from gradcli.process.worker import leave

        code = exc.code
        if code is not None and not isinstance(code, int):
            sys.stderr.write(f"{code}\n")
            code = 1
        leave(code or 0)


if __name__ == "__main__":
    main()
