-- The agent's version, from the User-Agent of its status reports (issue 17): the server warns
-- about agents older than itself. Reports from before carry an empty version.
ALTER TABLE cluster_status ADD COLUMN agent_version TEXT NOT NULL DEFAULT '';
