"""`python -m edge.control control --data DIR` and every client command of the control plane,
as `edge` offers them (edge.control.command_groups), without the node and build commands."""

from edge.control.command_groups import control_cli

control_cli()()
