"""``python -m ratlit.convert``: the command lives in :mod:`ratlit.cli.convert`."""

from ratlit.cli.convert import main

if __name__ == "__main__":
    main()
