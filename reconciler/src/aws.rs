//! AWS adapter (STS, Route53, ACM). Being written: see the reconciler issue.
