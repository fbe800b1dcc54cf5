-- What each cluster's agent last reported: the bundle it applied and how it went.
CREATE TABLE cluster_status (
    cluster_id      TEXT PRIMARY KEY,
    digest          TEXT NOT NULL,             -- bundle applied
    generation      BIGINT NOT NULL,
    healthy         TEXT NOT NULL,             -- True | False
    message         TEXT NOT NULL,
    objects         TEXT NOT NULL,             -- JSON list of per-object results
    reported_at     BIGINT NOT NULL
);
