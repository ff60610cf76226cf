//! Writing AD: users, passwords, account state, renames and moves, groups
//! and memberships. Every write names what it tried when it fails.

use std::collections::HashSet;

use ldap3::Mod;

use super::dn::{escape_value, Dn};
use super::error::{self, AdError};
use super::AdConnection;

/// `userAccountControl`: account disabled.
pub const UF_ACCOUNTDISABLE: i64 = 0x2;
/// `userAccountControl`: no password required (how AD creates password-less users).
pub const UF_PASSWD_NOTREQD: i64 = 0x20;
/// `userAccountControl`: a normal user account.
pub const UF_NORMAL_ACCOUNT: i64 = 0x200;
/// `userAccountControl`: the password never expires.
pub const UF_DONT_EXPIRE_PASSWD: i64 = 0x10000;
/// `groupType` of a global security group.
pub const GROUP_GLOBAL_SECURITY: i64 = -2147483646;
/// `groupType` of a universal security group: what Ferry creates, since a
/// universal group may hold users, global and universal groups and sit in
/// universal and domain-local ones, so cloud nesting keeps AD's rules.
pub const GROUP_UNIVERSAL_SECURITY: i64 = -2147483640;
/// The tree-delete control: an object and everything under it.
pub const TREE_DELETE_OID: &str = "1.2.840.113556.1.4.805";

/// A user to create.
#[derive(Debug, Clone, Default)]
pub struct NewAdUser {
    /// `sAMAccountName`.
    pub sam_account_name: String,
    /// `userPrincipalName`.
    pub upn: Option<String>,
    /// `cn` (the RDN value); defaults to the display name or the account name.
    pub cn: Option<String>,
    /// Other attributes to set (LDAP name → value), e.g. `givenName`.
    pub attributes: Vec<(String, String)>,
    /// Initial password (needs an encrypted connection).
    pub password: Option<String>,
    /// Enabled (only possible with a password).
    pub enabled: bool,
}

/// What a single membership change found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// The group changed.
    Changed,
    /// The member was already in (or already out of) the group.
    AlreadySo,
}

/// A group to create.
#[derive(Debug, Clone)]
pub struct NewAdGroup {
    /// `cn`.
    pub name: String,
    /// `sAMAccountName`; derived from the name with [`sam_account_name_for`] when unset.
    pub sam_account_name: Option<String>,
    /// `description`.
    pub description: Option<String>,
    /// `groupType`.
    pub group_type: i64,
}

/// `unicodePwd`: the password in double quotes, UTF-16LE.
pub fn unicode_pwd(password: &str) -> Vec<u8> {
    format!("\"{password}\"")
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect()
}

pub use ferry_proto::names::sam_account_name_for;

fn set(v: &str) -> HashSet<Vec<u8>> {
    HashSet::from([v.as_bytes().to_vec()])
}

impl AdConnection {
    fn check(&self, r: ldap3::LdapResult, what: &str) -> Result<(), AdError> {
        if r.rc == 0 {
            Ok(())
        } else {
            Err(error::from_result(r.rc, &r.text, what))
        }
    }

    /// An LDAP add; `what` names it in errors.
    async fn add_entry(
        &mut self,
        dn: &str,
        attrs: Vec<(Vec<u8>, HashSet<Vec<u8>>)>,
        what: &str,
    ) -> Result<(), AdError> {
        let started = std::time::Instant::now();
        let r = self
            .ldap
            .with_timeout(self.timeout)
            .add(dn, attrs)
            .await
            .map_err(|e| self.io_error(e))?;
        self.timed("add", dn, started);
        self.check(r, what)
    }

    /// An LDAP modify; `what` names it in errors.
    async fn modify_entry(&mut self, dn: &str, mods: Vec<Mod<Vec<u8>>>, what: &str) -> Result<(), AdError> {
        let started = std::time::Instant::now();
        let r = self
            .ldap
            .with_timeout(self.timeout)
            .modify(dn, mods)
            .await
            .map_err(|e| self.io_error(e))?;
        self.timed("modify", dn, started);
        self.check(r, what)
    }

    fn require_encryption(&self) -> Result<(), AdError> {
        if self.encrypted() {
            Ok(())
        } else {
            Err(AdError::PasswordNeedsEncryption)
        }
    }

    /// Creates a user in `parent` (an OU or container DN); returns its DN.
    /// With a password the account is created enabled (or disabled, as
    /// asked) in one add; without one it is created disabled.
    pub async fn create_user(&mut self, parent: &str, u: &NewAdUser) -> Result<String, AdError> {
        Dn::parse(parent)?;
        if u.password.is_some() {
            self.require_encryption()?;
        }
        let cn = u.cn.clone().unwrap_or_else(|| u.sam_account_name.clone());
        let dn = format!("CN={},{parent}", escape_value(&cn));
        let mut attrs: Vec<(Vec<u8>, HashSet<Vec<u8>>)> = vec![
            (
                b"objectClass".to_vec(),
                HashSet::from([
                    b"top".to_vec(),
                    b"person".to_vec(),
                    b"organizationalPerson".to_vec(),
                    b"user".to_vec(),
                ]),
            ),
            (b"sAMAccountName".to_vec(), set(&u.sam_account_name)),
        ];
        if let Some(upn) = &u.upn {
            attrs.push((b"userPrincipalName".to_vec(), set(upn)));
        }
        for (k, v) in &u.attributes {
            if !v.is_empty() {
                attrs.push((k.as_bytes().to_vec(), set(v)));
            }
        }
        let uac = match (&u.password, u.enabled) {
            (Some(p), enabled) => {
                attrs.push((b"unicodePwd".to_vec(), HashSet::from([unicode_pwd(p)])));
                UF_NORMAL_ACCOUNT | if enabled { 0 } else { UF_ACCOUNTDISABLE }
            }
            (None, _) => UF_NORMAL_ACCOUNT | UF_ACCOUNTDISABLE | UF_PASSWD_NOTREQD,
        };
        attrs.push((b"userAccountControl".to_vec(), set(&uac.to_string())));
        self.add_entry(&dn, attrs, &format!("create user {dn}")).await?;
        Ok(dn)
    }

    /// Replaces (value given) or clears (`None`) attributes of an object.
    pub async fn set_attributes(&mut self, dn: &str, changes: &[(&str, Option<&str>)]) -> Result<(), AdError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mods: Vec<Mod<Vec<u8>>> = changes
            .iter()
            .map(|(k, v)| match v {
                Some(v) => Mod::Replace(k.as_bytes().to_vec(), set(v)),
                None => Mod::Replace(k.as_bytes().to_vec(), HashSet::new()),
            })
            .collect();
        self.modify_entry(dn, mods, &format!("modify {dn}")).await
    }

    /// Enables or disables an account (the ACCOUNTDISABLE bit, others kept).
    pub async fn set_enabled(&mut self, dn: &str, enabled: bool) -> Result<(), AdError> {
        let e = self
            .read_entry(dn, &["userAccountControl"])
            .await?
            .ok_or_else(|| AdError::NoSuchObject(dn.to_owned()))?;
        let uac = e.int("userAccountControl").unwrap_or(UF_NORMAL_ACCOUNT);
        let next = if enabled {
            uac & !UF_ACCOUNTDISABLE
        } else {
            uac | UF_ACCOUNTDISABLE
        };
        if next == uac {
            return Ok(());
        }
        self.set_attributes(dn, &[("userAccountControl", Some(&next.to_string()))])
            .await
    }

    /// Sets a password (refused unless the connection is encrypted); with
    /// `must_change`, the user must change it at next logon.
    pub async fn set_password(&mut self, dn: &str, password: &str, must_change: bool) -> Result<(), AdError> {
        self.require_encryption()?;
        let mut mods = vec![Mod::Replace(
            b"unicodePwd".to_vec(),
            HashSet::from([unicode_pwd(password)]),
        )];
        if must_change {
            mods.push(Mod::Replace(b"pwdLastSet".to_vec(), set("0")));
        }
        // The password itself never goes into an error message.
        self.modify_entry(dn, mods, &format!("set the password of {dn}")).await
    }

    /// Renames (new CN) and/or moves (new parent) an object; identity
    /// (objectGUID) is kept. Returns the new DN.
    pub async fn rename_move(
        &mut self,
        dn: &str,
        new_cn: Option<&str>,
        new_parent: Option<&str>,
    ) -> Result<String, AdError> {
        let parsed = Dn::parse(dn)?;
        let rdn = parsed
            .rdn()
            .ok_or_else(|| AdError::Protocol(format!("{dn} has no RDN")))?;
        let new_rdn = match new_cn {
            Some(cn) => format!("{}={}", rdn.attr, escape_value(cn)),
            None => rdn.to_dn_string(),
        };
        let parent = match new_parent {
            Some(p) => {
                Dn::parse(p)?;
                p.to_owned()
            }
            None => parsed.parent().map(|p| p.to_dn_string()).unwrap_or_default(),
        };
        let r = self
            .ldap
            .with_timeout(self.timeout)
            .modifydn(dn, &new_rdn, true, new_parent)
            .await
            .map_err(|e| self.io_error(e))?;
        self.check(r, &format!("rename/move {dn}"))?;
        Ok(format!("{new_rdn},{parent}"))
    }

    /// Deletes an object (a leaf).
    pub async fn delete(&mut self, dn: &str) -> Result<(), AdError> {
        let r = self
            .ldap
            .with_timeout(self.timeout)
            .delete(dn)
            .await
            .map_err(|e| self.io_error(e))?;
        self.check(r, &format!("delete {dn}"))
    }

    /// Deletes an object and everything under it (AD refuses a plain delete
    /// of an object with children: 66).
    pub async fn delete_tree(&mut self, dn: &str) -> Result<(), AdError> {
        let tree = ldap3::controls::RawControl {
            ctype: TREE_DELETE_OID.into(),
            crit: true,
            val: None,
        };
        let r = self
            .ldap
            .with_timeout(self.timeout)
            .with_controls(vec![tree])
            .delete(dn)
            .await
            .map_err(|e| self.io_error(e))?;
        self.check(r, &format!("delete {dn} with what is under it"))
    }

    /// Creates a group in `parent`; returns its DN.
    pub async fn create_group(&mut self, parent: &str, g: &NewAdGroup) -> Result<String, AdError> {
        Dn::parse(parent)?;
        let dn = format!("CN={},{parent}", escape_value(&g.name));
        let mut attrs: Vec<(Vec<u8>, HashSet<Vec<u8>>)> = vec![
            (
                b"objectClass".to_vec(),
                HashSet::from([b"top".to_vec(), b"group".to_vec()]),
            ),
            (
                b"sAMAccountName".to_vec(),
                set(&g
                    .sam_account_name
                    .clone()
                    .unwrap_or_else(|| sam_account_name_for(&g.name, 64))),
            ),
            (b"groupType".to_vec(), set(&g.group_type.to_string())),
        ];
        if let Some(d) = g.description.as_deref().filter(|d| !d.is_empty()) {
            attrs.push((b"description".to_vec(), set(d)));
        }
        self.add_entry(&dn, attrs, &format!("create group {dn}")).await?;
        Ok(dn)
    }

    /// Makes `member` a member of `group`. One that already is counts as
    /// done: the state wanted is there (AD and Samba answer 68).
    pub async fn add_member(&mut self, group: &str, member: &str) -> Result<Membership, AdError> {
        match self.change_members(group, &[member.to_owned()], true).await {
            Ok(()) => Ok(Membership::Changed),
            Err(AdError::AlreadyExists(_)) => Ok(Membership::AlreadySo),
            Err(e) => Err(e),
        }
    }

    /// Takes `member` out of `group`. One that is not a member counts as done.
    pub async fn remove_member(&mut self, group: &str, member: &str) -> Result<Membership, AdError> {
        match self.change_members(group, &[member.to_owned()], false).await {
            Ok(()) => Ok(Membership::Changed),
            Err(e) if error::is_not_a_member(&e) => Ok(Membership::AlreadySo),
            Err(e) => Err(e),
        }
    }

    /// Adds members (DNs) to a group. A missing member DN fails the whole
    /// change (AD's 00000525) and adds none.
    pub async fn add_members(&mut self, group: &str, members: &[String]) -> Result<(), AdError> {
        self.change_members(group, members, true).await
    }

    /// Removes members (DNs) from a group.
    pub async fn remove_members(&mut self, group: &str, members: &[String]) -> Result<(), AdError> {
        self.change_members(group, members, false).await
    }

    async fn change_members(&mut self, group: &str, members: &[String], add: bool) -> Result<(), AdError> {
        // AD takes at most a few thousand values per modify; send in chunks.
        for chunk in members.chunks(1000) {
            let vals: HashSet<Vec<u8>> = chunk.iter().map(|m| m.as_bytes().to_vec()).collect();
            let m = if add {
                Mod::Add(b"member".to_vec(), vals)
            } else {
                Mod::Delete(b"member".to_vec(), vals)
            };
            let what = if add { "add members to" } else { "remove members from" };
            self.modify_entry(group, vec![m], &format!("{what} {group}")).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sam_account_names_drop_what_ad_refuses() {
        assert_eq!(sam_account_name_for("Engineers, R&D", 64), "Engineers_ R&D");
        assert_eq!(
            sam_account_name_for("a/b\\c[d]e:f;g|h=i,j+k*l?m<n>o\"p", 64),
            "a_b_c_d_e_f_g_h_i_j_k_l_m_n_o_p"
        );
        assert_eq!(sam_account_name_for("trailing. ", 64), "trailing");
        assert_eq!(sam_account_name_for("x".repeat(100).as_str(), 64).len(), 64);
        assert_eq!(sam_account_name_for("...", 64), "_");
    }

    #[test]
    fn unicode_pwd_is_quoted_utf16le() {
        assert_eq!(unicode_pwd("ab"), vec![b'"', 0, b'a', 0, b'b', 0, b'"', 0]);
        assert_eq!(unicode_pwd("é"), vec![b'"', 0, 0xe9, 0, b'"', 0]);
    }
}
