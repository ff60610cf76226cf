//! AD domains, the Connect Keys that enrol agents into them, the agents
//! themselves, the primary lease, and each domain's sync position.

use ferry_proto::agent::DomainPolicies;
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use super::accounts::conflict_as;
use super::{get_json, get_opt_uuid, get_uuid, to_json, StoreError, StoreResult, Tx};

/// An AD domain configured in an org.
#[derive(Debug, Clone, PartialEq)]
pub struct Domain {
    /// Domain id.
    pub id: Uuid,
    /// Owning org.
    pub org_id: Uuid,
    /// Editable settings.
    pub settings: DomainSettings,
    /// DirSync cookie (base64) after the last applied AD batch.
    pub ad_cookie: Option<String>,
    /// Last acknowledged cloud feed position.
    pub feed_cursor: i64,
    /// Agent holding the primary lease.
    pub lease_agent_id: Option<Uuid>,
    /// When that lease ends (unix ms).
    pub lease_expires_at: i64,
    /// Creation time.
    pub created_at: i64,
    /// Last settings change.
    pub updated_at: i64,
}

/// The admin-editable part of a domain.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainSettings {
    /// DNS name, lowercase.
    pub name: String,
    /// NetBIOS name, uppercase.
    pub netbios_name: String,
    /// Naming context derived from the DNS name.
    pub root_dn: String,
    /// Container for users created in the cloud.
    pub user_ou: String,
    /// Sync policies.
    pub policies: DomainPolicies,
}

/// A Connect Key row (hash only).
#[derive(Debug, Clone)]
pub struct ConnectKeyRow {
    /// Key id.
    pub id: Uuid,
    /// Org.
    pub org_id: Uuid,
    /// Domain the key enrols into.
    pub domain_id: Uuid,
    /// Expiry (unix ms).
    pub expires_at: i64,
}

/// Why a Connect Key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectKeyProblem {
    /// No key with that value exists (mistyped, or never issued).
    Unknown,
    /// The key is past its expiry.
    Expired,
    /// The key was already used to register an agent.
    Used,
}

/// An enrolled agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    /// Agent id.
    pub id: Uuid,
    /// Org.
    pub org_id: Uuid,
    /// Domain served.
    pub domain_id: Uuid,
    /// Host it runs on.
    pub hostname: String,
    /// Agent version.
    pub version: String,
    /// X25519 public key, base64.
    pub public_key: String,
    /// Registration time.
    pub created_at: i64,
    /// Last heartbeat.
    pub last_seen_at: i64,
    /// Revocation time.
    pub revoked_at: Option<i64>,
    /// The last heartbeat's report.
    pub report: serde_json::Value,
}

/// The outcome of a lease request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Whether the asking agent holds the lease.
    pub primary: bool,
    /// The holder.
    pub holder: Option<Uuid>,
    /// When the lease ends.
    pub expires_at: i64,
}

const DOMAIN_COLS: &str = "id, org_id, name, netbios_name, root_dn, user_ou, policies, ad_cookie, feed_cursor, lease_agent_id, lease_expires_at, created_at, updated_at";
const AGENT_COLS: &str =
    "id, org_id, domain_id, hostname, version, public_key, created_at, last_seen_at, revoked_at, report";

impl Tx {
    /// Adds a domain; a conflict if the org has one of that name.
    pub async fn insert_domain(&mut self, org_id: Uuid, settings: &DomainSettings, now: i64) -> StoreResult<Domain> {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO domains (id, org_id, name, netbios_name, root_dn, user_ou, policies, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
        )
        .bind(id.to_string())
        .bind(org_id.to_string())
        .bind(&settings.name)
        .bind(&settings.netbios_name)
        .bind(&settings.root_dn)
        .bind(&settings.user_ou)
        .bind(to_json(&settings.policies)?)
        .bind(now)
        .execute(self.conn())
        .await
        .map_err(|e| conflict_as(e, format!("the domain {:?} is already configured", settings.name)))?;
        self.get_domain(org_id, id).await
    }

    /// One domain of the org.
    pub async fn get_domain(&mut self, org_id: Uuid, id: Uuid) -> StoreResult<Domain> {
        let sql = format!("SELECT {DOMAIN_COLS} FROM domains WHERE id = $1 AND org_id = $2");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(org_id.to_string())
            .fetch_optional(self.conn())
            .await?
            .ok_or(StoreError::NotFound)?;
        domain_from_row(&row)
    }

    /// The org's domains, by name.
    pub async fn list_domains(&mut self, org_id: Uuid) -> StoreResult<Vec<Domain>> {
        let sql = format!("SELECT {DOMAIN_COLS} FROM domains WHERE org_id = $1 ORDER BY name");
        let rows = sqlx::query(&sql)
            .bind(org_id.to_string())
            .fetch_all(self.conn())
            .await?;
        rows.iter().map(domain_from_row).collect()
    }

    /// Replaces a domain's settings.
    pub async fn update_domain(
        &mut self,
        org_id: Uuid,
        id: Uuid,
        settings: &DomainSettings,
        now: i64,
    ) -> StoreResult<Domain> {
        let done = sqlx::query(
            "UPDATE domains SET name = $1, netbios_name = $2, root_dn = $3, user_ou = $4, policies = $5, updated_at = $6
             WHERE id = $7 AND org_id = $8",
        )
        .bind(&settings.name)
        .bind(&settings.netbios_name)
        .bind(&settings.root_dn)
        .bind(&settings.user_ou)
        .bind(to_json(&settings.policies)?)
        .bind(now)
        .bind(id.to_string())
        .bind(org_id.to_string())
        .execute(self.conn())
        .await
        .map_err(|e| conflict_as(e, format!("the domain {:?} is already configured", settings.name)))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        self.get_domain(org_id, id).await
    }

    /// Deletes a domain with its keys, agents and links.
    pub async fn delete_domain(&mut self, org_id: Uuid, id: Uuid) -> StoreResult<()> {
        self.forget_home(org_id, id).await?;
        let (o, d) = (org_id.to_string(), id.to_string());
        for table in [
            "connect_keys",
            "agents",
            "links",
            "quarantine",
            "sync_errors",
            "cloud_deleted",
            "recent_deletes",
        ] {
            let sql = format!("DELETE FROM {table} WHERE domain_id = $1 AND org_id = $2");
            sqlx::query(&sql).bind(&d).bind(&o).execute(self.conn()).await?;
        }
        let done = sqlx::query("DELETE FROM domains WHERE id = $1 AND org_id = $2")
            .bind(&d)
            .bind(&o)
            .execute(self.conn())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Stores a new Connect Key's hash.
    pub async fn insert_connect_key(
        &mut self,
        org_id: Uuid,
        domain_id: Uuid,
        key_hash: &str,
        now: i64,
        expires_at: i64,
    ) -> StoreResult<Uuid> {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO connect_keys (id, org_id, domain_id, key_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id.to_string())
        .bind(org_id.to_string())
        .bind(domain_id.to_string())
        .bind(key_hash)
        .bind(now)
        .bind(expires_at)
        .execute(self.conn())
        .await?;
        Ok(id)
    }

    /// Marks a Connect Key used, once: a second use, even a concurrent one, fails.
    pub async fn consume_connect_key(
        &mut self,
        key_hash: &str,
        now: i64,
    ) -> StoreResult<Result<ConnectKeyRow, ConnectKeyProblem>> {
        let key = match self.find_connect_key(key_hash, now).await? {
            Ok(k) => k,
            Err(p) => return Ok(Err(p)),
        };
        let done = sqlx::query("UPDATE connect_keys SET used_at = $1 WHERE id = $2 AND used_at IS NULL")
            .bind(now)
            .bind(key.id.to_string())
            .execute(self.conn())
            .await?;
        if done.rows_affected() == 0 {
            return Ok(Err(ConnectKeyProblem::Used));
        }
        Ok(Ok(key))
    }

    /// The Connect Key with this hash if it could register an agent now,
    /// without using it up (the install wizard checks a key before it asks
    /// to install).
    pub async fn find_connect_key(
        &mut self,
        key_hash: &str,
        now: i64,
    ) -> StoreResult<Result<ConnectKeyRow, ConnectKeyProblem>> {
        let row =
            sqlx::query("SELECT id, org_id, domain_id, expires_at, used_at FROM connect_keys WHERE key_hash = $1")
                .bind(key_hash)
                .fetch_optional(self.conn())
                .await?;
        let Some(row) = row else {
            return Ok(Err(ConnectKeyProblem::Unknown));
        };
        let key = ConnectKeyRow {
            id: get_uuid(&row, "id")?,
            org_id: get_uuid(&row, "org_id")?,
            domain_id: get_uuid(&row, "domain_id")?,
            expires_at: row.try_get("expires_at")?,
        };
        let used_at: Option<i64> = row.try_get("used_at")?;
        if used_at.is_some() {
            return Ok(Err(ConnectKeyProblem::Used));
        }
        if key.expires_at <= now {
            return Ok(Err(ConnectKeyProblem::Expired));
        }
        Ok(Ok(key))
    }

    /// Registers an agent.
    #[allow(clippy::too_many_arguments)]
    pub async fn insert_agent(
        &mut self,
        org_id: Uuid,
        domain_id: Uuid,
        hostname: &str,
        version: &str,
        public_key: &str,
        token_hash: &str,
        now: i64,
    ) -> StoreResult<Agent> {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO agents (id, org_id, domain_id, hostname, version, public_key, token_hash, created_at, last_seen_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
        )
        .bind(id.to_string())
        .bind(org_id.to_string())
        .bind(domain_id.to_string())
        .bind(hostname)
        .bind(version)
        .bind(public_key)
        .bind(token_hash)
        .bind(now)
        .execute(self.conn())
        .await?;
        self.get_agent(org_id, id).await
    }

    /// One agent of the org.
    pub async fn get_agent(&mut self, org_id: Uuid, id: Uuid) -> StoreResult<Agent> {
        let sql = format!("SELECT {AGENT_COLS} FROM agents WHERE id = $1 AND org_id = $2");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(org_id.to_string())
            .fetch_optional(self.conn())
            .await?
            .ok_or(StoreError::NotFound)?;
        agent_from_row(&row)
    }

    /// The agent owning a token (revoked agents included; the caller decides).
    pub async fn find_agent_by_token(&mut self, token_hash: &str) -> StoreResult<Option<Agent>> {
        let sql = format!("SELECT {AGENT_COLS} FROM agents WHERE token_hash = $1");
        let row = sqlx::query(&sql).bind(token_hash).fetch_optional(self.conn()).await?;
        row.map(|r| agent_from_row(&r)).transpose()
    }

    /// A domain's agents, revoked ones excluded, newest first.
    pub async fn list_agents(&mut self, org_id: Uuid, domain_id: Uuid) -> StoreResult<Vec<Agent>> {
        let sql = format!(
            "SELECT {AGENT_COLS} FROM agents WHERE org_id = $1 AND domain_id = $2 AND revoked_at IS NULL ORDER BY created_at DESC"
        );
        let rows = sqlx::query(&sql)
            .bind(org_id.to_string())
            .bind(domain_id.to_string())
            .fetch_all(self.conn())
            .await?;
        rows.iter().map(agent_from_row).collect()
    }

    /// Revokes an agent: its token stops working and it loses any lease.
    pub async fn revoke_agent(&mut self, org_id: Uuid, domain_id: Uuid, id: Uuid, now: i64) -> StoreResult<()> {
        let done = sqlx::query(
            "UPDATE agents SET revoked_at = $1 WHERE id = $2 AND org_id = $3 AND domain_id = $4 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(id.to_string())
        .bind(org_id.to_string())
        .bind(domain_id.to_string())
        .execute(self.conn())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        sqlx::query(
            "UPDATE domains SET lease_agent_id = NULL, lease_expires_at = 0 WHERE id = $1 AND org_id = $2 AND lease_agent_id = $3",
        )
        .bind(domain_id.to_string())
        .bind(org_id.to_string())
        .bind(id.to_string())
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Records a heartbeat.
    pub async fn touch_agent(&mut self, agent: &Agent, report: &serde_json::Value, now: i64) -> StoreResult<()> {
        sqlx::query("UPDATE agents SET last_seen_at = $1, report = $2 WHERE id = $3 AND org_id = $4")
            .bind(now)
            .bind(to_json(report)?)
            .bind(agent.id.to_string())
            .bind(agent.org_id.to_string())
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// Takes or renews the domain's primary lease for `agent` when it is free,
    /// expired, or already this agent's; otherwise reports the holder.
    pub async fn acquire_lease(&mut self, agent: &Agent, now: i64, ttl_ms: i64) -> StoreResult<Lease> {
        let expires = now + ttl_ms;
        let done = sqlx::query(
            "UPDATE domains SET lease_agent_id = $1, lease_expires_at = $2
             WHERE id = $3 AND org_id = $4
               AND (lease_agent_id IS NULL OR lease_agent_id = $1 OR lease_expires_at < $5)",
        )
        .bind(agent.id.to_string())
        .bind(expires)
        .bind(agent.domain_id.to_string())
        .bind(agent.org_id.to_string())
        .bind(now)
        .execute(self.conn())
        .await?;
        if done.rows_affected() == 1 {
            return Ok(Lease {
                primary: true,
                holder: Some(agent.id),
                expires_at: expires,
            });
        }
        let d = self.get_domain(agent.org_id, agent.domain_id).await?;
        Ok(Lease {
            primary: false,
            holder: d.lease_agent_id,
            expires_at: d.lease_expires_at,
        })
    }

    /// Gives up the primary lease if `agent` holds it (a clean stop), so a
    /// standby takes over at its next heartbeat instead of after the lease.
    pub async fn release_lease(&mut self, agent: &Agent) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE domains SET lease_agent_id = NULL, lease_expires_at = 0 WHERE id = $1 AND org_id = $2 AND lease_agent_id = $3",
        )
        .bind(agent.domain_id.to_string())
        .bind(agent.org_id.to_string())
        .bind(agent.id.to_string())
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Moves the stored DirSync cookie from `from` to `to`; `false` when the
    /// stored cookie is not `from` (another agent moved it).
    pub async fn swap_ad_cookie(
        &mut self,
        org_id: Uuid,
        domain_id: Uuid,
        from: Option<&str>,
        to: Option<&str>,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE domains SET ad_cookie = $1 WHERE id = $2 AND org_id = $3 AND ad_cookie IS NOT DISTINCT FROM $4",
        )
        .bind(to)
        .bind(domain_id.to_string())
        .bind(org_id.to_string())
        .bind(from)
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Forgets the domain's DirSync cookie: the agent reads the domain whole again.
    pub async fn reset_ad_cookie(&mut self, org_id: Uuid, domain_id: Uuid) -> StoreResult<()> {
        let done = sqlx::query("UPDATE domains SET ad_cookie = NULL WHERE id = $1 AND org_id = $2")
            .bind(domain_id.to_string())
            .bind(org_id.to_string())
            .execute(self.conn())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Advances the domain's acknowledged feed cursor (never backwards).
    pub async fn advance_feed_cursor(&mut self, org_id: Uuid, domain_id: Uuid, cursor: i64) -> StoreResult<i64> {
        sqlx::query("UPDATE domains SET feed_cursor = $1 WHERE id = $2 AND org_id = $3 AND feed_cursor < $1")
            .bind(cursor)
            .bind(domain_id.to_string())
            .bind(org_id.to_string())
            .execute(self.conn())
            .await?;
        Ok(self.get_domain(org_id, domain_id).await?.feed_cursor)
    }
}

fn domain_from_row(r: &AnyRow) -> StoreResult<Domain> {
    Ok(Domain {
        id: get_uuid(r, "id")?,
        org_id: get_uuid(r, "org_id")?,
        settings: DomainSettings {
            name: r.try_get("name")?,
            netbios_name: r.try_get("netbios_name")?,
            root_dn: r.try_get("root_dn")?,
            user_ou: r.try_get("user_ou")?,
            policies: get_json(r, "policies")?,
        },
        ad_cookie: r.try_get("ad_cookie")?,
        feed_cursor: r.try_get("feed_cursor")?,
        lease_agent_id: get_opt_uuid(r, "lease_agent_id")?,
        lease_expires_at: r.try_get("lease_expires_at")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn agent_from_row(r: &AnyRow) -> StoreResult<Agent> {
    Ok(Agent {
        id: get_uuid(r, "id")?,
        org_id: get_uuid(r, "org_id")?,
        domain_id: get_uuid(r, "domain_id")?,
        hostname: r.try_get("hostname")?,
        version: r.try_get("version")?,
        public_key: r.try_get("public_key")?,
        created_at: r.try_get("created_at")?,
        last_seen_at: r.try_get("last_seen_at")?,
        revoked_at: r.try_get("revoked_at")?,
        report: get_json(r, "report")?,
    })
}

impl Tx {
    /// Holds AD changes for an admin's approval.
    pub async fn insert_quarantine(
        &mut self,
        org_id: Uuid,
        domain_id: Uuid,
        changes: &[ferry_proto::agent::AdChange],
        now: i64,
    ) -> StoreResult<Uuid> {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO quarantine (id, org_id, domain_id, created_at, changes, status) VALUES ($1, $2, $3, $4, $5, 'pending')",
        )
        .bind(id.to_string())
        .bind(org_id.to_string())
        .bind(domain_id.to_string())
        .bind(now)
        .bind(to_json(&changes)?)
        .execute(self.conn())
        .await?;
        Ok(id)
    }
}

impl Tx {
    /// Every agent of the org that is not revoked.
    pub async fn list_org_agents(&mut self, org_id: Uuid) -> StoreResult<Vec<Agent>> {
        let sql =
            format!("SELECT {AGENT_COLS} FROM agents WHERE org_id = $1 AND revoked_at IS NULL ORDER BY created_at");
        let rows = sqlx::query(&sql)
            .bind(org_id.to_string())
            .fetch_all(self.conn())
            .await?;
        rows.iter().map(agent_from_row).collect()
    }

    /// Stores a box sealed to one agent for one feed entry.
    pub async fn insert_sealed(
        &mut self,
        org_id: Uuid,
        agent_id: Uuid,
        seq: i64,
        sealed: &str,
        now: i64,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO sealed_secrets (org_id, agent_id, seq, sealed, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(org_id.to_string())
        .bind(agent_id.to_string())
        .bind(seq)
        .bind(sealed)
        .bind(now)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// The box sealed to `agent_id` for feed entry `seq`.
    pub async fn get_sealed(&mut self, org_id: Uuid, agent_id: Uuid, seq: i64) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT sealed FROM sealed_secrets WHERE org_id = $1 AND agent_id = $2 AND seq = $3")
            .bind(org_id.to_string())
            .bind(agent_id.to_string())
            .bind(seq)
            .fetch_optional(self.conn())
            .await?;
        Ok(row.map(|r| r.try_get("sealed")).transpose()?)
    }

    /// Drops an agent's boxes up to `seq` (acknowledged: AD has them).
    pub async fn delete_sealed_upto(&mut self, org_id: Uuid, agent_id: Uuid, seq: i64) -> StoreResult<()> {
        sqlx::query("DELETE FROM sealed_secrets WHERE org_id = $1 AND agent_id = $2 AND seq <= $3")
            .bind(org_id.to_string())
            .bind(agent_id.to_string())
            .bind(seq)
            .execute(self.conn())
            .await?;
        Ok(())
    }
}

/// Deletes held for an admin's decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Quarantine {
    /// Id.
    pub id: Uuid,
    /// Domain.
    pub domain_id: Uuid,
    /// When held.
    pub created_at: i64,
    /// The held changes.
    pub changes: Vec<ferry_proto::agent::AdChange>,
    /// `pending`, `approved` or `rejected`.
    pub status: String,
}

impl Tx {
    /// A domain's quarantine entries, newest first (`pending_only` to filter).
    pub async fn list_quarantine(
        &mut self,
        org_id: Uuid,
        domain_id: Uuid,
        pending_only: bool,
    ) -> StoreResult<Vec<Quarantine>> {
        let sql = format!(
            "SELECT id, domain_id, created_at, changes, status FROM quarantine WHERE org_id = $1 AND domain_id = $2 {} ORDER BY created_at DESC",
            if pending_only { "AND status = 'pending'" } else { "" }
        );
        let rows = sqlx::query(&sql)
            .bind(org_id.to_string())
            .bind(domain_id.to_string())
            .fetch_all(self.conn())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Quarantine {
                    id: get_uuid(r, "id")?,
                    domain_id: get_uuid(r, "domain_id")?,
                    created_at: r.try_get("created_at")?,
                    changes: get_json(r, "changes")?,
                    status: r.try_get("status")?,
                })
            })
            .collect()
    }

    /// Moves a pending entry to `approved` or `rejected`; `false` when it was not pending.
    pub async fn decide_quarantine(
        &mut self,
        org_id: Uuid,
        domain_id: Uuid,
        id: Uuid,
        status: &str,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE quarantine SET status = $1 WHERE id = $2 AND org_id = $3 AND domain_id = $4 AND status = 'pending'",
        )
        .bind(status)
        .bind(id.to_string())
        .bind(org_id.to_string())
        .bind(domain_id.to_string())
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
