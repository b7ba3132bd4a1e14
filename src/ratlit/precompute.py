"""``python -m ratlit.precompute``: the command lives in :mod:`ratlit.cli.precompute`."""

from ratlit.cli.precompute import main

if __name__ == "__main__":
    main()
