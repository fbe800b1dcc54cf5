-- cplane's database: one schema for SQLite (embedded default) and PostgreSQL (production).
-- Portable SQL only: TEXT, BIGINT, no serials, no engine-specific types. Times are unix millis.

-- Region-local record of every workspace cplane manages, desired and as provisioned.
CREATE TABLE workspaces (
    id              TEXT PRIMARY KEY,          -- workspace id (without the derived `w-`)
    region          TEXT NOT NULL,
    environment     TEXT NOT NULL,
    account         TEXT NOT NULL,
    aws_account_id  TEXT NOT NULL,
    role_arn        TEXT NOT NULL,
    external_id     TEXT NOT NULL,
    zone_name       TEXT NOT NULL,             -- w-{id}.{env?}.{region}.{base}
    parent_zone     TEXT NOT NULL,
    bff_url         TEXT NOT NULL,
    deletion_policy TEXT NOT NULL,             -- Retain | Delete
    generation      BIGINT NOT NULL,           -- bumped when the id is re-created after deletion
    status          TEXT NOT NULL,             -- provisioning | active | deprovisioning | retained | deleted
    commit_id       TEXT NOT NULL,
    updated_at      BIGINT NOT NULL
);

-- Provisioning metadata of reference doc 001, step 7: { workspace_id, region, delegated_zone, status }.
CREATE TABLE tenants (
    workspace_id    TEXT PRIMARY KEY,          -- w-{id}
    region          TEXT NOT NULL,
    delegated_zone  TEXT NOT NULL,
    status          TEXT NOT NULL,             -- active | retained | deleted
    bff_url         TEXT NOT NULL,
    updated_at      BIGINT NOT NULL
);

-- Tenant -> region lookup (reference doc 001, step 8; Cloudflare KV there).
CREATE TABLE tenant_lookup (
    workspace_name  TEXT PRIMARY KEY,          -- w-{id}
    region          TEXT NOT NULL,
    bff_url         TEXT NOT NULL,
    updated_at      BIGINT NOT NULL
);

-- The journal: one row per workspace and provisioning step. The deterministic key is written
-- before the AWS call it guards, the result after it; a row left `started` means the outcome is
-- unknown and must be looked up, never re-created.
CREATE TABLE journal (
    workspace_id    TEXT NOT NULL,
    step            TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    state           TEXT NOT NULL,             -- started | done | failed
    external_id     TEXT,
    result          TEXT,                      -- JSON
    attempts        BIGINT NOT NULL,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, step)
);

-- One row per reconcile run.
CREATE TABLE reconcile_runs (
    id              TEXT PRIMARY KEY,
    commit_id       TEXT NOT NULL,
    scope           TEXT NOT NULL,             -- regions reconciled
    plan            TEXT NOT NULL,             -- JSON
    outcome         TEXT NOT NULL,             -- converged | converging | failed | refused
    errors          TEXT NOT NULL,             -- JSON list
    started_at      BIGINT NOT NULL,
    duration_ms     BIGINT NOT NULL
);

-- Conditions per entity (Ready, Reconciling, Stalled), as in Kubernetes status conditions.
CREATE TABLE entity_status (
    kind            TEXT NOT NULL,             -- workspace | region | platform
    id              TEXT NOT NULL,
    condition       TEXT NOT NULL,
    status          TEXT NOT NULL,             -- True | False
    reason          TEXT NOT NULL,
    message         TEXT NOT NULL,
    commit_id       TEXT NOT NULL,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (kind, id, condition)
);

-- The last revision applied per scope: a refused revision never replaces it.
CREATE TABLE applied_revisions (
    scope           TEXT PRIMARY KEY,
    commit_id       TEXT NOT NULL,
    updated_at      BIGINT NOT NULL
);

-- Content-addressed bundles and each cluster's current one.
CREATE TABLE bundles (
    digest          TEXT PRIMARY KEY,          -- sha256:<hex> of body
    body            TEXT NOT NULL,             -- canonical JSON Lines
    created_at      BIGINT NOT NULL
);

CREATE TABLE clusters (
    id              TEXT PRIMARY KEY,          -- {env}-{region} | w-{id}
    kind            TEXT NOT NULL,
    region          TEXT NOT NULL,
    environment     TEXT NOT NULL,
    digest          TEXT NOT NULL,
    generation      BIGINT NOT NULL,           -- bumped on every digest change
    updated_at      BIGINT NOT NULL
);
