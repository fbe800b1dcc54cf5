-- Separate credentials (issue 13, item 3): a cluster token has a scope — `agent` (its cluster's
-- bundle and status) or `bff` (its workspace's config and register) — and may expire.
-- Tokens created before this migration were agents' tokens: they keep working as `agent`.
ALTER TABLE cluster_tokens ADD COLUMN scope TEXT NOT NULL DEFAULT 'agent';
-- Unix millis after which the token is refused (NULL: never). `rotate` moves it to the end of
-- the overlap for the tokens it replaces.
ALTER TABLE cluster_tokens ADD COLUMN expires_at BIGINT;
-- When the row last changed (created, revoked, or its expiry moved by a rotation): servers on
-- SQLite poll MAX(changed_at) to drop cached verifications.
ALTER TABLE cluster_tokens ADD COLUMN changed_at BIGINT;
UPDATE cluster_tokens SET changed_at = COALESCE(revoked_at, created_at);
CREATE INDEX cluster_tokens_cluster ON cluster_tokens (cluster_id, scope);
