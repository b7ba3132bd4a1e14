"""``python -m ratlit.summary``: the command lives in :mod:`ratlit.cli.summary`."""

from ratlit.cli.summary import main

if __name__ == "__main__":
    main()
