"""The GPU worker: pulls jobs (urgent first), analyses full CT volumes, writes results."""
