-- Passwords set in the cloud, sealed to each agent's X25519 key (never in
-- plaintext). One row per agent per feed entry; deleted once acknowledged.
CREATE TABLE sealed_secrets (
    org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    agent_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    sealed TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (agent_id, seq)
);
