"""One module per broker: publishers the relay loads by URL scheme."""
