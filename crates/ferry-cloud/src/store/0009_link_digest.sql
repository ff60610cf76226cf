-- A digest of the AD object as the agent last pushed it, per link: the
-- periodic comparison of both sides whole (anti-entropy) compares it with
-- what the agent reads from AD, range by range.
ALTER TABLE links ADD COLUMN ad_digest TEXT
;
-- When an admin last asked for that comparison now (unix ms).
ALTER TABLE domains ADD COLUMN audit_requested_at BIGINT;
-- The same digest for an AD account kept (disabled) after its cloud user
-- was deleted: the comparison finds it equal, not missing from the cloud.
ALTER TABLE cloud_deleted ADD COLUMN ad_digest TEXT
;
-- Deletes made in the cloud that a domain's delete threshold holds back
-- from AD until an admin decides (the AD object stays as it is meanwhile).
CREATE TABLE held_cloud_deletes (
    org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    domain_id TEXT NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    ad_guid TEXT NOT NULL,
    object_id TEXT NOT NULL,
    object_kind TEXT NOT NULL,
    name TEXT NOT NULL,
    ad_dn TEXT NOT NULL,
    held_at BIGINT NOT NULL,
    PRIMARY KEY (domain_id, ad_guid)
);
-- Cloud deletes sent to a domain's AD, for the threshold's sliding window.
CREATE TABLE recent_cloud_deletes (
    org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    domain_id TEXT NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    at BIGINT NOT NULL,
    n BIGINT NOT NULL
);
CREATE INDEX recent_cloud_deletes_domain ON recent_cloud_deletes (domain_id, at)
