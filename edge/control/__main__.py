"""`python -m edge.control control --data DIR` and the client commands, before (and besides)
their registration on the main `edge` CLI."""

from edge.control.commands import control_app

control_app()
