//! AD's naming rules for objects Ferry creates: a `sAMAccountName` AD
//! accepts (at most 20 characters for a user, none of `"/\[]:;|=,+*?<>`),
//! unique in the domain; a CN of at most 64 characters, unique in its OU
//! (`John Smith (2)`). The DN is never an identity: the link is the
//! objectGUID, so a derived name costs nothing later.
//!
//! Both sides use these rules: the agent to name what it creates, the cloud
//! to recognise, when AD reports the account back, a name derived from the
//! cloud's own (the cloud's userName stays).

/// A `sAMAccountName` for a display name: the characters AD refuses there
/// (`"/\\[]:;|=,+*?<>`) become `_`, trailing dots and spaces go, and the
/// result is cut to `max` characters.
pub fn sam_account_name_for(name: &str, max: usize) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if "\"/\\[]:;|=,+*?<>".contains(c) || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .take(max)
        .collect();
    let trimmed = cleaned.trim_end_matches(['.', ' ']);
    if trimmed.is_empty() {
        "_".into()
    } else {
        trimmed.to_owned()
    }
}

/// SAM's limit on a user's `sAMAccountName`.
pub const MAX_USER_SAM: usize = 20;
/// SAM's limit this agent uses for a group's (AD allows 256; 64 keeps it readable).
pub const MAX_GROUP_SAM: usize = 64;
/// `rangeUpper` of `cn`.
pub const MAX_CN: usize = 64;
/// Variants tried before giving up on a unique name.
pub const MAX_VARIANTS: u32 = 100;

/// The `sAMAccountName` for a cloud userName: the part before an `@` (an
/// e-mail-style userName), cleaned of what AD refuses, at most 20 characters.
pub fn user_sam(username: &str) -> String {
    let local = username.split('@').next().filter(|l| !l.is_empty()).unwrap_or(username);
    sam_account_name_for(local, MAX_USER_SAM)
}

/// The `n`th variant of a `sAMAccountName` (`n` ≥ 2): `base-n`, the base cut
/// so the whole stays within `max`.
pub fn sam_variant(base: &str, n: u32, max: usize) -> String {
    let suffix = format!("-{n}");
    let keep = max.saturating_sub(suffix.chars().count());
    let stem: String = base.chars().take(keep).collect();
    format!("{}{suffix}", stem.trim_end_matches(['.', ' ']))
}

/// Whether `current` is `base` or one of its variants: what Ferry derived
/// for this name earlier, so nothing needs renaming.
pub fn is_sam_for(current: &str, base: &str, max: usize) -> bool {
    if current.eq_ignore_ascii_case(base) {
        return true;
    }
    let Some((_, n)) = current.rsplit_once('-') else {
        return false;
    };
    n.parse::<u32>()
        .is_ok_and(|n| (2..=MAX_VARIANTS).contains(&n) && sam_variant(base, n, max).eq_ignore_ascii_case(current))
}

/// The CN for a display name: at most 64 characters, no trailing space.
pub fn cn_for(name: &str) -> String {
    let cut: String = name.chars().take(MAX_CN).collect();
    let trimmed = cut.trim();
    if trimmed.is_empty() {
        "_".into()
    } else {
        trimmed.to_owned()
    }
}

/// The `n`th variant of a CN (`n` ≥ 2): `John Smith (2)`, within 64.
pub fn cn_variant(base: &str, n: u32) -> String {
    let suffix = format!(" ({n})");
    let keep = MAX_CN.saturating_sub(suffix.chars().count());
    let stem: String = base.chars().take(keep).collect();
    format!("{}{suffix}", stem.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_sams_fit_ad() {
        assert_eq!(user_sam("bob"), "bob");
        assert_eq!(user_sam("jane.doe@contoso.com"), "jane.doe");
        assert_eq!(user_sam("a-name-of-25-characters-x"), "a-name-of-25-charact");
        assert_eq!(user_sam("a-name-of-25-characters-x").chars().count(), 20);
        assert_eq!(user_sam("o'neil[contractor]"), "o'neil_contractor_");
        // Nothing before the @: the whole name (AD allows an @ in the account name).
        assert_eq!(user_sam("@odd"), "@odd");
    }

    #[test]
    fn variants_stay_within_the_limit_and_are_recognised() {
        let base = user_sam("a-name-of-25-characters-x");
        let v = sam_variant(&base, 2, MAX_USER_SAM);
        assert_eq!(v, "a-name-of-25-chara-2");
        assert_eq!(v.chars().count(), 20);
        assert_eq!(sam_variant(&base, 100, MAX_USER_SAM).chars().count(), 20);
        assert!(is_sam_for(&v, &base, MAX_USER_SAM));
        assert!(is_sam_for("BOB", "bob", MAX_USER_SAM));
        assert!(!is_sam_for("bob-2x", "bob", MAX_USER_SAM));
        assert!(!is_sam_for("alice-2", "bob", MAX_USER_SAM));
        assert!(is_sam_for("bob-7", "bob", MAX_USER_SAM));
    }

    #[test]
    fn cns_fit_and_vary() {
        assert_eq!(cn_for("John Smith"), "John Smith");
        let long = "x".repeat(70);
        assert_eq!(cn_for(&long).chars().count(), 64);
        assert_eq!(cn_variant("John Smith", 2), "John Smith (2)");
        assert_eq!(cn_variant(&cn_for(&long), 12).chars().count(), 64);
        assert!(cn_variant(&"é".repeat(70), 3).ends_with("é (3)"));
    }
}
