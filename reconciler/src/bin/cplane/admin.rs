//! Credentials and identities: cluster tokens, principals, memberships.

use super::*;
use cplane_reconciler::db::TokenScope;

/// Refuses a cluster id cplane has not published a bundle for: a typo would otherwise make a
/// token no agent or BFF can use.
async fn require_published(db: &Db, id: &str) -> anyhow::Result<()> {
    let known: Vec<String> = db
        .cluster_heads(None)
        .await?
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();
    if known.iter().any(|k| k == id) {
        return Ok(());
    }
    let hint = if known.is_empty() {
        "no cluster has been published in this database yet: run `cplane apply` or `cplane serve` (or `cplane up`) first, or pass the right --database".to_owned()
    } else {
        let close: Vec<&str> = known
            .iter()
            .map(String::as_str)
            .filter(|k| {
                k.contains(id.trim_start_matches("w-")) || id.contains(k.trim_start_matches("w-"))
            })
            .collect();
        let list = if close.is_empty() {
            known
                .iter()
                .take(10)
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            close.join(", ")
        };
        format!("known clusters include: {list} (`cplane clusters` lists them)")
    };
    Err(InvalidInput(format!(
        "cluster `{id}` is not in the rendered state; {hint}"
    ))
    .into())
}

/// Unix millis as RFC 3339 (UTC, seconds).
fn rfc3339(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH
        + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or_default());
    humantime::format_rfc3339_seconds(at).to_string()
}

/// The expiry of a token made now that lasts `expires_in`.
fn expiry(expires_in: Option<std::time::Duration>) -> Option<i64> {
    expires_in.map(|d| {
        cplane_reconciler::db::now_ms()
            .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    })
}

/// `cplane cluster token …`. Tokens are only made for clusters cplane has published a bundle
/// for ([`require_published`]).
pub(super) async fn token_command(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Create {
            id,
            token: NewTokenArgs { scope, expires_in },
            database,
            format,
        } => {
            let db = Db::connect(&database_or_default(database.as_deref())).await?;
            require_published(&db, &id).await?;
            let scope = scope.into();
            let expires_at = expiry(expires_in);
            let token = db.issue_cluster_token(&id, scope, expires_at).await?;
            match format {
                Format::Json => println!(
                    "{}",
                    serde_json::json!({
                        "cluster": id,
                        "scope": scope,
                        "token": token,
                        "expires_at": expires_at.map(rfc3339),
                    })
                ),
                Format::Text => {
                    let until = expires_at.map_or_else(
                        || "does not expire".to_owned(),
                        |at| format!("expires {}", rfc3339(at)),
                    );
                    eprintln!(
                        "{scope} token for cluster {id}, {until} (shown once; store it in the {} secret):",
                        if scope == TokenScope::Bff { "BFF's" } else { "cluster's" }
                    );
                    println!("{token}");
                }
            }
        }
        TokenCommand::Rotate {
            id,
            token: NewTokenArgs { scope, expires_in },
            overlap,
            database,
            format,
        } => {
            let db = Db::connect(&database_or_default(database.as_deref())).await?;
            require_published(&db, &id).await?;
            let scope = scope.into();
            let expires_at = expiry(expires_in);
            let (token, ended) = db
                .rotate_cluster_tokens(&id, scope, overlap, expires_at)
                .await?;
            let old_end = rfc3339(expiry(Some(overlap)).unwrap_or_default());
            match format {
                Format::Json => println!(
                    "{}",
                    serde_json::json!({
                        "cluster": id,
                        "scope": scope,
                        "token": token,
                        "expires_at": expires_at.map(rfc3339),
                        "replaced": ended,
                        "replaced_until": old_end,
                    })
                ),
                Format::Text => {
                    eprintln!(
                        "new {scope} token for cluster {id} (shown once); {ended} old {scope} token(s) work until {old_end}:"
                    );
                    println!("{token}");
                }
            }
        }
        TokenCommand::Revoke {
            id,
            scope,
            database,
            format,
        } => {
            let db = Db::connect(&database_or_default(database.as_deref())).await?;
            let n = db
                .revoke_cluster_tokens_of(&id, scope.map(Into::into))
                .await?;
            match format {
                Format::Json => println!("{}", serde_json::json!({ "cluster": id, "revoked": n })),
                Format::Text => println!("revoked {n} token(s) of cluster {id}"),
            }
        }
        TokenCommand::List {
            id,
            database,
            format,
        } => {
            let db = Db::connect(&database_or_default(database.as_deref())).await?;
            let tokens = db.cluster_tokens(&id).await?;
            let now = cplane_reconciler::db::now_ms();
            match format {
                Format::Json => {
                    let tokens: Vec<serde_json::Value> = tokens
                        .iter()
                        .map(|t| {
                            serde_json::json!({
                                "id": t.id,
                                "scope": t.scope,
                                "state": t.state(now),
                                "created_at": rfc3339(t.created_at),
                                "expires_at": t.expires_at.map(rfc3339),
                                "revoked_at": t.revoked_at.map(rfc3339),
                            })
                        })
                        .collect();
                    println!("{}", serde_json::json!({ "cluster": id, "tokens": tokens }));
                }
                Format::Text if tokens.is_empty() => println!("cluster {id} has no tokens"),
                Format::Text => {
                    println!(
                        "{:<12}  {:<5}  {:<7}  {:<20}  EXPIRES / REVOKED",
                        "ID", "SCOPE", "STATE", "CREATED"
                    );
                    for t in &tokens {
                        let end = match (t.revoked_at, t.expires_at) {
                            (Some(r), _) => format!("revoked {}", rfc3339(r)),
                            (None, Some(e)) => rfc3339(e),
                            (None, None) => "never".to_owned(),
                        };
                        println!(
                            "{:<12}  {:<5}  {:<7}  {:<20}  {end}",
                            t.id,
                            t.scope,
                            t.state(now),
                            rfc3339(t.created_at)
                        );
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The authenticator of the principal commands.
pub(super) async fn command_auth(
    db: &PrincipalDb,
) -> anyhow::Result<cplane_reconciler::auth::Auth> {
    let config = cplane_reconciler::auth::Args {
        region: db.region.clone(),
        ..cplane_reconciler::auth::Args::default()
    }
    .into_config()?;
    let pool = Db::connect(&database_or_default(db.database.as_deref())).await?;
    Ok(cplane_reconciler::auth::Auth::for_commands(config, pool))
}

pub(super) fn block_on<T>(
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// `cplane principal …`.
pub(super) fn principal_command(command: PrincipalCommand) -> anyhow::Result<ExitCode> {
    block_on(async {
        let (email, db, grant) = match &command {
            PrincipalCommand::GrantAdmin { email, db } => (email, db, true),
            PrincipalCommand::RevokeAdmin { email, db } => (email, db, false),
        };
        let auth = command_auth(db).await?;
        let p = auth.set_admin(email, grant).await?;
        println!(
            "principal {} (uid {}): system roles [{}]",
            p.email,
            p.uid,
            p.system_roles.join(", ")
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// `cplane membership …`.
pub(super) fn membership_command(command: MembershipCommand) -> anyhow::Result<ExitCode> {
    block_on(async {
        match command {
            MembershipCommand::Add {
                email,
                account,
                role,
                db,
            } => {
                let auth = command_auth(&db).await?;
                let uid = auth.add_membership(&email, &account, &role).await?;
                println!("{email} (uid {uid}) is now {role} of account {account}");
            }
            MembershipCommand::Remove { email, account, db } => {
                let auth = command_auth(&db).await?;
                if auth.remove_membership(&email, &account).await? {
                    println!("{email} is no longer a member of account {account}");
                } else {
                    println!("{email} was not a member of account {account}");
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
