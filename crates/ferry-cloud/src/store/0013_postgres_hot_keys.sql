-- PostgreSQL only
--
-- The tables an import writes a row of per object (users, groups, links,
-- feed, audit) no longer reference `orgs` on PostgreSQL. PostgreSQL checks
-- a foreign key row by row, each check a lookup of the org and a KEY SHARE
-- lock of its row: every row an org's import wrote locked that one row
-- again, and the checks were a sixth of the store's time in an import of
-- 10,000 users (`examples/import_cost.rs`: 1.66-1.71 s, 1.55-1.58 s
-- without). An org is never deleted, so the key guarded only against a
-- row for an org that does not exist, and every writer takes its org from
-- the signed-in admin's, the token's or the agent's own row. The keys that
-- do guard something stay: a link's domain, a membership's group.
--
-- SQLite keeps these keys: its check is an in-process lookup with no lock,
-- and dropping one there means rebuilding the table.
ALTER TABLE dir_users DROP CONSTRAINT dir_users_org_id_fkey;
ALTER TABLE dir_groups DROP CONSTRAINT dir_groups_org_id_fkey;
ALTER TABLE links DROP CONSTRAINT links_org_id_fkey;
ALTER TABLE feed DROP CONSTRAINT feed_org_id_fkey;
ALTER TABLE audit DROP CONSTRAINT audit_org_id_fkey;
