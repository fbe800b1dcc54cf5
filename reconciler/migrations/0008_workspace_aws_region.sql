-- The AWS region of a workspace's regional resources (its ACM certificate), from the Region
-- document's `spec.awsRegion` (issue 14, item 4): certificates are requested there, never in the
-- process's default region. Rows written before have '' until their next run records it.
ALTER TABLE workspaces ADD COLUMN aws_region TEXT NOT NULL DEFAULT '';
