"""The flowopd command line (Typer + rich)."""
