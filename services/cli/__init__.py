"""The `trapline` command line: one typer app, its sub-apps beside it."""
