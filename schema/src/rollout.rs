//! Rollout policies and sync windows: how a change to many clusters' bundles is published
//! (ordered waves, health gates, bake time), and when publishing is allowed at all.
//!
//! A [`RolloutPolicy`] is given per stack (`stacks/<name>/stack.yaml` `spec.rollout`) with a
//! platform default (`cplane.yaml` `spec.rollout`). [`SyncWindow`]s are given in `cplane.yaml`
//! and per workspace (`spec.syncWindows`). The types decide the shape; [`check_policy`] and
//! [`check_windows`] the rules (durations, cron schedules, wave sizes), and
//! [`windows_allow`] evaluates windows at an instant. Pure: no clock is read here.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diagnostic::Diagnostic;
use crate::load::Entity;

/// How a change of a stack reaches the clusters that run it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RolloutPolicy {
    /// Ordered waves; the clusters no wave selects join the last one. At least one.
    pub waves: Vec<Wave>,
    /// At most this many clusters of the current wave are published and not yet healthy at
    /// once. Default: the whole wave at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<u32>,
    /// How long a wave's clusters have to report the new digest applied and healthy after
    /// publishing (a humantime duration such as `10m`). Default `15m`.
    #[serde(default = "default_gate_timeout")]
    pub health_timeout: String,
    /// How long to wait after a wave's gate passes before the next wave starts. Default `0s`.
    #[serde(default = "default_bake")]
    pub bake_time: String,
    /// What a failed gate does: `pause` (the default; resume or promote by hand) or `abort`.
    #[serde(default)]
    pub on_failure: OnFailure,
}

fn default_gate_timeout() -> String {
    "15m".to_owned()
}

fn default_bake() -> String {
    "0s".to_owned()
}

/// What a failed health gate does to its rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Stop publishing and wait for an operator (`cplane rollout resume|promote|abort`).
    #[default]
    Pause,
    /// Stop publishing for good: clusters not yet reached keep their bundle.
    Abort,
}

/// One wave: which clusters, and how many of them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Wave {
    /// Name shown in status, e.g. `canary`. Unique within the policy.
    pub name: String,
    /// Workspaces (or cluster ids, for platform clusters) this wave takes, in this order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
    /// Workspaces whose `metadata.labels` hold every one of these pairs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// At most this many of the clusters still unassigned (and selected, when `ids` or
    /// `labels` is given). Exclusive with `percent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// At most this percentage (1–100, rounded up) of all the rollout's clusters.
    /// Exclusive with `count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
}

/// `allow` or `deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WindowKind {
    /// Publishing is allowed only inside some allow window (when any is given).
    Allow,
    /// Publishing is never done inside a deny window.
    Deny,
}

/// A recurring window in which publishing bundles is allowed or denied (UTC).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SyncWindow {
    /// `allow` or `deny`.
    pub kind: WindowKind,
    /// When the window opens: a cron expression of five fields (minute hour day-of-month
    /// month day-of-week), evaluated in UTC, e.g. `0 22 * * 1-5`.
    pub schedule: String,
    /// How long it stays open, e.g. `4h`.
    pub duration: String,
}

/// Parses a humantime duration (`90s`, `15m`, `1h 30m`).
pub fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration ({e}); write e.g. `30s`, `15m` or `1h`"))
}

fn cron(text: &str) -> Result<croner::Cron, String> {
    if text.split_whitespace().count() != 5 {
        return Err(format!(
            "`{text}` is not a cron schedule of five fields (minute hour day-of-month month day-of-week)"
        ));
    }
    text.parse::<croner::Cron>()
        .map_err(|e| format!("`{text}` is not a cron schedule: {e}"))
}

/// Checks a policy at `at` (`spec.rollout`) of `e`.
pub fn check_policy<T>(e: &Entity<T>, at: &str, p: &RolloutPolicy, out: &mut Vec<Diagnostic>) {
    if p.waves.is_empty() {
        out.push(e.diag(&format!("{at}.waves"), "at least one wave is required"));
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, w) in p.waves.iter().enumerate() {
        let path = format!("{at}.waves[{i}]");
        if !crate::domain::is_dns_label(&w.name) {
            out.push(e.diag(
                &format!("{path}.name"),
                format!(
                    "`{}` is not a wave name (lowercase letters, digits, `-`)",
                    w.name
                ),
            ));
        } else if !names.insert(&w.name) {
            out.push(e.diag(
                &format!("{path}.name"),
                format!("wave `{}` is named twice", w.name),
            ));
        }
        match (w.count, w.percent) {
            (Some(_), Some(_)) => out.push(e.diag(&path, "give `count` or `percent`, not both")),
            (Some(0), None) => out.push(e.diag(&format!("{path}.count"), "must be at least 1")),
            (None, Some(p)) if !(1..=100).contains(&p) => out.push(e.diag(
                &format!("{path}.percent"),
                format!("{p} is not a percentage from 1 to 100"),
            )),
            _ => {}
        }
        for (j, id) in w.ids.iter().enumerate() {
            if !crate::domain::is_dns_label(id) {
                out.push(e.diag(
                    &format!("{path}.ids[{j}]"),
                    format!("`{id}` is not a workspace or cluster id"),
                ));
            }
        }
        for key in w.labels.keys() {
            if !is_label_key(key) {
                out.push(e.diag(
                    &format!("{path}.labels.{key}"),
                    format!("`{key}` is not a label key (a letter or digit, then letters, digits, `-`, `_`, `.`, `/`; at most 63)"),
                ));
            }
        }
    }
    if p.max_unavailable == Some(0) {
        out.push(e.diag(&format!("{at}.maxUnavailable"), "must be at least 1"));
    }
    for (field, value) in [
        ("healthTimeout", &p.health_timeout),
        ("bakeTime", &p.bake_time),
    ] {
        match duration(value) {
            Err(m) => out.push(e.diag(&format!("{at}.{field}"), m)),
            Ok(d) if field == "healthTimeout" && d.is_zero() => {
                out.push(e.diag(&format!("{at}.{field}"), "must be longer than 0s"))
            }
            Ok(_) => {}
        }
    }
}

/// Whether `key` may be a `metadata.labels` key.
pub fn is_label_key(key: &str) -> bool {
    (1..=63).contains(&key.len())
        && key.starts_with(|c: char| c.is_ascii_alphanumeric())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
}

/// Checks sync windows at `at` (`spec.syncWindows`) of `e`.
pub fn check_windows<T>(
    e: &Entity<T>,
    at: &str,
    windows: &[SyncWindow],
    out: &mut Vec<Diagnostic>,
) {
    for (i, w) in windows.iter().enumerate() {
        let path = format!("{at}[{i}]");
        if let Err(m) = cron(&w.schedule) {
            out.push(e.diag(&format!("{path}.schedule"), m));
        }
        match duration(&w.duration) {
            Err(m) => out.push(e.diag(&format!("{path}.duration"), m)),
            Ok(d) if d.is_zero() => {
                out.push(e.diag(&format!("{path}.duration"), "must be longer than 0s"))
            }
            Ok(_) => {}
        }
    }
}

/// Whether `w` is open at `at_ms` (unix millis, UTC): its latest opening at or before `at_ms`
/// is less than `duration` ago. A window that does not parse is never open (validation
/// refuses such a revision before it is applied).
pub fn is_open(w: &SyncWindow, at_ms: i64) -> bool {
    let (Ok(schedule), Ok(length)) = (cron(&w.schedule), duration(&w.duration)) else {
        return false;
    };
    let Ok(now) = jiff::Timestamp::from_millisecond(at_ms) else {
        return false;
    };
    let civil = now.to_zoned(jiff::tz::TimeZone::UTC).datetime();
    let Ok(opened) = schedule.find_previous_occurrence(&civil, true) else {
        return false;
    };
    let Ok(opened) = opened.to_zoned(jiff::tz::TimeZone::UTC) else {
        return false;
    };
    let since = now.as_millisecond() - opened.timestamp().as_millisecond();
    u128::try_from(since).is_ok_and(|s| s < length.as_millis())
}

/// Whether publishing is allowed at `at_ms` under `windows` (platform's and workspace's
/// together): never inside a deny window; when any allow window is given, only inside one.
pub fn windows_allow<'a>(windows: impl IntoIterator<Item = &'a SyncWindow>, at_ms: i64) -> bool {
    let mut any_allow = false;
    let mut in_allow = false;
    for w in windows {
        let open = is_open(w, at_ms);
        match w.kind {
            WindowKind::Deny if open => return false,
            WindowKind::Deny => {}
            WindowKind::Allow => {
                any_allow = true;
                in_allow |= open;
            }
        }
    }
    !any_allow || in_allow
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(kind: WindowKind, schedule: &str, duration: &str) -> SyncWindow {
        SyncWindow {
            kind,
            schedule: schedule.into(),
            duration: duration.into(),
        }
    }

    /// 2024-01-01T23:00:00Z, a Monday.
    const MONDAY_23H: i64 = 1_704_150_000_000;

    #[test]
    fn windows_open_for_their_duration_after_each_occurrence() {
        let nightly = window(WindowKind::Allow, "0 22 * * *", "2h");
        assert!(is_open(&nightly, MONDAY_23H));
        assert!(!is_open(&nightly, MONDAY_23H + 3_600_000)); // 00:00, two hours after 22:00
        assert!(!is_open(&nightly, MONDAY_23H - 2 * 3_600_000)); // 21:00
        assert!(windows_allow([&nightly], MONDAY_23H));
        assert!(!windows_allow([&nightly], MONDAY_23H - 2 * 3_600_000));
        let freeze = window(WindowKind::Deny, "0 0 * * 1", "24h"); // all of Monday
        assert!(!windows_allow([&freeze], MONDAY_23H));
        assert!(!windows_allow([&nightly, &freeze], MONDAY_23H));
        assert!(windows_allow([&freeze], MONDAY_23H + 3_600_000)); // Tuesday
        assert!(windows_allow([], MONDAY_23H));
    }

    #[test]
    fn durations_and_schedules_are_checked() {
        assert_eq!(duration("15m"), Ok(Duration::from_secs(900)));
        assert!(duration("soon")
            .unwrap_err()
            .contains("`soon` is not a duration"));
        assert!(cron("0 22 * * *").is_ok());
        assert!(cron("0 22 * *").unwrap_err().contains("five fields"));
        assert!(cron("61 22 * * *").is_err());
    }

    /// The template state repo's files, with `edit` applied to the file at `path`.
    fn template_with(path: &str, edit: impl Fn(&str) -> String) -> Vec<crate::SourceFile> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../state-repo-template");
        let mut files = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read template") {
                let p = entry.expect("entry").path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let rel = p
                    .strip_prefix(&root)
                    .expect("under root")
                    .to_string_lossy()
                    .replace('\\', "/");
                let mut bytes = std::fs::read(&p).expect("read file");
                if rel == path {
                    bytes = edit(std::str::from_utf8(&bytes).expect("utf-8")).into_bytes();
                }
                files.push(crate::SourceFile { path: rel, bytes });
            }
        }
        files
    }

    fn errors(files: Vec<crate::SourceFile>) -> Vec<String> {
        let loaded = crate::load(files);
        loaded.diagnostics.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_valid_policy_and_windows_pass() {
        let files = template_with("cplane.yaml", |t| {
            format!("{t}  rollout:\n    waves:\n      - name: canary\n        labels: {{tier: canary}}\n      - name: half\n        percent: 50\n      - name: rest\n    maxUnavailable: 10\n    healthTimeout: 10m\n    bakeTime: 5m\n  syncWindows:\n    - kind: deny\n      schedule: \"0 0 25 12 *\"\n      duration: 24h\n")
        });
        assert_eq!(errors(files), Vec::<String>::new());
    }

    #[test]
    fn bad_policies_and_windows_are_errors_with_their_place() {
        let files = template_with("cplane.yaml", |t| {
            format!("{t}  rollout:\n    waves:\n      - name: canary\n        count: 2\n        percent: 5\n      - name: canary\n        percent: 150\n    healthTimeout: soon\n    onFailure: retry\n")
        });
        let errs = errors(files);
        // An unknown variant is a shape error: serde stops, the slow path reports it alone.
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(
            errs[0]
                .starts_with("cplane.yaml:22:16: spec.rollout.onFailure: unknown variant `retry`"),
            "{errs:#?}"
        );

        let files = template_with("cplane.yaml", |t| {
            format!("{t}  rollout:\n    waves:\n      - name: canary\n        count: 2\n        percent: 5\n      - name: canary\n        percent: 150\n    healthTimeout: soon\n  syncWindows:\n    - kind: allow\n      schedule: \"0 25 * * *\"\n      duration: 1h\n")
        });
        let errs = errors(files);
        let expected = [
            "cplane.yaml:16:13: spec.rollout.waves[0]: give `count` or `percent`, not both",
            "cplane.yaml:19:15: spec.rollout.waves[1].name: wave `canary` is named twice",
            "cplane.yaml:20:18: spec.rollout.waves[1].percent: 150 is not a percentage from 1 to 100",
            "cplane.yaml:21:20: spec.rollout.healthTimeout: `soon` is not a duration",
            "cplane.yaml:24:17: spec.syncWindows[0].schedule: `0 25 * * *` is not a cron schedule",
        ];
        assert_eq!(errs.len(), expected.len(), "{errs:#?}");
        for (got, want) in errs.iter().zip(expected) {
            assert!(
                got.starts_with(want),
                "{got}\n  does not start with\n{want}"
            );
        }

        let files = template_with("workspaces/acme.yaml", |t| {
            t.replace(
                "  name: acme\n",
                "  name: acme\n  labels:\n    tier: \"canary!\"\n",
            )
            .replace(
                "  deletionPolicy: Retain\n",
                "  deletionPolicy: Retain\n  suspend: yes-please\n",
            )
        });
        let errs = errors(files);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(errs[0].contains("spec.suspend: invalid type"), "{errs:#?}");
        let files = template_with("workspaces/acme.yaml", |t| {
            t.replace(
                "  name: acme\n",
                "  name: acme\n  labels:\n    tier: \"canary!\"\n",
            )
        });
        let errs = errors(files);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(
            errs[0].starts_with(
                "workspaces/acme.yaml:9:11: metadata.labels.tier: `canary!` is not a label value"
            ),
            "{errs:#?}"
        );
    }
}
