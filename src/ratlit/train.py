"""``python -m ratlit.train``: the command lives in :mod:`ratlit.cli.train`."""

from ratlit.cli.train import main

if __name__ == "__main__":
    main()
