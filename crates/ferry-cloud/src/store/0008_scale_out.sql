-- Several instances on one database, and retention.
--
-- Failed admin sign-ins, per (client address, account), shared by every
-- instance so a guesser cannot multiply the limit by the number of
-- instances. The key is a SHA-256 (no address or e-mail at rest here);
-- quiet rows are pruned by the retention task.
CREATE TABLE sign_in_failures (
    key_hash TEXT PRIMARY KEY,
    failures BIGINT NOT NULL,
    last_failure BIGINT NOT NULL,
    until_at BIGINT NOT NULL
);
CREATE INDEX sign_in_failures_quiet ON sign_in_failures (last_failure);

-- Retention deletes audit entries by age and expired sessions in batches.
CREATE INDEX audit_by_age ON audit (org_id, at);
CREATE INDEX api_tokens_by_expiry ON api_tokens (kind, expires_at);
CREATE INDEX connect_keys_by_expiry ON connect_keys (expires_at);
