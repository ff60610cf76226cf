-- Changes the other side refused for good, one row per object and
-- direction: the agent goes on with everything else, an admin sees the
-- refusal here, and the row goes when a later try of the object succeeds.
CREATE TABLE sync_errors (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    domain_id TEXT NOT NULL,
    direction TEXT NOT NULL,
    object_key TEXT NOT NULL,
    object_kind TEXT NOT NULL,
    object_name TEXT NOT NULL,
    operation TEXT NOT NULL,
    code TEXT NOT NULL,
    message TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    UNIQUE (domain_id, direction, object_key)
);
CREATE INDEX sync_errors_by_domain ON sync_errors (org_id, domain_id, last_seen)
