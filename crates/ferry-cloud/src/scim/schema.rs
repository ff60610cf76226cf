//! The SCIM schemas Ferry serves (RFC 7643 §4, §8.7), as data. Everything
//! else in this module — validation, PATCH, filters, projection, and the
//! discovery documents — is driven by these definitions, so an attribute
//! declared here is one the server stores and returns faithfully.

use serde_json::{json, Value};

use crate::directory::record::{ENTERPRISE_USER, FERRY_GROUP, FERRY_USER};

/// Core User schema URN.
pub const CORE_USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
/// Core Group schema URN.
pub const CORE_GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";

/// Attribute data types (RFC 7643 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    /// UTF-8 text.
    String,
    /// true/false.
    Boolean,
    /// Nested attributes.
    Complex,
    /// A URI.
    Reference,
    /// RFC 3339 timestamp.
    DateTime,
    /// Whole number.
    Integer,
}

/// Who may write an attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutability {
    /// Server-set.
    ReadOnly,
    /// Client-set.
    ReadWrite,
    /// Set once.
    Immutable,
    /// Set, never returned.
    WriteOnly,
}

/// When an attribute is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returned {
    /// Always.
    Always,
    /// Never.
    Never,
    /// Unless excluded.
    Default,
}

/// One attribute definition.
#[derive(Debug, Clone, Copy)]
pub struct Attr {
    /// Canonical name.
    pub name: &'static str,
    /// Data type.
    pub ty: Ty,
    /// Multi-valued.
    pub multi: bool,
    /// Required on create/replace.
    pub required: bool,
    /// Compared case-sensitively.
    pub case_exact: bool,
    /// Who may write it.
    pub mutability: Mutability,
    /// When it is returned.
    pub returned: Returned,
    /// Unique within the org.
    pub unique: bool,
    /// Sub-attributes of a complex attribute.
    pub sub: &'static [Attr],
    /// Suggested values.
    pub canonical: &'static [&'static str],
    /// Resource types a reference may point to.
    pub refs: &'static [&'static str],
    /// Human description.
    pub description: &'static str,
}

const fn attr(name: &'static str, ty: Ty, description: &'static str) -> Attr {
    Attr {
        name,
        ty,
        multi: false,
        required: false,
        case_exact: false,
        mutability: Mutability::ReadWrite,
        returned: Returned::Default,
        unique: false,
        sub: &[],
        canonical: &[],
        refs: &[],
        description,
    }
}

const fn string(name: &'static str, description: &'static str) -> Attr {
    attr(name, Ty::String, description)
}

const fn complex(name: &'static str, sub: &'static [Attr], description: &'static str) -> Attr {
    Attr {
        sub,
        ..attr(name, Ty::Complex, description)
    }
}

impl Attr {
    const fn multi(self) -> Attr {
        Attr { multi: true, ..self }
    }
    const fn required(self) -> Attr {
        Attr { required: true, ..self }
    }
    const fn case_exact(self) -> Attr {
        Attr {
            case_exact: true,
            ..self
        }
    }
    const fn read_only(self) -> Attr {
        Attr {
            mutability: Mutability::ReadOnly,
            ..self
        }
    }
    const fn immutable(self) -> Attr {
        Attr {
            mutability: Mutability::Immutable,
            ..self
        }
    }
    const fn unique(self) -> Attr {
        Attr { unique: true, ..self }
    }
    const fn canonical(self, canonical: &'static [&'static str]) -> Attr {
        Attr { canonical, ..self }
    }
    const fn refs(self, refs: &'static [&'static str]) -> Attr {
        Attr { refs, ..self }
    }

    /// The sub-attribute `name` (case-insensitive).
    pub fn sub_attr(&self, name: &str) -> Option<&'static Attr> {
        self.sub.iter().find(|a| a.name.eq_ignore_ascii_case(name))
    }

    fn to_json(self) -> Value {
        let mut v = json!({
            "name": self.name,
            "type": match self.ty {
                Ty::String => "string",
                Ty::Boolean => "boolean",
                Ty::Complex => "complex",
                Ty::Reference => "reference",
                Ty::DateTime => "dateTime",
                Ty::Integer => "integer",
            },
            "multiValued": self.multi,
            "description": self.description,
            "required": self.required,
            "caseExact": self.case_exact,
            "mutability": match self.mutability {
                Mutability::ReadOnly => "readOnly",
                Mutability::ReadWrite => "readWrite",
                Mutability::Immutable => "immutable",
                Mutability::WriteOnly => "writeOnly",
            },
            "returned": match self.returned {
                Returned::Always => "always",
                Returned::Never => "never",
                Returned::Default => "default",
            },
            "uniqueness": if self.unique { "server" } else { "none" },
        });
        if !self.sub.is_empty() {
            v["subAttributes"] = Value::Array(self.sub.iter().map(|a| a.to_json()).collect());
        }
        if !self.canonical.is_empty() {
            v["canonicalValues"] = json!(self.canonical);
        }
        if self.ty == Ty::Reference {
            v["referenceTypes"] = json!(if self.refs.is_empty() {
                &["external"][..]
            } else {
                self.refs
            });
        }
        v
    }
}

/// A schema: an id (URN) and its attributes.
#[derive(Debug)]
pub struct Schema {
    /// URN.
    pub id: &'static str,
    /// Short name.
    pub name: &'static str,
    /// Description.
    pub description: &'static str,
    /// Attributes.
    pub attrs: &'static [Attr],
}

impl Schema {
    /// The attribute `name` (case-insensitive).
    pub fn attr(&self, name: &str) -> Option<&'static Attr> {
        self.attrs.iter().find(|a| a.name.eq_ignore_ascii_case(name))
    }

    /// The `/Schemas/{id}` document.
    pub fn to_json(&self, base: &str) -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "attributes": self.attrs.iter().map(|a| a.to_json()).collect::<Vec<_>>(),
            "meta": { "resourceType": "Schema", "location": format!("{base}/Schemas/{}", self.id) },
        })
    }
}

const MULTI_TYPE_SUBS_EMAIL: &[Attr] = &[
    string("value", "The e-mail address."),
    string("display", "A human-readable name."),
    string("type", "work, home or other.").canonical(&["work", "home", "other"]),
    attr("primary", Ty::Boolean, "The preferred address."),
];

const PHONE_SUBS: &[Attr] = &[
    string("value", "The telephone number."),
    string("display", "A human-readable name."),
    string("type", "work, home, mobile, fax, pager or other.")
        .canonical(&["work", "home", "mobile", "fax", "pager", "other"]),
    attr("primary", Ty::Boolean, "The preferred number."),
];

const ADDRESS_SUBS: &[Attr] = &[
    string("formatted", "The full mailing address."),
    string("streetAddress", "Street."),
    string("locality", "City or locality."),
    string("region", "State or region."),
    string("postalCode", "Postal code."),
    string("country", "Country (ISO 3166-1 alpha-2)."),
    string("type", "work, home or other.").canonical(&["work", "home", "other"]),
    attr("primary", Ty::Boolean, "The preferred address."),
];

const NAME_SUBS: &[Attr] = &[
    string("formatted", "The full name."),
    string("familyName", "Family name."),
    string("givenName", "Given name."),
    string("middleName", "Middle name."),
    string("honorificPrefix", "Honorific prefix."),
    string("honorificSuffix", "Honorific suffix."),
];

const USER_GROUP_SUBS: &[Attr] = &[
    string("value", "The group's id.").read_only(),
    attr("$ref", Ty::Reference, "The group's URI.")
        .refs(&["Group"])
        .read_only(),
    string("display", "The group's name.").read_only(),
    string("type", "direct.").canonical(&["direct", "indirect"]).read_only(),
];

/// `urn:ietf:params:scim:schemas:core:2.0:User`.
pub static USER: Schema = Schema {
    id: CORE_USER,
    name: "User",
    description: "User Account",
    attrs: &[
        string("userName", "Unique login name; sAMAccountName in AD.")
            .required()
            .unique(),
        complex("name", NAME_SUBS, "The components of the user's name."),
        string("displayName", "The name displayed to people."),
        string("nickName", "Casual name."),
        attr("profileUrl", Ty::Reference, "A URL of the user's online profile."),
        string("title", "Job title."),
        string("userType", "Relationship to the organization."),
        string("preferredLanguage", "Preferred language."),
        string("locale", "Locale."),
        string("timezone", "Time zone (IANA)."),
        attr(
            "active",
            Ty::Boolean,
            "false suspends the user (disables the AD account).",
        ),
        Attr {
            mutability: Mutability::WriteOnly,
            returned: Returned::Never,
            ..string("password", "Sets the password; never returned, stored only as a hash.")
        },
        complex("emails", MULTI_TYPE_SUBS_EMAIL, "E-mail addresses.").multi(),
        complex("phoneNumbers", PHONE_SUBS, "Telephone numbers.").multi(),
        complex("addresses", ADDRESS_SUBS, "Physical mailing addresses.").multi(),
        complex("groups", USER_GROUP_SUBS, "Groups the user is a direct member of.")
            .multi()
            .read_only(),
    ],
};

const MANAGER_SUBS: &[Attr] = &[
    string("value", "The manager's id."),
    attr("$ref", Ty::Reference, "The manager's URI.").refs(&["User"]),
    // Accepted and ignored on input (clients send it), never returned.
    string("displayName", "The manager's name.").read_only(),
];

/// The enterprise user extension (RFC 7643 §4.3).
pub static ENTERPRISE: Schema = Schema {
    id: ENTERPRISE_USER,
    name: "EnterpriseUser",
    description: "Enterprise User",
    attrs: &[
        string("employeeNumber", "Employee number."),
        string("costCenter", "Cost center."),
        string("organization", "Organization (company in AD)."),
        string("division", "Division."),
        string("department", "Department."),
        complex("manager", MANAGER_SUBS, "The user's manager."),
    ],
};

/// Ferry's user extension: AD attributes with no SCIM home.
pub static FERRY_USER_EXT: Schema = Schema {
    id: FERRY_USER,
    name: "FerryUser",
    description: "Ferry user attributes",
    attrs: &[string("description", "Free-text description (AD description).")],
};

const MEMBER_SUBS: &[Attr] = &[
    string("value", "The member's id.").immutable().case_exact(),
    attr("$ref", Ty::Reference, "The member's URI.")
        .refs(&["User", "Group"])
        .immutable(),
    string("type", "User or Group.")
        .canonical(&["User", "Group"])
        .immutable(),
    // Accepted and ignored on input (clients send it), never returned.
    string("display", "The member's name.").read_only(),
];

/// `urn:ietf:params:scim:schemas:core:2.0:Group`.
pub static GROUP: Schema = Schema {
    id: CORE_GROUP,
    name: "Group",
    description: "Group",
    attrs: &[
        string("displayName", "The group's name; unique in the org.")
            .required()
            .unique(),
        complex("members", MEMBER_SUBS, "Users and groups in the group.").multi(),
    ],
};

/// Ferry's group extension.
pub static FERRY_GROUP_EXT: Schema = Schema {
    id: FERRY_GROUP,
    name: "FerryGroup",
    description: "Ferry group attributes",
    attrs: &[string("description", "Free-text description (AD description).")],
};

/// Attributes every resource has (RFC 7643 §3.1).
pub static COMMON: &[Attr] = &[
    Attr {
        returned: Returned::Always,
        ..string("id", "Server-assigned id.").read_only().case_exact()
    },
    string("externalId", "The provisioning client's id.").case_exact(),
];

/// A resource type: a core schema plus extensions, at an endpoint.
#[derive(Debug)]
pub struct ResourceType {
    /// Name (`User`, `Group`).
    pub name: &'static str,
    /// Endpoint (`/Users`).
    pub endpoint: &'static str,
    /// The core schema.
    pub core: &'static Schema,
    /// Extension schemas.
    pub extensions: &'static [&'static Schema],
}

/// Users.
pub static USERS: ResourceType = ResourceType {
    name: "User",
    endpoint: "/Users",
    core: &USER,
    extensions: &[&ENTERPRISE, &FERRY_USER_EXT],
};

/// Groups.
pub static GROUPS: ResourceType = ResourceType {
    name: "Group",
    endpoint: "/Groups",
    core: &GROUP,
    extensions: &[&FERRY_GROUP_EXT],
};

/// Every resource type served.
pub static RESOURCE_TYPES: &[&ResourceType] = &[&USERS, &GROUPS];

impl ResourceType {
    /// The extension with URN `urn` (case-insensitive).
    pub fn extension(&self, urn: &str) -> Option<&'static Schema> {
        self.extensions.iter().copied().find(|s| s.id.eq_ignore_ascii_case(urn))
    }

    /// A core or common attribute by name.
    pub fn core_attr(&self, name: &str) -> Option<&'static Attr> {
        self.core
            .attr(name)
            .or_else(|| COMMON.iter().find(|a| a.name.eq_ignore_ascii_case(name)))
    }

    /// The `/ResourceTypes/{name}` document.
    pub fn to_json(&self, base: &str) -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": self.name,
            "name": self.name,
            "endpoint": self.endpoint,
            "description": self.core.description,
            "schema": self.core.id,
            "schemaExtensions": self.extensions.iter()
                .map(|e| json!({"schema": e.id, "required": false}))
                .collect::<Vec<_>>(),
            "meta": { "resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/{}", self.name) },
        })
    }
}

/// Every schema served, core first.
pub fn all_schemas() -> Vec<&'static Schema> {
    vec![&USER, &ENTERPRISE, &FERRY_USER_EXT, &GROUP, &FERRY_GROUP_EXT]
}

/// Largest page a list returns.
pub const MAX_RESULTS: usize = 1000;

/// The `/ServiceProviderConfig` document.
pub fn service_provider_config(base: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
        "patch": {"supported": true},
        "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": true, "maxResults": MAX_RESULTS},
        "changePassword": {"supported": true},
        "sort": {"supported": false},
        "etag": {"supported": true},
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "Bearer token",
            "description": "An admin API token of the organization (ferry-cloud init --token-out, or the console).",
            "primary": true
        }],
        "meta": {"resourceType": "ServiceProviderConfig", "location": format!("{base}/ServiceProviderConfig")},
    })
}
