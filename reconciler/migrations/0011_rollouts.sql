-- Rollouts (issue 16): a revision's bundle changes published wave by wave behind health gates.
-- A rollout row per revision × change; its clusters with their wave and target digest (the
-- bundle bodies are in `bundles` from the start, so publishing is pointing `clusters` at them).
CREATE TABLE rollouts (
    id              TEXT PRIMARY KEY,          -- r-{started millis}-{commit[..12]}
    commit_id       TEXT NOT NULL,
    stacks          TEXT NOT NULL,             -- JSON list of the changed stacks
    policy          TEXT NOT NULL,             -- JSON RolloutPolicy
    state           TEXT NOT NULL,             -- progressing | baking | paused | completed | aborted | superseded
    wave            BIGINT NOT NULL,           -- index of the current wave
    wave_started_at BIGINT NOT NULL,
    gate_passed_at  BIGINT,                    -- when the current wave's gate passed (baking)
    reason          TEXT NOT NULL,             -- why it is paused, aborted, ...
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

CREATE TABLE rollout_clusters (
    rollout_id      TEXT NOT NULL,
    cluster_id      TEXT NOT NULL,
    kind            TEXT NOT NULL,
    region          TEXT NOT NULL,
    environment     TEXT NOT NULL,
    wave            BIGINT NOT NULL,
    digest          TEXT NOT NULL,             -- the bundle this rollout brings it
    state           TEXT NOT NULL,             -- pending | held | published | done | failed | skipped
    windows         TEXT NOT NULL,             -- JSON list of the sync windows that apply
    suspended       BIGINT NOT NULL,           -- 1: its workspace is suspended
    published_at    BIGINT,
    message         TEXT NOT NULL,
    PRIMARY KEY (rollout_id, cluster_id)
);
CREATE INDEX rollout_clusters_cluster ON rollout_clusters (cluster_id);

-- Who did what to a rollout, and what the control plane did (gates, waves).
CREATE TABLE rollout_events (
    rollout_id      TEXT NOT NULL,
    at              BIGINT NOT NULL,
    actor           TEXT NOT NULL,             -- cplane | a user's email | cli:<user>
    action          TEXT NOT NULL,
    detail          TEXT NOT NULL
);
CREATE INDEX rollout_events_rollout ON rollout_events (rollout_id, at);

-- Each stack's fingerprint as last applied: a revision changing it starts a rollout.
CREATE TABLE stack_fingerprints (
    stack           TEXT PRIMARY KEY,
    fingerprint     TEXT NOT NULL,
    updated_at      BIGINT NOT NULL
);
