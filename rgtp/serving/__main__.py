"""`python -m rgtp.serving REPO [options]`: the same as `rgtp serve REPO [options]`."""

import sys

from rgtp.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
