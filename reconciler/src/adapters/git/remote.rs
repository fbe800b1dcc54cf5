//! Talking to the state repo's remote: credentials from the environment for fetch and push.
//!
//! Any URL libgit2 handles works: a path, `file://`, `git://`, `https://` (OpenSSL) and
//! `ssh://` / `user@host:path` (libssh2). Building needs OpenSSL's headers (`libssl-dev` and
//! `pkg-config` on Debian); libssh2 is compiled from source by `libssh2-sys`.
//!
//! Credentials, asked for only when the server requires them:
//! - **https**: `CPLANE_GIT_USERNAME` + `CPLANE_GIT_PASSWORD` (a password or an access token;
//!   with only `CPLANE_GIT_PASSWORD` set the user name is `x-access-token`, as GitHub and Gitea
//!   accept), else git's configured credential helper.
//! - **ssh**: the key file `CPLANE_GIT_SSH_KEY` (passphrase `CPLANE_GIT_SSH_PASSPHRASE`), else
//!   the ssh agent. Host keys are checked against `~/.ssh/known_hosts` by libgit2.
//!
//! Each kind of credential is offered once: a wrong password fails the fetch instead of making
//! libgit2 ask again forever. Credentials are never logged.

use git2::{Cred, CredentialType, RemoteCallbacks};

/// Where credentials come from: the process environment, or a fixed map (tests).
pub trait Env {
    /// The value of `name`, if set and not empty.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

/// Callbacks for `fetch` / `push` that answer credential requests from the process environment.
pub fn callbacks<'a>() -> RemoteCallbacks<'a> {
    callbacks_from(ProcessEnv)
}

/// Like [`callbacks`], reading credentials from `env`.
pub fn callbacks_from<'a>(env: impl Env + 'a) -> RemoteCallbacks<'a> {
    let mut tried = CredentialType::empty();
    let mut cb = RemoteCallbacks::new();
    cb.credentials(move |url, username, allowed| {
        let offer = next_credential(&env, url, username, allowed, tried);
        if let Ok((kind, _)) = &offer {
            tried |= *kind;
        }
        offer.map(|(_, cred)| cred)
    });
    cb
}

/// The next credential to offer for `url`, and its kind; an error when none is left.
fn next_credential(
    env: &dyn Env,
    url: &str,
    username: Option<&str>,
    allowed: CredentialType,
    tried: CredentialType,
) -> Result<(CredentialType, Cred), git2::Error> {
    let fresh = |kind: CredentialType| allowed.contains(kind) && !tried.contains(kind);
    if fresh(CredentialType::USERNAME) {
        let user = env
            .var("CPLANE_GIT_USERNAME")
            .unwrap_or_else(|| "git".to_owned());
        return Ok((CredentialType::USERNAME, Cred::username(&user)?));
    }
    if fresh(CredentialType::SSH_KEY) {
        let user = username.unwrap_or("git");
        let cred = match env.var("CPLANE_GIT_SSH_KEY") {
            Some(key) => Cred::ssh_key(
                user,
                None,
                std::path::Path::new(&key),
                env.var("CPLANE_GIT_SSH_PASSPHRASE").as_deref(),
            )?,
            None => Cred::ssh_key_from_agent(user)?,
        };
        return Ok((CredentialType::SSH_KEY, cred));
    }
    if fresh(CredentialType::USER_PASS_PLAINTEXT) {
        let cred = match (
            env.var("CPLANE_GIT_USERNAME"),
            env.var("CPLANE_GIT_PASSWORD"),
        ) {
            (user, Some(password)) => {
                Cred::userpass_plaintext(user.as_deref().unwrap_or("x-access-token"), &password)?
            }
            _ => {
                let config = git2::Config::open_default()?;
                Cred::credential_helper(&config, url, username)?
            }
        };
        return Ok((CredentialType::USER_PASS_PLAINTEXT, cred));
    }
    Err(git2::Error::from_str(&format!(
        "no (more) credentials for {url}: set CPLANE_GIT_USERNAME/CPLANE_GIT_PASSWORD (https) or CPLANE_GIT_SSH_KEY (ssh)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Map(HashMap<&'static str, &'static str>);

    impl Env for Map {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| (*v).to_owned())
        }
    }

    #[test]
    fn https_token_is_offered_once_then_refused() {
        let env = Map(HashMap::from([("CPLANE_GIT_PASSWORD", "s3cret")]));
        let allowed = CredentialType::USER_PASS_PLAINTEXT;
        let (kind, _) = next_credential(
            &env,
            "https://h/r.git",
            None,
            allowed,
            CredentialType::empty(),
        )
        .expect("first offer");
        assert_eq!(kind, CredentialType::USER_PASS_PLAINTEXT);
        let again = next_credential(&env, "https://h/r.git", None, allowed, kind);
        let message = again.err().expect("no second offer").message().to_owned();
        assert!(message.contains("CPLANE_GIT_PASSWORD"), "{message}");
        assert!(!message.contains("s3cret"), "never echo a secret");
    }

    #[test]
    fn ssh_uses_the_configured_key_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("id_ed25519");
        std::fs::write(&key, "not read until the handshake").expect("key");
        let path: &'static str = Box::leak(key.display().to_string().into_boxed_str());
        let env = Map(HashMap::from([("CPLANE_GIT_SSH_KEY", path)]));
        let (kind, cred) = next_credential(
            &env,
            "ssh://git@h/r.git",
            Some("git"),
            CredentialType::SSH_KEY | CredentialType::USER_PASS_PLAINTEXT,
            CredentialType::empty(),
        )
        .expect("offer");
        assert_eq!(kind, CredentialType::SSH_KEY);
        assert!(
            cred.has_username(),
            "an ssh key credential carries the user"
        );
    }

    /// https and ssh transports are compiled in: an unreachable server is a network error, not
    /// "unsupported URL protocol".
    #[test]
    fn https_and_ssh_transports_are_available() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port(); // bound and dropped: nothing listens there now
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = git2::Repository::init_bare(dir.path()).expect("repo");
        for url in [
            format!("https://127.0.0.1:{port}/state.git"),
            format!("ssh://git@127.0.0.1:{port}/state.git"),
        ] {
            let mut remote = repo.remote_anonymous(&url).expect("remote");
            let mut options = git2::FetchOptions::new();
            options.remote_callbacks(callbacks_from(Map(HashMap::new())));
            let err = remote
                .fetch(&["main"], Some(&mut options), None)
                .expect_err("nothing listens");
            assert_ne!(
                err.class(),
                git2::ErrorClass::Invalid,
                "{url}: transport missing: {err}"
            );
            assert!(
                !err.message().contains("unsupported URL protocol"),
                "{url}: {err}"
            );
        }
    }
}
