"""`python -m eval`: the command line in cli.py."""

from .cli import main

main()
