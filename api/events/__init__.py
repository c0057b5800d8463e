"""Domain events: written to the transactional outbox (`outbox`), published to RabbitMQ by the relay."""
