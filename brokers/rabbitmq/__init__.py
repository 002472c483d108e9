"""The rabbitmq broker: URL options, wire format, publisher and consumer."""
