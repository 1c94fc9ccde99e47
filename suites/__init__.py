"""Suite definitions (TOML), shipped as package data."""
