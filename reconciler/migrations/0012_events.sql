-- Lifecycle events (issue 21): a transactional outbox. Every lifecycle fact (a workspace
-- provisioned, a commit refused, a rollout paused, ...) is a row here, written in the same
-- transaction as the state change that causes it, as a CloudEvents 1.0 JSON document.
--
-- `position` orders every event in commit order (readers resume after the last position they
-- saw: `/v1/events`' `Last-Event-ID`): it is taken from the `event_counters` row `#all`, whose
-- row lock is held until the writing transaction commits, so a position is never visible
-- before every smaller one is. `sequence` counts per stream (region/environment, or the
-- control plane's scope for facts of the whole fleet: commits, rollouts).
CREATE TABLE events (
    position        BIGINT PRIMARY KEY,
    stream          TEXT NOT NULL,             -- sgp-1/prod, or the scope label (e.g. *)
    sequence        BIGINT NOT NULL,           -- 1, 2, 3, ... per stream
    id              TEXT NOT NULL,             -- CloudEvents id: <stream>:<sequence>
    kind            TEXT NOT NULL,             -- io.cplane.workspace.provisioned, ...
    workspace       TEXT NOT NULL,             -- the workspace it concerns; '' for none
    created_at      BIGINT NOT NULL,           -- unix millis
    body            TEXT NOT NULL              -- the CloudEvent, JSON
);
CREATE UNIQUE INDEX events_stream_sequence ON events (stream, sequence);
CREATE INDEX events_created ON events (created_at);

-- The next number of each stream, and of every event (`#all`).
CREATE TABLE event_counters (
    stream          TEXT PRIMARY KEY,
    last            BIGINT NOT NULL
);

-- Notifications: each sink's deliveries still to make or given up on (dead letters). A row
-- is claimed by one replica at a time (`leased_by` until `lease_until`), so an event reaches
-- a sink once across replicas; receivers de-duplicate redeliveries by the event id.
CREATE TABLE event_deliveries (
    sink            TEXT NOT NULL,
    position        BIGINT NOT NULL,
    state           TEXT NOT NULL,             -- pending | dead
    attempts        BIGINT NOT NULL,
    next_at         BIGINT NOT NULL,           -- unix millis of the next attempt
    leased_by       TEXT NOT NULL,             -- '' when not claimed
    lease_until     BIGINT NOT NULL,
    last_error      TEXT NOT NULL,
    PRIMARY KEY (sink, position)
);
CREATE INDEX event_deliveries_due ON event_deliveries (state, next_at);

-- How far each sink's routes have been expanded into `event_deliveries` (a position).
CREATE TABLE event_cursors (
    sink            TEXT PRIMARY KEY,
    position        BIGINT NOT NULL
);

-- Agents gone quiet: when a cluster was found without a report for too long (NULL: it reports).
ALTER TABLE cluster_status ADD COLUMN offline_since BIGINT;
