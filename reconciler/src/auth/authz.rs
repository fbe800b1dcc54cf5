//! Authorization: who may read and write what, decided by one function, [`allows`].
//!
//! The user authentication layer ([`super::require_user`]) resolves each request's [`Grants`]
//! (the principal's system role and account memberships, loaded once per request) and every
//! handler of the user API asks [`allows`] about what it is about to show or change:
//!
//! | action                          | admin | member of the account | viewer of the account | other signed-in user | `--insecure-open-read` |
//! |---------------------------------|-------|-----------------------|-----------------------|----------------------|------------------------|
//! | [`Action::ReadPlatform`]        | yes   | yes                   | yes                   | yes                  | yes                    |
//! | [`Action::Read`] (workspace, its cluster, its plan steps, its status) | yes | yes | yes | no | yes |
//! | [`Action::ReadIdentifiers`] (tenant AWS account id, role ARN, ExternalId) | yes | yes | no | no | no |
//! | [`Action::Write`]               | yes   | yes                   | no                    | no                   | no                     |
//! | [`Action::Operate`] (platform clusters, every run error, starting a reconcile) | yes | no | no | no | yes, reads only |
//!
//! What a principal may not read is answered as if it did not exist (`404`), or left out of a
//! list, so ids of other tenants do not leak.

use std::collections::BTreeMap;

/// A principal's role in one account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountRole {
    /// Reads and writes the account's workspaces.
    Member,
    /// Reads the account's workspaces (without the tenant's AWS identifiers).
    Viewer,
}

/// What one request may do: resolved once per request by the authentication layer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grants {
    /// Holds the system role `admin`.
    pub admin: bool,
    /// Roles by account.
    pub accounts: BTreeMap<String, AccountRole>,
    /// No issuer is configured and the server was started with `--insecure-open-read`: every
    /// read is allowed, no write.
    pub open_read: bool,
}

impl Grants {
    /// The grants of an unauthenticated server started with `--insecure-open-read`.
    pub fn open_read() -> Self {
        Grants {
            open_read: true,
            ..Grants::default()
        }
    }

    /// Grants from memberships as the database stores them (`(account, role)`; an unknown
    /// role grants nothing).
    pub fn from_memberships(admin: bool, memberships: &[(String, String)]) -> Self {
        let accounts = memberships
            .iter()
            .filter_map(|(account, role)| {
                let role = match role.as_str() {
                    super::principals::ROLE_MEMBER => AccountRole::Member,
                    super::principals::ROLE_VIEWER => AccountRole::Viewer,
                    _ => return None,
                };
                Some((account.clone(), role))
            })
            .collect();
        Grants {
            admin,
            accounts,
            open_read: false,
        }
    }
}

/// Something a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// Read what is not any tenant's: regions, stacks, the control plane's state.
    ReadPlatform,
    /// Read a workspace of this account: its desired state (without the tenant's AWS
    /// identifiers), its cluster, its plan steps and status.
    Read(&'a str),
    /// See the tenant AWS identifiers (account id, role ARN, ExternalId) of this account's
    /// workspaces.
    ReadIdentifiers(&'a str),
    /// Change this account's workspaces.
    Write(&'a str),
    /// Operate the platform: its own clusters, every run error, starting a reconcile.
    Operate,
}

/// Whether `grants` allow `action` (the table in the module docs).
pub fn allows(grants: &Grants, action: Action<'_>) -> bool {
    if grants.admin {
        return true;
    }
    let role = |account: &str| grants.accounts.get(account).copied();
    match action {
        Action::ReadPlatform => true,
        Action::Read(account) => grants.open_read || role(account).is_some(),
        Action::ReadIdentifiers(account) | Action::Write(account) => {
            role(account) == Some(AccountRole::Member)
        }
        Action::Operate => grants.open_read,
    }
}

/// Whether `grants` allow starting a reconcile (a write to the platform: admins only, never
/// an open-read server).
pub fn may_trigger(grants: &Grants) -> bool {
    grants.admin
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(memberships: &[(&str, &str)]) -> Grants {
        let m: Vec<(String, String)> = memberships
            .iter()
            .map(|(a, r)| ((*a).to_owned(), (*r).to_owned()))
            .collect();
        Grants::from_memberships(false, &m)
    }

    #[test]
    fn admins_may_do_everything() {
        let admin = Grants::from_memberships(true, &[]);
        for action in [
            Action::ReadPlatform,
            Action::Read("acme"),
            Action::ReadIdentifiers("acme"),
            Action::Write("acme"),
            Action::Operate,
        ] {
            assert!(allows(&admin, action), "{action:?}");
        }
        assert!(may_trigger(&admin));
    }

    #[test]
    fn members_read_and_write_their_account_only() {
        let member = user(&[("acme", "member")]);
        assert!(allows(&member, Action::Read("acme")));
        assert!(allows(&member, Action::ReadIdentifiers("acme")));
        assert!(allows(&member, Action::Write("acme")));
        assert!(allows(&member, Action::ReadPlatform));
        for action in [
            Action::Read("globex"),
            Action::ReadIdentifiers("globex"),
            Action::Write("globex"),
            Action::Operate,
        ] {
            assert!(!allows(&member, action), "{action:?}");
        }
        assert!(!may_trigger(&member));
    }

    #[test]
    fn viewers_read_without_identifiers_and_change_nothing() {
        let viewer = user(&[("acme", "viewer")]);
        assert!(allows(&viewer, Action::Read("acme")));
        assert!(!allows(&viewer, Action::ReadIdentifiers("acme")));
        assert!(!allows(&viewer, Action::Write("acme")));
        assert!(!allows(&viewer, Action::Read("globex")));
        assert!(!allows(&viewer, Action::Operate));
    }

    #[test]
    fn a_user_without_memberships_reads_the_platform_only() {
        let nobody = user(&[]);
        assert!(allows(&nobody, Action::ReadPlatform));
        assert!(!allows(&nobody, Action::Read("acme")));
        assert!(!allows(&nobody, Action::Operate));
        // A role the code does not know grants nothing.
        let odd = user(&[("acme", "owner")]);
        assert!(!allows(&odd, Action::Read("acme")));
    }

    #[test]
    fn open_read_reads_everything_but_identifiers_and_writes_nothing() {
        let open = Grants::open_read();
        assert!(allows(&open, Action::Read("acme")));
        assert!(allows(&open, Action::Operate));
        assert!(!allows(&open, Action::ReadIdentifiers("acme")));
        assert!(!allows(&open, Action::Write("acme")));
        assert!(!may_trigger(&open));
    }
}
