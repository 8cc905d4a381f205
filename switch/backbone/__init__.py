"""The backbone: the outbox (spool, couriers) and its sinks (Kafka, PostgreSQL, webhooks,
a file), the call events, and the checkpoints."""
