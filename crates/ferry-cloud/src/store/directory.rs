//! Users, groups, memberships and the links that tie them to AD objects.
//!
//! A user or group is kept as its SCIM document (JSON) plus the columns that
//! are looked up or must be unique. `version` grows with every change and
//! guards read-modify-write cycles.

use ferry_proto::record::ObjectKind;
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use super::accounts::conflict_as;
use super::bulk::{int, opt_text, text, texts, Cell};
use super::{get_json, get_opt_uuid, get_uuid, to_json, Dialect, StoreError, StoreResult, Tx};

/// A user as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRow {
    /// User id.
    pub id: Uuid,
    /// `userName`, as given.
    pub username: String,
    /// SCIM `externalId`.
    pub external_id: Option<String>,
    /// Not suspended.
    pub active: bool,
    /// The SCIM attributes (without id/meta/schemas/password).
    pub doc: serde_json::Value,
    /// A password hash is set.
    pub has_password: bool,
    /// Optimistic-concurrency version.
    pub version: i64,
    /// Creation time.
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
    /// The AD domain the user belongs to (see `0005_home_domain.sql`).
    pub home_domain: Option<Uuid>,
}

/// What a new user is made of.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// `userName`.
    pub username: String,
    /// SCIM `externalId`.
    pub external_id: Option<String>,
    /// Not suspended.
    pub active: bool,
    /// SCIM attributes.
    pub doc: serde_json::Value,
    /// argon2 hash of the password, if one was given.
    pub password_hash: Option<String>,
}

/// A group as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRow {
    /// Group id.
    pub id: Uuid,
    /// `displayName`.
    pub name: String,
    /// SCIM `externalId`.
    pub external_id: Option<String>,
    /// SCIM attributes (without members).
    pub doc: serde_json::Value,
    /// Optimistic-concurrency version.
    pub version: i64,
    /// Creation time.
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
    /// The AD domain the group belongs to.
    pub home_domain: Option<Uuid>,
}

/// What a new group is made of.
#[derive(Debug, Clone)]
pub struct NewGroup {
    /// `displayName`.
    pub name: String,
    /// SCIM `externalId`.
    pub external_id: Option<String>,
    /// SCIM attributes.
    pub doc: serde_json::Value,
}

/// A member of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    /// Member id.
    pub id: Uuid,
    /// User or group.
    pub kind: ObjectKind,
}

/// A link between a cloud object and an AD object of one domain.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    /// Domain.
    pub domain_id: Uuid,
    /// User or group.
    pub kind: ObjectKind,
    /// Cloud id.
    pub object_id: Uuid,
    /// AD `objectGUID`.
    pub ad_guid: Uuid,
    /// DN last seen.
    pub ad_dn: String,
    /// Last sync through this link.
    pub synced_at: i64,
    /// The record both sides last agreed on, as JSON: a user's, and a
    /// group's as AD last had it.
    pub base: Option<serde_json::Value>,
    /// A digest of the AD object as the agent last pushed it
    /// (`ferry_proto::audit`), for the comparison of both sides whole.
    pub ad_digest: Option<String>,
}

/// Which users to list. Equality tests here are pushed into SQL; the rest of
/// a SCIM filter is evaluated on the documents.
#[derive(Debug, Clone, Default)]
pub struct UserQuery {
    /// `userName eq` (case-insensitive).
    pub username_eq: Option<String>,
    /// `externalId eq`.
    pub external_id_eq: Option<String>,
    /// A LIKE pattern on the lowercased username (`\\` escapes), for
    /// `userName sw/co/ew`.
    pub username_like: Option<String>,
    /// Rows to skip.
    pub offset: i64,
    /// Rows to return at most.
    pub limit: i64,
}

pub(super) const USER_COLS: &str =
    "id, username, external_id, active, doc, password_hash, version, created_at, updated_at, home_domain";
const GROUP_COLS: &str = "id, name, external_id, doc, version, created_at, updated_at, home_domain";

impl Tx {
    /// Inserts a user; a conflict when the username is taken in the org.
    pub async fn insert_user(&mut self, org_id: Uuid, user: &NewUser, now: i64) -> StoreResult<UserRow> {
        let id = Uuid::now_v7();
        self.insert_users_many(org_id, &[(id, user.clone())], None, now)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => StoreError::Conflict(format!("a user named {:?} exists", user.username)),
                e => e,
            })?;
        self.get_user(org_id, id).await?.ok_or(StoreError::NotFound)
    }

    /// Inserts new users, each with its given id and placed in `home`, 100
    /// a statement (an import's batch is not a statement per user); a
    /// conflict when a username is taken in the org.
    pub async fn insert_users_many(
        &mut self,
        org_id: Uuid,
        users: &[(Uuid, NewUser)],
        home: Option<Uuid>,
        now: i64,
    ) -> StoreResult<()> {
        let rows = users
            .iter()
            .map(|(id, user)| {
                Ok(vec![
                    text(id.to_string()),
                    text(&user.username),
                    text(user.username.to_lowercase()),
                    opt_text(user.external_id.as_deref()),
                    int(i64::from(user.active)),
                    text(to_json(&user.doc)?),
                    opt_text(user.password_hash.as_deref()),
                ])
            })
            .collect::<StoreResult<Vec<_>>>()?;
        self.write_rows(
            "INSERT INTO dir_users (id, org_id, username, username_key, external_id, active, doc, password_hash, version, created_at, updated_at, home_domain)
             {rows}",
            "?, $1, ?, ?, ?, ?n, ?, ?, 1, $2, $2, $3",
            vec![text(org_id.to_string()), int(now), opt_text(home.map(|h| h.to_string()))],
            &rows,
        )
        .await
        .map_err(|e| {
            let names: Vec<&str> = users.iter().map(|(_, u)| u.username.as_str()).collect();
            conflict_as(e, format!("a user named one of {names:?} exists"))
        })?;
        self.add_to_count(org_id, ObjectKind::User, i64::try_from(users.len()).unwrap_or(i64::MAX))
            .await
    }

    /// Many users of the org by id, in few queries ([`Tx::rows_in`]).
    pub async fn get_users_many(
        &mut self,
        org_id: Uuid,
        ids: &[Uuid],
    ) -> StoreResult<std::collections::HashMap<Uuid, UserRow>> {
        let sql = format!("SELECT {USER_COLS} FROM dir_users WHERE org_id = $1 AND id IN ({{in}})");
        let rows = self.rows_in(&sql, &[&org_id.to_string()], &texts(ids)).await?;
        rows.iter().map(|r| user_from_row(r).map(|u| (u.id, u))).collect()
    }

    /// Which of the lowercased names `keys` a user (or a group) of the org
    /// already has, in few queries ([`Tx::rows_in`]).
    pub async fn taken_name_keys(
        &mut self,
        org_id: Uuid,
        kind: ObjectKind,
        keys: &[String],
    ) -> StoreResult<std::collections::HashSet<String>> {
        let (table, col) = match kind {
            ObjectKind::User => ("dir_users", "username_key"),
            ObjectKind::Group => ("dir_groups", "name_key"),
        };
        let sql = format!("SELECT {col} FROM {table} WHERE org_id = $1 AND {col} IN ({{in}})");
        let rows = self.rows_in(&sql, &[&org_id.to_string()], keys).await?;
        rows.iter().map(|r| Ok(r.try_get::<String, _>(0)?)).collect()
    }

    /// One user of the org.
    pub async fn get_user(&mut self, org_id: Uuid, id: Uuid) -> StoreResult<Option<UserRow>> {
        let sql = format!("SELECT {USER_COLS} FROM dir_users WHERE id = $1 AND org_id = $2");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(org_id.to_string())
            .fetch_optional(self.conn())
            .await?;
        row.map(|r| user_from_row(&r)).transpose()
    }

    /// A user by username (case-insensitive).
    pub async fn find_user_by_username(&mut self, org_id: Uuid, username: &str) -> StoreResult<Option<UserRow>> {
        let sql = format!("SELECT {USER_COLS} FROM dir_users WHERE org_id = $1 AND username_key = $2");
        let row = sqlx::query(&sql)
            .bind(org_id.to_string())
            .bind(username.to_lowercase())
            .fetch_optional(self.conn())
            .await?;
        row.map(|r| user_from_row(&r)).transpose()
    }

    /// Users matching `q`, by username, and how many match in all.
    pub async fn list_users(&mut self, org_id: Uuid, q: &UserQuery) -> StoreResult<(Vec<UserRow>, i64)> {
        let mut cond = String::from("org_id = $1");
        let mut args: Vec<String> = vec![org_id.to_string()];
        if let Some(u) = &q.username_eq {
            args.push(u.to_lowercase());
            cond.push_str(&format!(" AND username_key = ${}", args.len()));
        }
        if let Some(x) = &q.external_id_eq {
            args.push(x.clone());
            cond.push_str(&format!(" AND external_id = ${}", args.len()));
        }
        if let Some(p) = &q.username_like {
            args.push(p.to_lowercase());
            cond.push_str(&format!(" AND username_key LIKE ${} ESCAPE '\\'", args.len()));
        }
        // The whole org: its kept count (counting it walks every user).
        let total: i64 = if args.len() == 1 {
            self.count_of(org_id, ObjectKind::User).await?
        } else {
            let count_sql = format!("SELECT COUNT(*) FROM dir_users WHERE {cond}");
            let mut count_q = sqlx::query(&count_sql);
            for a in &args {
                count_q = count_q.bind(a);
            }
            count_q.fetch_one(self.conn()).await?.try_get(0)?
        };
        let sql = format!(
            "SELECT {USER_COLS} FROM dir_users WHERE {cond} ORDER BY username_key LIMIT {} OFFSET {}",
            q.limit.max(0),
            q.offset.max(0)
        );
        let mut list_q = sqlx::query(&sql);
        for a in &args {
            list_q = list_q.bind(a);
        }
        let rows = list_q.fetch_all(self.conn()).await?;
        let users = rows.iter().map(user_from_row).collect::<StoreResult<_>>()?;
        Ok((users, total))
    }

    /// One batch of an org's users in username order, after the username
    /// key `after` (keyset paging: no count, no offset to skip), narrowed to
    /// an `externalId` when given. Filters the store cannot answer walk the
    /// org with this, a batch per transaction.
    pub async fn scan_users(
        &mut self,
        org_id: Uuid,
        after: Option<&str>,
        external_id_eq: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<UserRow>> {
        let mut cond = String::from("org_id = $1 AND username_key > $2");
        if external_id_eq.is_some() {
            cond.push_str(" AND external_id = $3");
        }
        let sql = format!(
            "SELECT {USER_COLS} FROM dir_users WHERE {cond} ORDER BY username_key LIMIT {}",
            limit.max(0)
        );
        let mut q = sqlx::query(&sql).bind(org_id.to_string()).bind(after.unwrap_or(""));
        if let Some(x) = external_id_eq {
            q = q.bind(x);
        }
        let rows = q.fetch_all(self.conn()).await?;
        rows.iter().map(user_from_row).collect()
    }

    /// One batch of an org's groups in name order, after the name key `after`.
    pub async fn scan_groups(&mut self, org_id: Uuid, after: Option<&str>, limit: i64) -> StoreResult<Vec<GroupRow>> {
        let sql = format!(
            "SELECT {GROUP_COLS} FROM dir_groups WHERE org_id = $1 AND name_key > $2 ORDER BY name_key LIMIT {}",
            limit.max(0)
        );
        let rows = sqlx::query(&sql)
            .bind(org_id.to_string())
            .bind(after.unwrap_or(""))
            .fetch_all(self.conn())
            .await?;
        rows.iter().map(group_from_row).collect()
    }

    /// Writes a user's new state if its version is still `expected_version`;
    /// `Ok(false)` when someone else changed it first. `password_hash`:
    /// `None` keeps the stored hash, `Some(h)` replaces it.
    pub async fn update_user(
        &mut self,
        org_id: Uuid,
        id: Uuid,
        expected_version: i64,
        user: &NewUser,
        now: i64,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE dir_users SET username = $1, username_key = $2, external_id = $3, active = $4, doc = $5,
                    password_hash = COALESCE($6, password_hash), version = version + 1, updated_at = $7
             WHERE id = $8 AND org_id = $9 AND version = $10",
        )
        .bind(&user.username)
        .bind(user.username.to_lowercase())
        .bind(&user.external_id)
        .bind(i64::from(user.active))
        .bind(to_json(&user.doc)?)
        .bind(&user.password_hash)
        .bind(now)
        .bind(id.to_string())
        .bind(org_id.to_string())
        .bind(expected_version)
        .execute(self.conn())
        .await
        .map_err(|e| conflict_as(e, format!("a user named {:?} exists", user.username)))?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes a user and its memberships; returns the groups it was in.
    pub async fn delete_user(&mut self, org_id: Uuid, id: Uuid) -> StoreResult<Vec<Uuid>> {
        let groups = self.groups_of(org_id, id).await?;
        self.delete_object_edges(org_id, id).await?;
        let done = sqlx::query("DELETE FROM dir_users WHERE id = $1 AND org_id = $2")
            .bind(id.to_string())
            .bind(org_id.to_string())
            .execute(self.conn())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        self.add_to_count(org_id, ObjectKind::User, -1).await?;
        Ok(groups.into_iter().map(|(g, _)| g).collect())
    }

    /// Inserts a group; a conflict when the name is taken in the org.
    pub async fn insert_group(&mut self, org_id: Uuid, group: &NewGroup, now: i64) -> StoreResult<GroupRow> {
        let id = Uuid::now_v7();
        self.insert_groups_many(org_id, &[(id, group.clone())], None, now)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => StoreError::Conflict(format!("a group named {:?} exists", group.name)),
                e => e,
            })?;
        self.get_group(org_id, id).await?.ok_or(StoreError::NotFound)
    }

    /// Inserts new groups (without members), each with its given id and
    /// placed in `home`, in one statement; a conflict when a name is taken.
    pub async fn insert_groups_many(
        &mut self,
        org_id: Uuid,
        groups: &[(Uuid, NewGroup)],
        home: Option<Uuid>,
        now: i64,
    ) -> StoreResult<()> {
        let rows = groups
            .iter()
            .map(|(id, group)| {
                Ok(vec![
                    text(id.to_string()),
                    text(&group.name),
                    text(group.name.to_lowercase()),
                    opt_text(group.external_id.as_deref()),
                    text(to_json(&group.doc)?),
                ])
            })
            .collect::<StoreResult<Vec<_>>>()?;
        self.write_rows(
            "INSERT INTO dir_groups (id, org_id, name, name_key, external_id, doc, version, created_at, updated_at, home_domain)
             {rows}",
            "?, $1, ?, ?, ?, ?, 1, $2, $2, $3",
            vec![text(org_id.to_string()), int(now), opt_text(home.map(|h| h.to_string()))],
            &rows,
        )
        .await
        .map_err(|e| {
            let names: Vec<&str> = groups.iter().map(|(_, g)| g.name.as_str()).collect();
            conflict_as(e, format!("a group named one of {names:?} exists"))
        })?;
        self.add_to_count(
            org_id,
            ObjectKind::Group,
            i64::try_from(groups.len()).unwrap_or(i64::MAX),
        )
        .await
    }

    /// Keeps the org's count of users or groups (`0010_org_counts.sql`):
    /// `n` more of them when positive, fewer when negative.
    async fn add_to_count(&mut self, org_id: Uuid, kind: ObjectKind, n: i64) -> StoreResult<()> {
        if n == 0 {
            return Ok(());
        }
        let col = count_column(kind);
        sqlx::query(&format!("UPDATE orgs SET {col} = {col} + $1 WHERE id = $2"))
            .bind(n)
            .bind(org_id.to_string())
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// How many users or groups the org has, as kept by [`Tx::add_to_count`].
    async fn count_of(&mut self, org_id: Uuid, kind: ObjectKind) -> StoreResult<i64> {
        let col = count_column(kind);
        Ok(sqlx::query(&format!("SELECT {col} FROM orgs WHERE id = $1"))
            .bind(org_id.to_string())
            .fetch_optional(self.conn())
            .await?
            .map(|r| r.try_get::<i64, _>(0))
            .transpose()?
            .unwrap_or(0))
    }

    /// Many groups of the org by id, in few queries ([`Tx::rows_in`]).
    pub async fn get_groups_many(
        &mut self,
        org_id: Uuid,
        ids: &[Uuid],
    ) -> StoreResult<std::collections::HashMap<Uuid, GroupRow>> {
        let sql = format!("SELECT {GROUP_COLS} FROM dir_groups WHERE org_id = $1 AND id IN ({{in}})");
        let rows = self.rows_in(&sql, &[&org_id.to_string()], &texts(ids)).await?;
        rows.iter().map(|r| group_from_row(r).map(|g| (g.id, g))).collect()
    }

    /// One group of the org.
    pub async fn get_group(&mut self, org_id: Uuid, id: Uuid) -> StoreResult<Option<GroupRow>> {
        let sql = format!("SELECT {GROUP_COLS} FROM dir_groups WHERE id = $1 AND org_id = $2");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(org_id.to_string())
            .fetch_optional(self.conn())
            .await?;
        row.map(|r| group_from_row(&r)).transpose()
    }

    /// A group by name (case-insensitive).
    pub async fn find_group_by_name(&mut self, org_id: Uuid, name: &str) -> StoreResult<Option<GroupRow>> {
        let sql = format!("SELECT {GROUP_COLS} FROM dir_groups WHERE org_id = $1 AND name_key = $2");
        let row = sqlx::query(&sql)
            .bind(org_id.to_string())
            .bind(name.to_lowercase())
            .fetch_optional(self.conn())
            .await?;
        row.map(|r| group_from_row(&r)).transpose()
    }

    /// The org's groups by name, a page of them, and how many there are.
    pub async fn list_groups(&mut self, org_id: Uuid, offset: i64, limit: i64) -> StoreResult<(Vec<GroupRow>, i64)> {
        let total = self.count_of(org_id, ObjectKind::Group).await?;
        let sql = format!(
            "SELECT {GROUP_COLS} FROM dir_groups WHERE org_id = $1 ORDER BY name_key LIMIT {} OFFSET {}",
            limit.max(0),
            offset.max(0)
        );
        let rows = sqlx::query(&sql)
            .bind(org_id.to_string())
            .fetch_all(self.conn())
            .await?;
        let groups = rows.iter().map(group_from_row).collect::<StoreResult<_>>()?;
        Ok((groups, total))
    }

    /// Writes a group's new state if its version is still `expected_version`.
    pub async fn update_group(
        &mut self,
        org_id: Uuid,
        id: Uuid,
        expected_version: i64,
        group: &NewGroup,
        now: i64,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE dir_groups SET name = $1, name_key = $2, external_id = $3, doc = $4, version = version + 1, updated_at = $5
             WHERE id = $6 AND org_id = $7 AND version = $8",
        )
        .bind(&group.name)
        .bind(group.name.to_lowercase())
        .bind(&group.external_id)
        .bind(to_json(&group.doc)?)
        .bind(now)
        .bind(id.to_string())
        .bind(org_id.to_string())
        .bind(expected_version)
        .execute(self.conn())
        .await
        .map_err(|e| conflict_as(e, format!("a group named {:?} exists", group.name)))?;
        Ok(done.rows_affected() == 1)
    }

    /// Bumps a group's version (its members changed).
    pub async fn touch_group(&mut self, org_id: Uuid, id: Uuid, now: i64) -> StoreResult<()> {
        sqlx::query("UPDATE dir_groups SET version = version + 1, updated_at = $1 WHERE id = $2 AND org_id = $3")
            .bind(now)
            .bind(id.to_string())
            .bind(org_id.to_string())
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// Deletes a group, its members and its own memberships; returns the
    /// groups it was a member of.
    ///
    /// The group's row goes first: from then on a writer adding members
    /// to it waits for this transaction ([`Tx::lock_groups`]) and then
    /// finds it gone, and the members deleted next include any a writer
    /// that locked the group before committed meanwhile (each statement
    /// sees what is committed when it starts). PostgreSQL keeps no foreign
    /// key from a membership to its group (migration 14), so this order is
    /// what keeps a membership from outliving its group.
    pub async fn delete_group(&mut self, org_id: Uuid, id: Uuid) -> StoreResult<Vec<Uuid>> {
        let parents = self.groups_of(org_id, id).await?;
        let done = sqlx::query("DELETE FROM dir_groups WHERE id = $1 AND org_id = $2")
            .bind(id.to_string())
            .bind(org_id.to_string())
            .execute(self.conn())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        self.delete_object_edges(org_id, id).await?;
        sqlx::query("DELETE FROM memberships WHERE group_id = $1 AND org_id = $2")
            .bind(id.to_string())
            .bind(org_id.to_string())
            .execute(self.conn())
            .await?;
        self.add_to_count(org_id, ObjectKind::Group, -1).await?;
        Ok(parents.into_iter().map(|(g, _)| g).collect())
    }

    async fn delete_object_edges(&mut self, org_id: Uuid, id: Uuid) -> StoreResult<()> {
        for sql in [
            "DELETE FROM memberships WHERE member_id = $1 AND org_id = $2",
            "DELETE FROM links WHERE object_id = $1 AND org_id = $2",
        ] {
            sqlx::query(sql)
                .bind(id.to_string())
                .bind(org_id.to_string())
                .execute(self.conn())
                .await?;
        }
        Ok(())
    }

    /// The members of a group, sorted.
    pub async fn group_members(&mut self, org_id: Uuid, group_id: Uuid) -> StoreResult<Vec<Member>> {
        let rows = sqlx::query(
            "SELECT member_id, member_kind FROM memberships WHERE group_id = $1 AND org_id = $2 ORDER BY member_id",
        )
        .bind(group_id.to_string())
        .bind(org_id.to_string())
        .fetch_all(self.conn())
        .await?;
        rows.iter().map(member_from_row).collect()
    }

    /// Holds the groups against deletion until this transaction ends
    /// (PostgreSQL: `FOR KEY SHARE`, the lock a foreign key's check takes,
    /// once a group rather than once a membership); `NotFound` when one is
    /// not in the org, or was deleted meanwhile. Every writer of
    /// memberships calls it first. SQLite has one writer at a time and
    /// keeps its foreign key, so there it does nothing.
    ///
    /// PostgreSQL checked the key row by row: at an import of 10,000 users
    /// it was a third of the memberships' `INSERT` (`docs/BENCHMARKS.md`,
    /// runs 72–79).
    pub(crate) async fn lock_groups(&mut self, org_id: Uuid, groups: &[Uuid]) -> StoreResult<()> {
        if self.dialect() != Dialect::Postgres || groups.is_empty() {
            return Ok(());
        }
        let mut ids = groups.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let sql = "SELECT id FROM dir_groups WHERE org_id = $1 AND id IN ({in}) FOR KEY SHARE";
        let found = self.rows_in(sql, &[&org_id.to_string()], &texts(&ids)).await?;
        if found.len() != ids.len() {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Adds a member; `false` when it already was one.
    pub async fn add_member(&mut self, org_id: Uuid, group_id: Uuid, member: Member) -> StoreResult<bool> {
        self.lock_groups(org_id, &[group_id]).await?;
        let done = sqlx::query(
            "INSERT INTO memberships (org_id, group_id, member_id, member_kind) VALUES ($1, $2, $3, $4)
             ON CONFLICT (group_id, member_id) DO NOTHING",
        )
        .bind(org_id.to_string())
        .bind(group_id.to_string())
        .bind(member.id.to_string())
        .bind(member.kind.as_str())
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Adds many members in one statement; returns those that were not
    /// members yet, in the order given.
    pub async fn add_members_many(
        &mut self,
        org_id: Uuid,
        group_id: Uuid,
        members: &[Member],
    ) -> StoreResult<Vec<Member>> {
        if members.is_empty() {
            // Nothing to add: no lock, as before, and no error for a group
            // deleted meanwhile (a `SetMembers` that only removes).
            return Ok(Vec::new());
        }
        self.lock_groups(org_id, &[group_id]).await?;
        let mut added = std::collections::HashSet::new();
        let rows: Vec<Vec<Cell>> = members
            .iter()
            .map(|m| vec![text(m.id.to_string()), text(m.kind.as_str())])
            .collect();
        let returned = self
            .write_rows(
                "INSERT INTO memberships (org_id, group_id, member_id, member_kind) {rows}
                 ON CONFLICT (group_id, member_id) DO NOTHING RETURNING member_id",
                "$1, $2, ?, ?",
                vec![text(org_id.to_string()), text(group_id.to_string())],
                &rows,
            )
            .await?;
        for r in returned {
            added.insert(get_uuid(&r, "member_id")?);
        }
        let mut seen = std::collections::HashSet::new();
        Ok(members
            .iter()
            .filter(|m| added.contains(&m.id) && seen.insert(m.id))
            .copied()
            .collect())
    }

    /// The members of many groups (500 groups a query), by group.
    pub async fn group_members_many(
        &mut self,
        org_id: Uuid,
        group_ids: &[Uuid],
    ) -> StoreResult<std::collections::HashMap<Uuid, Vec<Member>>> {
        let sql = "SELECT group_id, member_id, member_kind FROM memberships WHERE org_id = $1 AND group_id IN ({in})";
        let mut out: std::collections::HashMap<Uuid, Vec<Member>> = std::collections::HashMap::new();
        for r in self.rows_in(sql, &[&org_id.to_string()], &texts(group_ids)).await? {
            out.entry(get_uuid(&r, "group_id")?)
                .or_default()
                .push(member_from_row(&r)?);
        }
        Ok(out)
    }

    /// Which of the memberships `(group, member)` exist, with the member's
    /// kind: read by member (each member's memberships, an index lookup),
    /// so what it costs is what exists, not the size of the groups.
    pub async fn memberships_among(
        &mut self,
        org_id: Uuid,
        pairs: &[(Uuid, Uuid)],
    ) -> StoreResult<std::collections::HashMap<Uuid, Vec<Member>>> {
        let asked: std::collections::HashSet<(Uuid, Uuid)> = pairs.iter().copied().collect();
        let mut members: Vec<Uuid> = pairs.iter().map(|(_, m)| *m).collect();
        members.sort_unstable();
        members.dedup();
        let sql = "SELECT group_id, member_id, member_kind FROM memberships WHERE org_id = $1 AND member_id IN ({in})";
        let mut out: std::collections::HashMap<Uuid, Vec<Member>> = std::collections::HashMap::new();
        for r in self.rows_in(sql, &[&org_id.to_string()], &texts(&members)).await? {
            let (group, member) = (get_uuid(&r, "group_id")?, member_from_row(&r)?);
            if asked.contains(&(group, member.id)) {
                out.entry(group).or_default().push(member);
            }
        }
        Ok(out)
    }

    /// Adds memberships `(group, member)` of many groups in one statement
    /// (existing ones are left as they are).
    pub async fn insert_memberships(&mut self, org_id: Uuid, pairs: &[(Uuid, Member)]) -> StoreResult<()> {
        let groups: Vec<Uuid> = pairs.iter().map(|(g, _)| *g).collect();
        self.lock_groups(org_id, &groups).await?;
        let rows: Vec<Vec<Cell>> = pairs
            .iter()
            .map(|(group, m)| vec![text(group.to_string()), text(m.id.to_string()), text(m.kind.as_str())])
            .collect();
        self.write_rows(
            "INSERT INTO memberships (org_id, group_id, member_id, member_kind) {rows}
             ON CONFLICT (group_id, member_id) DO NOTHING",
            "$1, ?, ?, ?",
            vec![text(org_id.to_string())],
            &rows,
        )
        .await?;
        Ok(())
    }

    /// Removes memberships `(group, member)`, one statement per group.
    pub async fn delete_memberships(&mut self, org_id: Uuid, pairs: &[(Uuid, Uuid)]) -> StoreResult<()> {
        let mut by_group: std::collections::BTreeMap<Uuid, Vec<Uuid>> = std::collections::BTreeMap::new();
        for (group, member) in pairs {
            by_group.entry(*group).or_default().push(*member);
        }
        for (group, members) in by_group {
            let sql = "DELETE FROM memberships WHERE org_id = $1 AND group_id = $2 AND member_id IN ({in})";
            self.rows_in(sql, &[&org_id.to_string(), &group.to_string()], &texts(&members))
                .await?;
        }
        Ok(())
    }

    /// Bumps the versions of many groups (their members changed), each by
    /// its count: one statement per distinct count and 500 groups.
    pub async fn touch_groups(&mut self, org_id: Uuid, counts: &[(Uuid, i64)], now: i64) -> StoreResult<()> {
        let mut by_count: std::collections::BTreeMap<i64, Vec<Uuid>> = std::collections::BTreeMap::new();
        for (id, n) in counts {
            by_count.entry(*n).or_default().push(*id);
        }
        for (n, ids) in by_count {
            // Integers, written into the statement.
            let sql = format!(
                "UPDATE dir_groups SET version = version + {n}, updated_at = {now} WHERE org_id = $1 AND id IN ({{in}})"
            );
            self.rows_in(&sql, &[&org_id.to_string()], &texts(&ids)).await?;
        }
        Ok(())
    }

    /// Removes a member; `false` when it was not one.
    pub async fn remove_member(&mut self, org_id: Uuid, group_id: Uuid, member_id: Uuid) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM memberships WHERE org_id = $1 AND group_id = $2 AND member_id = $3")
            .bind(org_id.to_string())
            .bind(group_id.to_string())
            .bind(member_id.to_string())
            .execute(self.conn())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The groups an object is a direct member of, with their names.
    pub async fn groups_of(&mut self, org_id: Uuid, member_id: Uuid) -> StoreResult<Vec<(Uuid, String)>> {
        let rows = sqlx::query(
            // CROSS JOIN: SQLite must start from the member's few rows, not
            // walk every group of the org in name order (PostgreSQL plans
            // it as an inner join either way).
            "SELECT g.id, g.name FROM memberships m CROSS JOIN dir_groups g
             WHERE g.id = m.group_id AND m.member_id = $1 AND m.org_id = $2 AND g.org_id = $2 ORDER BY g.name_key",
        )
        .bind(member_id.to_string())
        .bind(org_id.to_string())
        .fetch_all(self.conn())
        .await?;
        rows.iter()
            .map(|r| Ok((get_uuid(r, "id")?, r.try_get("name")?)))
            .collect()
    }

    /// [`Tx::groups_of`] for many objects at once (a page of a list): one
    /// query instead of one per object.
    pub async fn groups_of_many(
        &mut self,
        org_id: Uuid,
        member_ids: &[Uuid],
    ) -> StoreResult<std::collections::HashMap<Uuid, Vec<(Uuid, String)>>> {
        let mut out: std::collections::HashMap<Uuid, Vec<(Uuid, String)>> = std::collections::HashMap::new();
        let sql = "SELECT m.member_id, g.id, g.name FROM memberships m CROSS JOIN dir_groups g
                   WHERE g.id = m.group_id AND m.org_id = $1 AND g.org_id = $1 AND m.member_id IN ({in})
                   ORDER BY g.name_key";
        for r in self.rows_in(sql, &[&org_id.to_string()], &texts(member_ids)).await? {
            out.entry(get_uuid(&r, "member_id")?)
                .or_default()
                .push((get_uuid(&r, "id")?, r.try_get("name")?));
        }
        Ok(out)
    }

    /// What kind of object an id is in this org, if it exists there.
    pub async fn object_kind(&mut self, org_id: Uuid, id: Uuid) -> StoreResult<Option<ObjectKind>> {
        if self.get_user(org_id, id).await?.is_some() {
            return Ok(Some(ObjectKind::User));
        }
        if self.get_group(org_id, id).await?.is_some() {
            return Ok(Some(ObjectKind::Group));
        }
        Ok(None)
    }

    /// The kinds of those of `ids` that exist in this org, in a few queries
    /// ([`Tx::rows_in`], for each table), however many there are.
    pub async fn object_kinds(
        &mut self,
        org_id: Uuid,
        ids: &[Uuid],
    ) -> StoreResult<std::collections::HashMap<Uuid, ObjectKind>> {
        let mut out = std::collections::HashMap::with_capacity(ids.len());
        let ids = texts(ids);
        for (table, kind) in [("dir_users", ObjectKind::User), ("dir_groups", ObjectKind::Group)] {
            let sql = format!("SELECT id FROM {table} WHERE org_id = $1 AND id IN ({{in}})");
            for r in self.rows_in(&sql, &[&org_id.to_string()], &ids).await? {
                out.insert(get_uuid(&r, "id")?, kind);
            }
        }
        Ok(out)
    }

    /// The link of an AD object in a domain.
    pub async fn link_by_guid(&mut self, org_id: Uuid, domain_id: Uuid, guid: Uuid) -> StoreResult<Option<Link>> {
        let row = sqlx::query(
            "SELECT domain_id, object_kind, object_id, ad_guid, ad_dn, synced_at, base, ad_digest FROM links
             WHERE org_id = $1 AND domain_id = $2 AND ad_guid = $3",
        )
        .bind(org_id.to_string())
        .bind(domain_id.to_string())
        .bind(guid.to_string())
        .fetch_optional(self.conn())
        .await?;
        row.map(|r| link_from_row(&r)).transpose()
    }

    /// The link of a cloud object in a domain.
    pub async fn link_by_object(
        &mut self,
        org_id: Uuid,
        domain_id: Uuid,
        object_id: Uuid,
    ) -> StoreResult<Option<Link>> {
        let row = sqlx::query(
            "SELECT domain_id, object_kind, object_id, ad_guid, ad_dn, synced_at, base, ad_digest FROM links
             WHERE org_id = $1 AND domain_id = $2 AND object_id = $3",
        )
        .bind(org_id.to_string())
        .bind(domain_id.to_string())
        .bind(object_id.to_string())
        .fetch_optional(self.conn())
        .await?;
        row.map(|r| link_from_row(&r)).transpose()
    }

    /// The links in a domain of these cloud objects (those that have one).
    pub async fn links_by_objects(&mut self, org_id: Uuid, domain_id: Uuid, ids: &[Uuid]) -> StoreResult<Vec<Link>> {
        let sql = "SELECT domain_id, object_kind, object_id, ad_guid, ad_dn, synced_at, base, ad_digest FROM links
                   WHERE org_id = $1 AND domain_id = $2 AND object_id IN ({in})";
        let rows = self
            .rows_in(sql, &[&org_id.to_string(), &domain_id.to_string()], &texts(ids))
            .await?;
        rows.iter().map(link_from_row).collect()
    }

    /// Every link of a cloud object (one per domain).
    pub async fn links_of(&mut self, org_id: Uuid, object_id: Uuid) -> StoreResult<Vec<Link>> {
        let rows = sqlx::query(
            "SELECT domain_id, object_kind, object_id, ad_guid, ad_dn, synced_at, base, ad_digest FROM links
             WHERE org_id = $1 AND object_id = $2 ORDER BY domain_id",
        )
        .bind(org_id.to_string())
        .bind(object_id.to_string())
        .fetch_all(self.conn())
        .await?;
        rows.iter().map(link_from_row).collect()
    }

    /// The (domain, objectGUID) links of many objects, by object id, ordered
    /// by domain: what a feed entry keeps of them.
    pub async fn link_guids_of_many(
        &mut self,
        org_id: Uuid,
        object_ids: &[Uuid],
    ) -> StoreResult<std::collections::HashMap<Uuid, Vec<(Uuid, Uuid)>>> {
        let mut out: std::collections::HashMap<Uuid, Vec<(Uuid, Uuid)>> = std::collections::HashMap::new();
        let sql = "SELECT object_id, domain_id, ad_guid FROM links WHERE org_id = $1 AND object_id IN ({in})
                   ORDER BY domain_id";
        for r in self.rows_in(sql, &[&org_id.to_string()], &texts(object_ids)).await? {
            out.entry(get_uuid(&r, "object_id")?)
                .or_default()
                .push((get_uuid(&r, "domain_id")?, get_uuid(&r, "ad_guid")?));
        }
        Ok(out)
    }

    /// The cloud objects linked to many AD objects of a domain, by objectGUID.
    pub async fn objects_by_guids(
        &mut self,
        org_id: Uuid,
        domain_id: Uuid,
        guids: &[Uuid],
    ) -> StoreResult<std::collections::HashMap<Uuid, (ObjectKind, Uuid)>> {
        let mut out = std::collections::HashMap::new();
        let sql = "SELECT ad_guid, object_kind, object_id FROM links WHERE org_id = $1 AND domain_id = $2 AND ad_guid IN ({in})";
        for r in self
            .rows_in(sql, &[&org_id.to_string(), &domain_id.to_string()], &texts(guids))
            .await?
        {
            let kind: String = r.try_get("object_kind")?;
            let kind = ObjectKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("object_kind {kind:?}")))?;
            out.insert(get_uuid(&r, "ad_guid")?, (kind, get_uuid(&r, "object_id")?));
        }
        Ok(out)
    }

    /// Creates or moves a link.
    pub async fn put_link(&mut self, org_id: Uuid, link: &Link) -> StoreResult<()> {
        self.put_links_many(org_id, std::slice::from_ref(link)).await
    }

    /// Creates or moves links, in one statement. No two may name the same
    /// AD object.
    pub async fn put_links_many(&mut self, org_id: Uuid, links: &[Link]) -> StoreResult<()> {
        let rows: Vec<Vec<Cell>> = links
            .iter()
            .map(|link| {
                vec![
                    text(link.domain_id.to_string()),
                    text(link.kind.as_str()),
                    text(link.object_id.to_string()),
                    text(link.ad_guid.to_string()),
                    text(&link.ad_dn),
                    int(link.synced_at),
                    opt_text(link.base.as_ref().map(serde_json::Value::to_string)),
                    opt_text(link.ad_digest.clone()),
                ]
            })
            .collect();
        self.write_rows(
            "INSERT INTO links (org_id, domain_id, object_kind, object_id, ad_guid, ad_dn, synced_at, base, ad_digest)
             {rows}
             ON CONFLICT (domain_id, ad_guid) DO UPDATE SET object_kind = excluded.object_kind,
                 object_id = excluded.object_id, ad_dn = excluded.ad_dn, synced_at = excluded.synced_at,
                 base = COALESCE(excluded.base, links.base), ad_digest = COALESCE(excluded.ad_digest, links.ad_digest)",
            "$1, ?, ?, ?, ?, ?, ?n, ?, ?",
            vec![text(org_id.to_string())],
            &rows,
        )
        .await
        .map_err(|e| conflict_as(e, "the cloud object is linked to another AD object".into()))?;
        Ok(())
    }

    /// Every link of a domain.
    pub async fn links_of_domain(&mut self, org_id: Uuid, domain_id: Uuid) -> StoreResult<Vec<Link>> {
        self.links_of_domain_page(org_id, domain_id, None, i64::MAX).await
    }

    /// A page of a domain's links, by objectGUID: those after `after`, at most `limit`.
    pub async fn links_of_domain_page(
        &mut self,
        org_id: Uuid,
        domain_id: Uuid,
        after: Option<Uuid>,
        limit: i64,
    ) -> StoreResult<Vec<Link>> {
        let rows = sqlx::query(
            "SELECT domain_id, object_kind, object_id, ad_guid, ad_dn, synced_at, base, ad_digest FROM links
             WHERE org_id = $1 AND domain_id = $2 AND ad_guid > $3 ORDER BY ad_guid LIMIT $4",
        )
        .bind(org_id.to_string())
        .bind(domain_id.to_string())
        .bind(after.map(|g| g.to_string()).unwrap_or_default())
        .bind(limit)
        .fetch_all(self.conn())
        .await?;
        rows.iter().map(link_from_row).collect()
    }

    /// Drops the link of an AD object.
    pub async fn delete_link(&mut self, org_id: Uuid, domain_id: Uuid, guid: Uuid) -> StoreResult<()> {
        sqlx::query("DELETE FROM links WHERE org_id = $1 AND domain_id = $2 AND ad_guid = $3")
            .bind(org_id.to_string())
            .bind(domain_id.to_string())
            .bind(guid.to_string())
            .execute(self.conn())
            .await?;
        Ok(())
    }
}

pub(super) fn user_from_row(r: &AnyRow) -> StoreResult<UserRow> {
    let active: i64 = r.try_get("active")?;
    let password_hash: Option<String> = r.try_get("password_hash")?;
    Ok(UserRow {
        id: get_uuid(r, "id")?,
        username: r.try_get("username")?,
        external_id: r.try_get("external_id")?,
        active: active != 0,
        doc: get_json(r, "doc")?,
        has_password: password_hash.is_some(),
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        home_domain: get_opt_uuid(r, "home_domain")?,
    })
}

fn group_from_row(r: &AnyRow) -> StoreResult<GroupRow> {
    Ok(GroupRow {
        id: get_uuid(r, "id")?,
        name: r.try_get("name")?,
        external_id: r.try_get("external_id")?,
        doc: get_json(r, "doc")?,
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        home_domain: get_opt_uuid(r, "home_domain")?,
    })
}

fn member_from_row(r: &AnyRow) -> StoreResult<Member> {
    let kind: String = r.try_get("member_kind")?;
    Ok(Member {
        id: get_uuid(r, "member_id")?,
        kind: ObjectKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("member_kind {kind:?}")))?,
    })
}

pub(super) fn link_from_row(r: &AnyRow) -> StoreResult<Link> {
    let kind: String = r.try_get("object_kind")?;
    Ok(Link {
        domain_id: get_uuid(r, "domain_id")?,
        kind: ObjectKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("object_kind {kind:?}")))?,
        object_id: get_uuid(r, "object_id")?,
        ad_guid: get_uuid(r, "ad_guid")?,
        ad_dn: r.try_get("ad_dn")?,
        synced_at: r.try_get("synced_at")?,
        base: r
            .try_get::<Option<String>, _>("base")?
            .map(|b| serde_json::from_str(&b).map_err(|e| StoreError::Corrupt(format!("base: {e}"))))
            .transpose()?,
        ad_digest: r.try_get("ad_digest")?,
    })
}

/// The column of `orgs` that keeps the org's count of `kind` (`0010_org_counts.sql`).
fn count_column(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::User => "user_count",
        ObjectKind::Group => "group_count",
    }
}
