"""The command-line tools: ``rexec`` (client) and ``rexec-server``, built with typer."""
