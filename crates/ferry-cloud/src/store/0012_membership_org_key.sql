-- A membership's org is its group's: `memberships.org_id` no longer
-- references `orgs`. The group's key already does (an org's groups go with
-- it, and their memberships with them), and the second foreign key cost a
-- lookup and a row lock of the org per membership written: at 500,000
-- memberships, PostgreSQL's import INSERT took 10.5 s with it and 7.3 s
-- without (`examples/import_cost.rs`). Neither engine drops a foreign key
-- in place, so the table is rebuilt. (A WITHOUT ROWID table on SQLite was
-- tried and made the replay's memberships slower, 7.8-8.3 s against
-- 6.8-7.3 s.)
CREATE TABLE memberships_new (
    org_id TEXT NOT NULL,
    group_id TEXT NOT NULL REFERENCES dir_groups(id) ON DELETE CASCADE,
    member_id TEXT NOT NULL,
    member_kind TEXT NOT NULL,
    PRIMARY KEY (group_id, member_id)
);
INSERT INTO memberships_new (org_id, group_id, member_id, member_kind)
SELECT org_id, group_id, member_id, member_kind FROM memberships;
DROP TABLE memberships;
ALTER TABLE memberships_new RENAME TO memberships;
CREATE INDEX memberships_member ON memberships (member_id);
