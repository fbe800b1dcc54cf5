-- Cluster tokens: agents (and a workspace's BFF) authenticate with a bearer token bound to one
-- cluster. Only the SHA-256 of a token is stored; the token itself is shown once at creation.
CREATE TABLE cluster_tokens (
    token_hash      TEXT PRIMARY KEY,          -- hex SHA-256 of the token
    cluster_id      TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    revoked_at      BIGINT
);

-- BFF registrations (reference doc 001: the BFF registers its URL at startup).
CREATE TABLE bff_registrations (
    workspace_id    TEXT PRIMARY KEY,          -- w-{id}
    url             TEXT NOT NULL,
    registered_at   BIGINT NOT NULL
);
