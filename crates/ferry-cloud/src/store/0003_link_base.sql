-- The record both sides last agreed on, per linked user: what tells a
-- change on one side from a concurrent change on both.
ALTER TABLE links ADD COLUMN base TEXT
