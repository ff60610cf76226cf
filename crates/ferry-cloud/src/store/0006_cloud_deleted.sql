-- AD objects whose cloud user was deleted in the cloud while the domain's
-- policy kept the AD account (disabled): the account must not come back
-- as a new cloud user when it next changes in AD. The row goes when the AD
-- object is deleted.
CREATE TABLE cloud_deleted (
    org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    domain_id TEXT NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    ad_guid TEXT NOT NULL,
    object_kind TEXT NOT NULL,
    deleted_at BIGINT NOT NULL,
    PRIMARY KEY (domain_id, ad_guid)
);

-- Deletes applied from AD, per domain, for the delete threshold's sliding
-- window: one-by-one deletes add up to a mass delete too.
CREATE TABLE recent_deletes (
    org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    domain_id TEXT NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    at BIGINT NOT NULL,
    n BIGINT NOT NULL
);
CREATE INDEX recent_deletes_domain ON recent_deletes (domain_id, at);
