"""Placeholder until the fused fine-path kernel lands (issue 5)."""

import sys

if __name__ == "__main__":
    print("bruno.native: no native kernel yet; the torch reference path is used", file=sys.stderr)
