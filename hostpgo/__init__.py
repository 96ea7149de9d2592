"""What every hostpgo package shares: the error family, the one runner, atomic writes, the layered-TOML loader."""
