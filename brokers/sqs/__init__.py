"""The sqs broker: URL options, wire format, publisher and consumer."""
