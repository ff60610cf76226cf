-- How many users and groups each org has, kept by every insert and delete
-- of one (in its transaction): an unfiltered list answers its total
-- without counting the org, which at 100,000 users cost more than the page.
ALTER TABLE orgs ADD COLUMN user_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE orgs ADD COLUMN group_count BIGINT NOT NULL DEFAULT 0;
UPDATE orgs SET user_count = (SELECT COUNT(*) FROM dir_users u WHERE u.org_id = orgs.id);
UPDATE orgs SET group_count = (SELECT COUNT(*) FROM dir_groups g WHERE g.org_id = orgs.id)
