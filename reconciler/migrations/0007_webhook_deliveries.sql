-- Push webhook deliveries acted on (issue 13, item 6): replicas sharing this database act on
-- each delivery once — the first to insert its key does, the others find it here. Keys are
-- `<sender>:<delivery id>`; rows older than a week are pruned by the servers.
CREATE TABLE webhook_deliveries (
    delivery_key    TEXT PRIMARY KEY,
    received_at     BIGINT NOT NULL
);
CREATE INDEX webhook_deliveries_received ON webhook_deliveries (received_at);
