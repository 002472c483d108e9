"""The postgres broker: URL options, wire format, publisher and consumer."""
