"""Command-line interface: thin wrappers that parse flags, call one library function, and exit."""
