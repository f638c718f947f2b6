"""The ``rnnlab`` subcommands: each handler parses its arguments, calls the library and prints
through :mod:`rnnlab.reports`; :mod:`rnnlab.cli` dispatches to them and turns errors into one
line."""
