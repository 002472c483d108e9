"""The billing service: one invoice per order, through an `Inbox` on plain psycopg."""
