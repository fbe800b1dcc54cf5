-- Bundles are stored gzip-compressed: the agent endpoint hands these bytes as they are to agents
-- that accept gzip (nearly all), and inflates them for the rest. Rows written before this
-- migration keep their plain `body`; new rows store an empty `body` and the compressed bytes here.
ALTER TABLE bundles ADD COLUMN body_gz BYTEA;
