"""``python -m ratlit.evaluate``: the command lives in :mod:`ratlit.cli.evaluate`."""

from ratlit.cli.evaluate import main

if __name__ == "__main__":
    main()
