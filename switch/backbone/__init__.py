"""The backbone: the outbox (spool, couriers) and its sinks (Kafka, PostgreSQL, webhooks,
a file), and the call events. (Checkpoints live in ``switch.cluster``.)"""
