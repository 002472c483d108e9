"""The http broker: URL options, wire format, publisher and consumer."""
