-- Where the drift check of tenant zones stands, per scope (issue 14, item 6): each check reads
-- the zones whose slot fell between the previous check's end and now, so every zone is read at
-- least once an hour however often runs happen, and across replicas.
CREATE TABLE drift_checks (
    scope           TEXT PRIMARY KEY,
    checked_until   BIGINT NOT NULL
);
