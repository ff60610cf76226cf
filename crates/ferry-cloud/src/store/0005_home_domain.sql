-- Each cloud user and group belongs to at most one AD domain, its home:
-- the domain it came from, or the one it was placed in. Only the home
-- domain's agent may link, update or delete it, and the cloud → AD feed
-- of a domain carries its own objects only.
ALTER TABLE dir_users ADD COLUMN home_domain TEXT;
ALTER TABLE dir_groups ADD COLUMN home_domain TEXT;
-- Where objects created in the cloud (SCIM, API, console) are placed.
ALTER TABLE orgs ADD COLUMN default_domain TEXT;

UPDATE dir_users SET home_domain = (SELECT MIN(l.domain_id) FROM links l WHERE l.object_id = dir_users.id);
UPDATE dir_groups SET home_domain = (SELECT MIN(l.domain_id) FROM links l WHERE l.object_id = dir_groups.id);
UPDATE orgs SET default_domain = (SELECT d.id FROM domains d WHERE d.org_id = orgs.id ORDER BY d.created_at, d.id LIMIT 1);
UPDATE dir_users SET home_domain = (SELECT o.default_domain FROM orgs o WHERE o.id = dir_users.org_id) WHERE home_domain IS NULL;
UPDATE dir_groups SET home_domain = (SELECT o.default_domain FROM orgs o WHERE o.id = dir_groups.org_id) WHERE home_domain IS NULL;
CREATE INDEX dir_users_home ON dir_users (org_id, home_domain);
CREATE INDEX dir_groups_home ON dir_groups (org_id, home_domain);
