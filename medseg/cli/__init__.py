"""Command-line interface: one module per command group; each only parses, calls the library and prints."""
