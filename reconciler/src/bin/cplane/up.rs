//! `cplane up`: the local try-out on embedded defaults.

use super::*;

/// Opts a long-running server out of transparent huge pages.
///
/// mimalloc asks the kernel for huge pages (`madvise(MADV_HUGEPAGE)`) on its arenas, and the
/// kernel then backs every 2 MiB region the heap touches with a whole huge page. For a batch
/// command that is a speed-up; for `cplane serve`, whose heap is mostly many small, scattered
/// allocations (one parked long-poll per agent), it made most of its anonymous memory huge
/// pages (figures in the `agent_polls` benchmark's docs): the RSS measured memory the process
/// never used. `PR_SET_THP_DISABLE` turns huge pages off for this process
/// (whatever the system setting), before the server allocates anything of note.
pub(super) fn disable_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!(error = %e, "transparent huge pages stay enabled");
    }
}

/// `cplane up`: see the subcommand's help.
pub(super) fn up(dir: &Path, listen: std::net::SocketAddr) -> anyhow::Result<ExitCode> {
    let state = dir.join("state");
    if !state.join(".git").exists() {
        let commit = init::init(&state)?;
        println!(
            "Created the state repo {} from the template (commit {})",
            state.display(),
            &commit[..12]
        );
    }
    let branch = git2::Repository::open(&state)?
        .head()?
        .shorthand()
        .unwrap_or("main")
        .to_owned();
    let aws_configured = [
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some());
    // The built-in development issuer: its key stays in DIR (never in the state repo), its
    // JWKS is served by this same server at the Keycloak path, and it is the only issuer.
    keep_out_of_git(dir)?;
    let host = if listen.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        listen.ip()
    };
    let issuer_url = format!(
        "http://{}{}",
        std::net::SocketAddr::new(host, listen.port()),
        cplane_reconciler::auth::dev::PATH
    );
    // The dashboard signs the admin in through this issuer without a password (local only).
    let dev = cplane_reconciler::auth::dev::DevIssuer::load_or_create(
        &dir.join("dev-issuer.p8"),
        &issuer_url,
    )?
    .with_sign_in(cplane_reconciler::auth::dev::SignIn {
        audience: UP_AUDIENCE.to_owned(),
        subject: "cplane-up-admin".to_owned(),
        email: UP_ADMIN_EMAIL.to_owned(),
        name: "cplane up admin".to_owned(),
        lifetime: std::time::Duration::from_secs(12 * 3600),
    });
    let admin_token = dev.token(
        UP_AUDIENCE,
        "cplane-up-admin",
        UP_ADMIN_EMAIL,
        "cplane up admin",
        std::time::Duration::from_secs(12 * 3600),
    )?;
    let settings = cplane_reconciler::serve::Settings {
        repo_url: std::fs::canonicalize(&state)?.display().to_string(),
        branch: Some(branch.clone()),
        mirror: dir.join("mirror.git"),
        listen,
        scope: cplane_reconciler::plan::Scope::all(),
        poll: std::time::Duration::from_secs(180),
        webhook_secret: None,
        webhook_rate: Some(cplane_webhook::RateLimit::default()),
        max_deletions: 5,
        delete_foreign_records: false,
        retention: cplane_reconciler::db::Retention::default(),
        tls: None,
        forwarded_certs: None,
        auth: cplane_reconciler::auth::Config {
            issuers: vec![issuer_url.clone()],
            audience: Some(UP_AUDIENCE.to_owned()),
            dev_issuer: Some(dev),
            ..cplane_reconciler::auth::Config::default()
        },
        header_read_timeout: cplane_reconciler::connections::DEFAULT_HEADER_READ_TIMEOUT,
        edge: cplane_reconciler::serve::edge::Settings::default(),
        bff_register_ttl: cplane_reconciler::serve::DEFAULT_BFF_REGISTER_TTL,
        agent_offline_after: cplane_reconciler::rollout::OFFLINE_AFTER,
        forge: None,
        public_url: None,
        events: cplane_reconciler::serve::EventSettings::default(),
    };
    let database = format!("sqlite://{}", dir.join("cplane.db").display());
    println!(
        "cplane up: state repo {} (branch {branch}, watched: commit to reconcile)",
        state.display()
    );
    println!("  database  {database}");
    println!(
        "  cloud     {}",
        if aws_configured {
            "aws (credentials found in the environment)"
        } else {
            "none (set AWS credentials to provision for real)"
        }
    );
    println!(
        "  dashboard http://{listen}/ui/   (Sign in: the development issuer signs the admin in)"
    );
    println!("  status    http://{listen}/v1/status");
    let token_file = dir.join("admin.token");
    write_private(&token_file, admin_token.as_bytes())?;
    println!("  API       http://{listen}/v1/workspaces   (bearer token below)");
    println!(
        "  issuer    {issuer_url}   (development issuer, key in {})",
        dir.join("dev-issuer.p8").display()
    );
    println!(
        "  admin     {UP_ADMIN_EMAIL}, token valid 12 h (also in {}):",
        token_file.display()
    );
    println!("  token     {admin_token}");
    println!(
        "  try       curl -H \"Authorization: Bearer $(cat {})\" http://{listen}/v1/me",
        token_file.display()
    );
    println!("  lookup    http://{listen}/lookup/w-acme");
    println!("  metrics   http://{listen}/metrics");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let db = Db::connect(&database).await?;
        cplane_reconciler::auth::principals::set_role(
            &db,
            UP_ADMIN_EMAIL,
            cplane_reconciler::auth::principals::ROLE_ADMIN,
            true,
        )
        .await?;
        let aws = if aws_configured {
            Some(cplane_reconciler::aws::Aws::from_env().await)
        } else {
            None
        };
        cplane_reconciler::serve::serve(settings, db, aws).await?;
        Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
    })
}

/// Audience of `cplane up`'s development tokens.
pub(super) const UP_AUDIENCE: &str = "cplane";
/// The admin principal `cplane up` grants and prints a token for.
pub(super) const UP_ADMIN_EMAIL: &str = "admin@cplane.localhost";

/// Writes `DIR/.gitignore` (`*`) when missing, so the key and token in DIR never land in an
/// enclosing git repository.
pub(super) fn keep_out_of_git(dir: &Path) -> anyhow::Result<()> {
    let ignore = dir.join(".gitignore");
    if !ignore.exists() {
        std::fs::write(
            &ignore,
            "# cplane up: keys, tokens and databases; never commit them\n*\n",
        )
        .with_context(|| format!("writing {}", ignore.display()))?;
    }
    Ok(())
}

/// Writes a secret readable by the owner only (mode 0600).
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
