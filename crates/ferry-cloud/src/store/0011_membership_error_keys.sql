-- Cloud → AD membership errors are keyed by group and member
-- (`group-id/member-id`, `ferry_proto::agent::ErrorKey`), no longer by the
-- group alone: an agent of now would never resolve an open error of before
-- (a success names `group/member`), and a retry would send the group, not
-- the refused membership. The key of before is rebuilt from the name the
-- agent gave it, `group <group-id> (member <member-id>)` (88 characters).
UPDATE sync_errors
SET object_key = substr(object_name, 7, 36) || '/' || substr(object_name, 52, 36)
WHERE direction = 'cloud_to_ad'
  AND operation IN ('add member', 'remove member')
  AND object_key NOT LIKE '%/%'
  AND length(object_name) = 88
  AND object_name LIKE 'group % (member %)'
  AND NOT EXISTS (
    SELECT 1 FROM sync_errors s
    WHERE s.domain_id = sync_errors.domain_id
      AND s.direction = sync_errors.direction
      AND s.object_key = substr(sync_errors.object_name, 7, 36) || '/' || substr(sync_errors.object_name, 52, 36)
  )
