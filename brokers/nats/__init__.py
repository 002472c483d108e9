"""The nats broker: URL options, wire format, publisher and consumer."""
