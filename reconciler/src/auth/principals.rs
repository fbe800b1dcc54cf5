//! Principals (identity) and account memberships in the database (migration `0004_auth.sql`).
//!
//! # Guarantees
//! - Emails are compared lower-cased; one row per email (unique), so two first requests of the
//!   same user racing each other end with one principal and one uid.
//! - A principal's uid never changes once created; its `external_id` (the JWT `sub`) is filled
//!   on the first authenticated request when the principal was created ahead of it (CLI).
//! - Memberships are keyed by uid only (no foreign key): in a non-primary region the uid comes
//!   from the primary, whose `principals` table is the only one consulted.

use sqlx::Row as _;

use crate::db::{now_ms, Db, Error};

/// The system role that writes everything.
pub const ROLE_ADMIN: &str = "admin";
/// The membership role that writes an account's workspaces.
pub const ROLE_MEMBER: &str = "member";
/// A membership role that is listed but only reads.
pub const ROLE_VIEWER: &str = "viewer";

/// Who someone is (reference doc 001: uid, email, kind, externalId, system roles).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    /// Stable id, the same in every region.
    pub uid: String,
    /// Lower-cased email.
    #[serde(default)]
    pub email: String,
    /// The identity provider's subject (`sub`), `""` until the first sign-in.
    pub external_id: String,
    /// `user` or `service`.
    pub kind: String,
    /// System roles, e.g. `admin`.
    pub system_roles: Vec<String>,
}

/// The canonical form of an email: trimmed and lower-cased.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

fn roles_of(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A new uid: 128 random bits in the UUID v4 layout.
fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    let mut b = b;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn identity(row: &sqlx::any::AnyRow) -> Result<Identity, Error> {
    Ok(Identity {
        uid: row.try_get("uid")?,
        email: row.try_get("email")?,
        external_id: row.try_get("external_id")?,
        kind: row.try_get("kind")?,
        system_roles: roles_of(&row.try_get::<String, _>("system_roles")?),
    })
}

/// The principal with this email, if any.
pub async fn find(db: &Db, email: &str) -> Result<Option<Identity>, Error> {
    let row = sqlx::query(
        "SELECT uid, email, external_id, kind, system_roles FROM principals WHERE email = $1",
    )
    .bind(normalize_email(email))
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(identity).transpose()
}

/// The principal with this email, created (kind `user`, no roles) when it is the first time.
/// `subject` (the JWT `sub`) is recorded on creation, and on a principal created ahead of its
/// first sign-in.
pub async fn resolve(db: &Db, email: &str, subject: &str) -> Result<Identity, Error> {
    let email = normalize_email(email);
    if let Some(found) = find(db, &email).await? {
        if found.external_id.is_empty() && !subject.is_empty() {
            sqlx::query("UPDATE principals SET external_id = $1, updated_at = $2 WHERE uid = $3 AND external_id = ''")
                .bind(subject)
                .bind(now_ms())
                .bind(&found.uid)
                .execute(db.pool())
                .await?;
            return Ok(Identity {
                external_id: subject.to_owned(),
                ..found
            });
        }
        return Ok(found);
    }
    let now = now_ms();
    sqlx::query(
        "INSERT INTO principals (uid, email, external_id, kind, system_roles, created_at, updated_at)
         VALUES ($1, $2, $3, 'user', '', $4, $4) ON CONFLICT (email) DO NOTHING",
    )
    .bind(new_uid())
    .bind(&email)
    .bind(subject)
    .bind(now)
    .execute(db.pool())
    .await?;
    find(db, &email)
        .await?
        .ok_or_else(|| Error::Corrupt(format!("principal {email} vanished after its insert")))
}

/// Adds (`grant`) or removes a system role; creates the principal when it does not exist yet
/// (so an admin can be named before their first sign-in). Returns the principal after.
pub async fn set_role(db: &Db, email: &str, role: &str, grant: bool) -> Result<Identity, Error> {
    let mut p = resolve(db, email, "").await?;
    let had = p.system_roles.iter().any(|r| r == role);
    if had == grant {
        return Ok(p);
    }
    if grant {
        p.system_roles.push(role.to_owned());
    } else {
        p.system_roles.retain(|r| r != role);
    }
    sqlx::query("UPDATE principals SET system_roles = $1, updated_at = $2 WHERE uid = $3")
        .bind(p.system_roles.join(","))
        .bind(now_ms())
        .bind(&p.uid)
        .execute(db.pool())
        .await?;
    Ok(p)
}

/// Adds or changes the membership of `uid` in `account`.
pub async fn add_membership(db: &Db, uid: &str, account: &str, role: &str) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO account_memberships (principal_uid, account, role, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (principal_uid, account) DO UPDATE SET role = excluded.role",
    )
    .bind(uid)
    .bind(account)
    .bind(role)
    .bind(now_ms())
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Removes the membership; returns whether there was one.
pub async fn remove_membership(db: &Db, uid: &str, account: &str) -> Result<bool, Error> {
    let done =
        sqlx::query("DELETE FROM account_memberships WHERE principal_uid = $1 AND account = $2")
            .bind(uid)
            .bind(account)
            .execute(db.pool())
            .await?;
    Ok(done.rows_affected() > 0)
}

/// The role of `uid` in `account`, if a member.
pub async fn membership_role(db: &Db, uid: &str, account: &str) -> Result<Option<String>, Error> {
    let row = sqlx::query(
        "SELECT role FROM account_memberships WHERE principal_uid = $1 AND account = $2",
    )
    .bind(uid)
    .bind(account)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.map(|r| r.try_get("role")).transpose()?)
}

/// Every membership of `uid`: (account, role), by account.
pub async fn memberships(db: &Db, uid: &str) -> Result<Vec<(String, String)>, Error> {
    let rows = sqlx::query(
        "SELECT account, role FROM account_memberships WHERE principal_uid = $1 ORDER BY account",
    )
    .bind(uid)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("account")?, r.try_get("role")?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_uuid_v4_shaped_and_distinct() {
        let (a, b) = (new_uid(), new_uid());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
    }

    #[test]
    fn roles_parse_from_comma_lists() {
        assert_eq!(roles_of(""), Vec::<String>::new());
        assert_eq!(roles_of("admin, auditor,"), ["admin", "auditor"]);
        assert_eq!(normalize_email("  Alice@Example.COM "), "alice@example.com");
    }
}
