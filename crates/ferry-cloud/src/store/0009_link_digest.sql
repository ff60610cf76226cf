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
