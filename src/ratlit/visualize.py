"""``python -m ratlit.visualize``: the command lives in :mod:`ratlit.cli.visualize`."""

from ratlit.cli.visualize import main

if __name__ == "__main__":
    main()
