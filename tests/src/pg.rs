//! Databases for tests: a fresh PostgreSQL database per test on the server at 127.0.0.1:5432
//! (`CPLANE_TEST_PG` overrides the admin URL), or a throwaway `initdb` cluster started here
//! when no server answers; and SQLite files in temporary directories.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

static COUNTER: AtomicUsize = AtomicUsize::new(0);
static ADMIN: OnceLock<String> = OnceLock::new();

/// A PostgreSQL database of its own; dropped (best effort) with the value.
pub struct PgDatabase {
    /// URL of the database.
    pub url: String,
    admin: String,
    name: String,
}

fn admin_url() -> String {
    ADMIN
        .get_or_init(|| {
            if let Ok(url) = std::env::var("CPLANE_TEST_PG") {
                return url;
            }
            let system = "postgres://postgres@127.0.0.1:5432/postgres".to_owned();
            if std::net::TcpStream::connect("127.0.0.1:5432").is_ok() {
                return system;
            }
            throwaway_cluster()
        })
        .clone()
}

/// Starts a PostgreSQL cluster in a temporary directory (as the `postgres` user: the server
/// refuses to run as root) on a free port, for machines where none runs.
fn throwaway_cluster() -> String {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .expect("no PostgreSQL server on 127.0.0.1:5432 and no /usr/lib/postgresql to start one");
    let dir = std::env::temp_dir().join(format!("cplane-pg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("pg dir");
    let _ = std::process::Command::new("chown")
        .arg("postgres:postgres")
        .arg(&dir)
        .status();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let as_pg = |args: &[&str]| {
        let status = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .args(args)
            .status()
            .expect("runuser");
        assert!(status.success(), "{args:?}");
    };
    let data = dir.join("data");
    let data = data.to_str().expect("utf-8");
    as_pg(&[
        bin.join("initdb").to_str().expect("utf-8"),
        "-D",
        data,
        "-A",
        "trust",
        "-U",
        "postgres",
        "--no-sync",
    ]);
    let opts = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
        dir.display()
    );
    as_pg(&[
        bin.join("pg_ctl").to_str().expect("utf-8"),
        "-D",
        data,
        "-o",
        &opts,
        "-w",
        "start",
    ]);
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

impl PgDatabase {
    /// Creates a fresh database.
    pub async fn create() -> Self {
        use sqlx::Connection;
        let admin = admin_url();
        let name = format!(
            "cplane_t_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        );
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("connect to PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create database");
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        Self {
            url: format!("{base}/{name}"),
            admin,
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Best effort, on a thread of its own (Drop may run inside a runtime).
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    use sqlx::Connection;
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                        let _ =
                            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&mut conn)
                                .await;
                    }
                });
            }
        })
        .join();
    }
}

/// A SQLite URL in a temporary directory (kept alive by the returned guard).
pub fn sqlite_url() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("cplane.db").display());
    (dir, url)
}
