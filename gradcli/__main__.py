"""`python -m gradcli` is the `gradcli` command."""

from gradcli.launch import main

if __name__ == "__main__":
    main()
