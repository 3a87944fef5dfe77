"""Sub-commands of ``edgecnn``: one module each (HELP, add_arguments, run)."""
