"""`python -m gradcli` is the `gradcli` command.

`-m` puts the working directory first on sys.path (Python's own rule for the command line
the user typed): gradcli drops it (safepath.py) before it imports anything else, so a
`numpy.py`, `typer.py` or `rich.py` where gradcli runs is never imported. Only a `gradcli/`
directory there cannot be defended against from here: Python has already imported it as
this package. The `gradcli` console script has no such entry.
"""

from gradcli.process.safepath import drop_working_directory

drop_working_directory()

from gradcli.cli.launch import main  # noqa: E402 - after sys.path is made safe

if __name__ == "__main__":
    main()
