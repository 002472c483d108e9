"""The kafka broker: URL options, wire format, publisher and consumer."""
