//! Windows security descriptors as AD stores them (`nTSecurityDescriptor`,
//! self-relative): SIDs, the DACL and its (object) ACEs, and the access
//! check the preflight needs. Parsing is fallible; nothing here panics.

use uuid::Uuid;

use crate::ad::guid::guid_from_bytes;

/// A SID in binary form.
pub type Sid = Vec<u8>;

/// `S-1-5-21-…` of a binary SID.
pub fn sid_to_string(b: &[u8]) -> Option<String> {
    if b.len() < 8 {
        return None;
    }
    let count = b[1] as usize;
    if b.len() != 8 + 4 * count {
        return None;
    }
    let mut auth: u64 = 0;
    for x in &b[2..8] {
        auth = (auth << 8) | u64::from(*x);
    }
    let mut s = format!("S-{}-{auth}", b[0]);
    for i in 0..count {
        let o = 8 + 4 * i;
        let sub = u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        s.push_str(&format!("-{sub}"));
    }
    Some(s)
}

/// The last sub-authority (the RID) of a SID.
pub fn rid(b: &[u8]) -> Option<u32> {
    let n = b.len();
    (n >= 12).then(|| u32::from_le_bytes([b[n - 4], b[n - 3], b[n - 2], b[n - 1]]))
}

/// ACE flag: inherited by child containers.
pub const CONTAINER_INHERIT: u8 = 0x02;
/// ACE flag: inherited by child objects.
pub const OBJECT_INHERIT: u8 = 0x01;
/// ACE flag: applies to children only, not to the object itself.
pub const INHERIT_ONLY: u8 = 0x08;

/// Directory access rights.
pub mod rights {
    /// Create child.
    pub const CC: u32 = 0x1;
    /// Delete child.
    pub const DC: u32 = 0x2;
    /// Read property.
    pub const RP: u32 = 0x10;
    /// Write property.
    pub const WP: u32 = 0x20;
    /// Control access (extended right).
    pub const CR: u32 = 0x100;
    /// GENERIC_ALL as stored unexpanded.
    pub const GENERIC_ALL: u32 = 0x1000_0000;
    /// Everything a GA grant expands to in AD.
    pub const ALL_DS: u32 = 0x000F_01FF;
}

/// One ACE of a DACL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ace {
    /// Allow (true) or deny.
    pub allow: bool,
    /// Inheritance flags.
    pub flags: u8,
    /// Access mask.
    pub mask: u32,
    /// What the right applies to (class, attribute, property set or extended right).
    pub object_type: Option<Uuid>,
    /// Which descendant class inherits it.
    pub inherited_object_type: Option<Uuid>,
    /// Trustee.
    pub sid: Sid,
}

/// Parses the DACL of a self-relative security descriptor.
pub fn parse_dacl(sd: &[u8]) -> Option<Vec<Ace>> {
    let u32_at = |b: &[u8], o: usize| -> Option<u32> { Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?)) };
    let u16_at = |b: &[u8], o: usize| -> Option<u16> { Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?)) };
    let dacl_off = u32_at(sd, 16)? as usize;
    if dacl_off == 0 {
        return Some(vec![]);
    }
    let acl = sd.get(dacl_off..)?;
    let acl_size = u16_at(acl, 2)? as usize;
    let count = u16_at(acl, 4)? as usize;
    let acl = acl.get(..acl_size)?;
    let mut aces = Vec::with_capacity(count);
    let mut off = 8;
    for _ in 0..count {
        let ace_type = *acl.get(off)?;
        let flags = *acl.get(off + 1)?;
        let size = u16_at(acl, off + 2)? as usize;
        if size < 8 {
            return None;
        }
        let body = acl.get(off + 4..off + size)?;
        off += size;
        let (allow, object) = match ace_type {
            0x00 => (true, false),
            0x01 => (false, false),
            0x05 => (true, true),
            0x06 => (false, true),
            _ => continue, // audit and callback ACEs do not grant
        };
        let mask = u32_at(body, 0)?;
        let mut p = 4;
        let (mut object_type, mut inherited_object_type) = (None, None);
        if object {
            let oflags = u32_at(body, 4)?;
            p = 8;
            if oflags & 1 != 0 {
                object_type = Some(guid_from_bytes(body.get(p..p + 16)?)?);
                p += 16;
            }
            if oflags & 2 != 0 {
                inherited_object_type = Some(guid_from_bytes(body.get(p..p + 16)?)?);
                p += 16;
            }
        }
        let sid = body.get(p..)?;
        let sub = *sid.get(1)? as usize;
        let sid = sid.get(..8 + 4 * sub)?.to_vec();
        aces.push(Ace {
            allow,
            flags,
            mask,
            object_type,
            inherited_object_type,
            sid,
        });
    }
    Some(aces)
}

/// Where a right must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppliesTo {
    /// The container itself.
    Container,
    /// Objects of this class below the container.
    Descendants(Uuid),
}

/// One right to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// Rights bits, all required.
    pub rights: u32,
    /// The specific class/attribute/extended right; `None` means "all"
    /// (only an ACE without an object type grants it).
    pub object: Option<Uuid>,
    /// Where.
    pub applies_to: AppliesTo,
}

/// Whether the DACL grants `need` to any of `sids`, evaluating ACEs in
/// order, each right bit decided by the first ACE that speaks of it.
pub fn granted(dacl: &[Ace], sids: &[Sid], need: &Need) -> bool {
    let mut allowed = 0u32;
    let mut denied = 0u32;
    for ace in dacl {
        if !sids.contains(&ace.sid) {
            continue;
        }
        let applies = match need.applies_to {
            AppliesTo::Container => ace.flags & INHERIT_ONLY == 0,
            AppliesTo::Descendants(class) => {
                ace.flags & (CONTAINER_INHERIT | OBJECT_INHERIT) != 0
                    && ace.inherited_object_type.is_none_or(|t| t == class)
            }
        };
        let object_ok = match (need.object, ace.object_type) {
            (_, None) => true,
            (Some(o), Some(t)) => o == t,
            (None, Some(_)) => false,
        };
        if !applies || !object_ok {
            continue;
        }
        let mask = if ace.mask & rights::GENERIC_ALL != 0 {
            rights::ALL_DS
        } else {
            ace.mask
        };
        let bits = mask & need.rights & !(allowed | denied);
        if ace.allow {
            allowed |= bits;
        } else {
            denied |= bits;
        }
    }
    allowed & need.rights == need.rights
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(sub: &[u32]) -> Sid {
        let mut b = vec![1, sub.len() as u8, 0, 0, 0, 0, 0, 5];
        for s in sub {
            b.extend(s.to_le_bytes());
        }
        b
    }

    /// Builds a self-relative SD whose DACL holds `aces`.
    fn sd(aces: &[Ace]) -> Vec<u8> {
        let mut acl_body = Vec::new();
        for a in aces {
            let object = a.object_type.is_some() || a.inherited_object_type.is_some();
            let mut body = a.mask.to_le_bytes().to_vec();
            if object {
                let f = u32::from(a.object_type.is_some()) | (u32::from(a.inherited_object_type.is_some()) << 1);
                body.extend(f.to_le_bytes());
                for g in [a.object_type, a.inherited_object_type].into_iter().flatten() {
                    body.extend(g.to_bytes_le());
                }
            }
            body.extend(&a.sid);
            let t = match (a.allow, object) {
                (true, false) => 0,
                (false, false) => 1,
                (true, true) => 5,
                (false, true) => 6,
            };
            acl_body.push(t);
            acl_body.push(a.flags);
            acl_body.extend(((body.len() + 4) as u16).to_le_bytes());
            acl_body.extend(body);
        }
        let mut out = vec![1, 0, 0x04, 0x80];
        out.extend(0u32.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(20u32.to_le_bytes());
        out.extend([4, 0]);
        out.extend(((acl_body.len() + 8) as u16).to_le_bytes());
        out.extend((aces.len() as u16).to_le_bytes());
        out.extend([0, 0]);
        out.extend(acl_body);
        out
    }

    const USER: Uuid = Uuid::from_u128(0xbf967aba_0de6_11d0_a285_00aa003049e2);
    const GROUP: Uuid = Uuid::from_u128(0xbf967a9c_0de6_11d0_a285_00aa003049e2);

    #[test]
    fn sids_print_like_windows() {
        assert_eq!(
            sid_to_string(&sid(&[21, 1, 2, 3, 1105])).as_deref(),
            Some("S-1-5-21-1-2-3-1105")
        );
        assert_eq!(rid(&sid(&[21, 1, 2, 3, 512])), Some(512));
        assert_eq!(sid_to_string(&[1, 2, 0]), None);
    }

    #[test]
    fn object_aces_grant_only_what_they_name() {
        let me = sid(&[21, 9, 9, 9, 1200]);
        let other = sid(&[21, 9, 9, 9, 1300]);
        let aces = vec![
            Ace {
                allow: true,
                flags: CONTAINER_INHERIT,
                mask: rights::CC | rights::DC,
                object_type: Some(USER),
                inherited_object_type: None,
                sid: me.clone(),
            },
            Ace {
                allow: true,
                flags: CONTAINER_INHERIT | INHERIT_ONLY,
                mask: rights::GENERIC_ALL,
                object_type: None,
                inherited_object_type: Some(USER),
                sid: me.clone(),
            },
            Ace {
                allow: true,
                flags: CONTAINER_INHERIT,
                mask: rights::CC,
                object_type: Some(GROUP),
                inherited_object_type: None,
                sid: other.clone(),
            },
        ];
        let dacl = parse_dacl(&sd(&aces)).unwrap();
        assert_eq!(dacl, aces);
        let sids = vec![me];
        let create_users = Need {
            rights: rights::CC | rights::DC,
            object: Some(USER),
            applies_to: AppliesTo::Container,
        };
        let manage_users = Need {
            rights: rights::RP | rights::WP,
            object: None,
            applies_to: AppliesTo::Descendants(USER),
        };
        let create_groups = Need {
            rights: rights::CC | rights::DC,
            object: Some(GROUP),
            applies_to: AppliesTo::Container,
        };
        let manage_groups = Need {
            rights: rights::WP,
            object: None,
            applies_to: AppliesTo::Descendants(GROUP),
        };
        assert!(granted(&dacl, &sids, &create_users));
        assert!(granted(&dacl, &sids, &manage_users));
        assert!(!granted(&dacl, &sids, &create_groups), "another trustee's grant");
        assert!(!granted(&dacl, &sids, &manage_groups), "inherited to users only");
    }

    #[test]
    fn an_earlier_deny_wins() {
        let me = sid(&[21, 9, 9, 9, 1200]);
        let aces = vec![
            Ace {
                allow: false,
                flags: CONTAINER_INHERIT,
                mask: rights::WP,
                object_type: None,
                inherited_object_type: None,
                sid: me.clone(),
            },
            Ace {
                allow: true,
                flags: CONTAINER_INHERIT,
                mask: rights::ALL_DS,
                object_type: None,
                inherited_object_type: None,
                sid: me.clone(),
            },
        ];
        let dacl = parse_dacl(&sd(&aces)).unwrap();
        let need = |r| Need {
            rights: r,
            object: None,
            applies_to: AppliesTo::Descendants(USER),
        };
        assert!(granted(&dacl, std::slice::from_ref(&me), &need(rights::RP)));
        assert!(!granted(&dacl, &[me], &need(rights::RP | rights::WP)));
    }

    #[test]
    fn truncated_descriptors_are_none() {
        let me = sid(&[21, 1]);
        let good = sd(&[Ace {
            allow: true,
            flags: 0,
            mask: 1,
            object_type: Some(USER),
            inherited_object_type: None,
            sid: me,
        }]);
        for n in 0..good.len() {
            let _ = parse_dacl(&good[..n]); // must not panic
        }
        assert!(parse_dacl(&good[..good.len() - 1]).is_none());
        assert_eq!(
            parse_dacl(&[1, 0, 4, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Some(vec![])
        );
    }
}
