"""One module per broker: consumers the runner loads by URL scheme."""
