"""`python -m gradcli` is the `gradcli` command.

`-m` puts the working directory first on sys.path (Python's own rule for the command line
the user typed). Before anything else is imported, that entry is dropped, so a `numpy.py`,
`typer.py` or `rich.py` where gradcli runs is never imported (the worker runs with `-P`
anyway). Only a `gradcli/` directory there cannot be defended against from here: Python
has already imported it as this package. The `gradcli` console script has no such entry.
"""

import os
import sys

if not sys.flags.safe_path and sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from gradcli.launch import main  # noqa: E402 - after sys.path is made safe

if __name__ == "__main__":
    main()
