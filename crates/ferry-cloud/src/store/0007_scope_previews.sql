-- Scope previews the admin asked for: the agent reads AD with the proposed
-- scope and answers with what it would take in and leave out. Short-lived:
-- a request older than a minute is never handed out again.
CREATE TABLE scope_previews (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    domain_id TEXT NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    scope TEXT NOT NULL,
    answer TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX scope_previews_domain ON scope_previews (domain_id, created_at);
