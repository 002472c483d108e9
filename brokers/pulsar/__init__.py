"""The pulsar broker: URL options, wire format, publisher and consumer."""
