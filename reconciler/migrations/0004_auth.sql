-- Users and who may write what (issue 4, item 4; reference doc 001, "Multi-Region Principal
-- Resolution").
--
-- Identity lives in `principals`, which only the primary region consults (a region with
-- PRIMARY_CPLANE_API_URL set resolves identity from the primary, so its table stays empty).
-- Account memberships are region-local (accounts are per region), keyed by the principal's uid
-- from the primary: there is deliberately no foreign key to `principals`.

CREATE TABLE principals (
    uid             TEXT PRIMARY KEY,          -- stable id, the same in every region
    email           TEXT NOT NULL UNIQUE,      -- lower-cased; what requests are resolved by
    external_id     TEXT NOT NULL,             -- the identity provider's `sub` ('' until first sign-in)
    kind            TEXT NOT NULL,             -- user | service
    system_roles    TEXT NOT NULL,             -- comma-separated, e.g. 'admin' ('' for none)
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

CREATE TABLE account_memberships (
    principal_uid   TEXT NOT NULL,
    account         TEXT NOT NULL,             -- a workspace's spec.account
    role            TEXT NOT NULL,             -- member (writes the account's workspaces) | viewer
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (principal_uid, account)
);
