"""The orders service: a FastAPI app on SQLAlchemy 2 async sessions that writes its orders
and their `order.created` events in one transaction with `outbox.awrite`."""
