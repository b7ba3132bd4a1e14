"""``python -m ratlit.report``: the command lives in :mod:`ratlit.cli.report`."""

from ratlit.cli.report import main

if __name__ == "__main__":
    main()
