"""Command-line interface: one module per subcommand, no science here.

Each command module defines ``add_parser(subparsers)`` (which registers its arguments and sets
``func``) and keeps only argument parsing, I/O and error reporting around library functions.
"""
