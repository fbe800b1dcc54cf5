//! Credentials and identities: cluster tokens, principals, memberships.

use super::*;

/// `cplane cluster token …`. Tokens are only made for clusters cplane has published a bundle
/// for: a typo would otherwise make a token no agent can use.
pub(super) async fn token_command(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Create {
            id,
            database,
            format,
        } => {
            let db = Db::connect(&database_or_default(database.as_deref())).await?;
            let known: Vec<String> = db
                .cluster_heads(None)
                .await?
                .into_iter()
                .map(|(id, _, _)| id)
                .collect();
            if !known.contains(&id) {
                let hint = if known.is_empty() {
                    "no cluster has been published in this database yet: run `cplane apply` or `cplane serve` (or `cplane up`) first, or pass the right --database".to_owned()
                } else {
                    let close: Vec<&str> = known
                        .iter()
                        .map(String::as_str)
                        .filter(|k| {
                            k.contains(id.trim_start_matches("w-"))
                                || id.contains(k.trim_start_matches("w-"))
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
                return Err(InvalidInput(format!(
                    "cluster `{id}` is not in the rendered state; {hint}"
                ))
                .into());
            }
            let token = db.create_cluster_token(&id).await?;
            match format {
                Format::Json => {
                    println!("{}", serde_json::json!({ "cluster": id, "token": token }))
                }
                Format::Text => {
                    eprintln!(
                        "token for cluster {id} (shown once; store it in the cluster's secret):"
                    );
                    println!("{token}");
                }
            }
        }
        TokenCommand::Revoke {
            id,
            database,
            format,
        } => {
            let db = Db::connect(&database_or_default(database.as_deref())).await?;
            let n = db.revoke_cluster_tokens(&id).await?;
            match format {
                Format::Json => println!("{}", serde_json::json!({ "cluster": id, "revoked": n })),
                Format::Text => println!("revoked {n} token(s) of cluster {id}"),
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
