"""The edges to outside systems: Kafka, object storage, content-addressed media names."""
