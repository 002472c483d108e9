"""The redis broker: URL options, wire format, publisher and consumer."""
