"""One module per ``ligo`` subcommand; the list lives in ``ligo.cli.COMMANDS``."""
