"""``python -m ratlit.predict``: the command lives in :mod:`ratlit.cli.predict`."""

from ratlit.cli.predict import main

if __name__ == "__main__":
    main()
