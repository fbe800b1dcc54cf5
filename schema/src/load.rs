//! From the files of one state-repo revision to a [`Model`], collecting every problem.
//!
//! The caller hands over bytes (the git adapter reads them from a commit); nothing here does I/O.
//! Documents are parsed in parallel (rayon). Files that fail to parse are left out of the model
//! and remembered, so that references to them do not produce a second, misleading error.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

use rayon::prelude::*;
use serde::de::DeserializeOwned;

use crate::diagnostic::{sort_dedup, Diagnostic, Pos};
use crate::model::{Platform, Region, Stack, Workspace};
use crate::position::PositionIndex;
use crate::validate;

/// Largest document or template accepted, in bytes. Larger files are refused before parsing.
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// The platform document's path.
pub const PLATFORM_FILE: &str = "cplane.yaml";

/// One file of the state repo at some revision.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path relative to the repo root, `/`-separated.
    pub path: String,
    /// Raw content.
    pub bytes: Vec<u8>,
}

/// What a path of the state repo holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileRole {
    /// `cplane.yaml`.
    Platform,
    /// `regions/<id>.yaml`.
    Region(String),
    /// `workspaces/<id>.yaml`.
    Workspace(String),
    /// `stacks/<name>/stack.yaml`.
    Stack(String),
    /// `stacks/<name>/templates/<file>.j2`.
    Template {
        /// The stack the template belongs to.
        stack: String,
    },
    /// A file in a cplane folder that does not fit its layout; the string says what was expected.
    Misplaced(&'static str),
    /// Anything else (READMEs, `schemas/`, CI files): not read.
    Ignored,
}

/// An entity of the state repo, as named by a changed path (see [`FileRole::entity`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntityRef {
    /// The platform document.
    Platform,
    /// A region by id.
    Region(String),
    /// A workspace by id.
    Workspace(String),
    /// A stack by name (its `stack.yaml` or any template).
    Stack(String),
}

impl FileRole {
    /// Classifies a repo path.
    pub fn of(path: &str) -> FileRole {
        let parts: Vec<&str> = path.split('/').collect();
        let yaml_stem = |name: &str| name.strip_suffix(".yaml").map(str::to_owned);
        match parts.as_slice() {
            [PLATFORM_FILE] => FileRole::Platform,
            ["regions", rest @ ..] => Self::entity_file(rest, "regions/<id>.yaml", |n| {
                yaml_stem(n).map(FileRole::Region)
            }),
            ["workspaces", rest @ ..] => Self::entity_file(rest, "workspaces/<id>.yaml", |n| {
                yaml_stem(n).map(FileRole::Workspace)
            }),
            ["stacks", stack, "stack.yaml"] => FileRole::Stack((*stack).to_owned()),
            ["stacks", stack, "templates", file] => {
                if file.ends_with(".j2") {
                    FileRole::Template {
                        stack: (*stack).to_owned(),
                    }
                } else if is_doc(file) {
                    FileRole::Ignored
                } else {
                    FileRole::Misplaced("stacks/<name>/templates/<file>.yaml.j2")
                }
            }
            ["stacks", _, "templates", _, ..] => {
                FileRole::Misplaced("stacks/<name>/templates/<file>.yaml.j2 (no subfolders)")
            }
            ["stacks", _, file] if file.ends_with(".yml") => {
                FileRole::Misplaced("stacks/<name>/stack.yaml")
            }
            _ => FileRole::Ignored,
        }
    }

    fn entity_file(
        rest: &[&str],
        expected: &'static str,
        make: impl Fn(&str) -> Option<FileRole>,
    ) -> FileRole {
        match rest {
            [name] if is_doc(name) => FileRole::Ignored,
            [name] => make(name).unwrap_or(FileRole::Misplaced(expected)),
            _ if rest.last().is_some_and(|n| is_doc(n)) => FileRole::Ignored,
            _ => FileRole::Misplaced(expected),
        }
    }

    /// The entity a file of this role belongs to, if any.
    pub fn entity(&self) -> Option<EntityRef> {
        match self {
            FileRole::Platform => Some(EntityRef::Platform),
            FileRole::Region(id) => Some(EntityRef::Region(id.clone())),
            FileRole::Workspace(id) => Some(EntityRef::Workspace(id.clone())),
            FileRole::Stack(name) | FileRole::Template { stack: name } => {
                Some(EntityRef::Stack(name.clone()))
            }
            FileRole::Misplaced(_) | FileRole::Ignored => None,
        }
    }
}

/// Documentation and placeholder files that may sit anywhere.
fn is_doc(name: &str) -> bool {
    name.ends_with(".md") || name == ".gitkeep"
}

/// A parsed document with where it came from, so that later rules can point into it.
#[derive(Debug)]
pub struct Entity<T> {
    /// The typed document.
    pub doc: T,
    /// Repo-relative path.
    pub file: String,
    /// The id implied by the path (file name, or stack folder).
    pub path_id: String,
    source: Arc<str>,
    index: OnceLock<PositionIndex>,
}

impl<T> Entity<T> {
    /// Wraps a parsed document.
    pub fn new(doc: T, file: String, path_id: String, source: Arc<str>) -> Self {
        Self {
            doc,
            file,
            path_id,
            source,
            index: OnceLock::new(),
        }
    }

    /// The document's source text, as committed.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Position of the value at `path` (or its closest present ancestor).
    pub fn pos(&self, path: &str) -> Pos {
        self.index
            .get_or_init(|| PositionIndex::build(&self.source))
            .locate(path)
    }

    /// A diagnostic about the field at `path`.
    pub fn diag(&self, path: &str, text: impl std::fmt::Display) -> Diagnostic {
        Diagnostic::new(&self.file, self.pos(path), path, text)
    }
}

/// A stack and its templates.
#[derive(Debug)]
pub struct StackEntry {
    /// `stack.yaml`.
    pub entity: Entity<Stack>,
    /// Templates by repo path (`stacks/<name>/templates/<file>.j2`), partials included.
    pub templates: BTreeMap<String, Arc<str>>,
}

/// The whole desired state of one revision.
#[derive(Debug)]
pub struct Model {
    /// `cplane.yaml`.
    pub platform: Entity<Platform>,
    /// Regions by id.
    pub regions: BTreeMap<String, Entity<Region>>,
    /// Workspaces by id.
    pub workspaces: BTreeMap<String, Entity<Workspace>>,
    /// Stacks by name.
    pub stacks: BTreeMap<String, StackEntry>,
}

/// Result of loading: the model (when `cplane.yaml` parsed) and every problem found.
#[derive(Debug)]
pub struct Loaded {
    /// The model, possibly partial when there are diagnostics. `None` without a usable
    /// `cplane.yaml`.
    pub model: Option<Model>,
    /// Every problem, sorted by file and position.
    pub diagnostics: Vec<Diagnostic>,
    /// Ids whose files failed to parse (references to them are not reported again).
    pub broken: BTreeSet<EntityRef>,
}

impl Loaded {
    /// The model, if it loaded without a single problem.
    pub fn into_valid(self) -> Result<Model, Vec<Diagnostic>> {
        match self.model {
            Some(model) if self.diagnostics.is_empty() => Ok(model),
            _ => Err(self.diagnostics),
        }
    }
}

/// One file's parse: nothing to read, a document, or every problem of the file.
type ParseResult = Result<Option<Parsed>, Vec<Diagnostic>>;

enum Parsed {
    Platform(Entity<Platform>),
    Region(Entity<Region>),
    Workspace(Entity<Workspace>),
    Stack(Entity<Stack>),
    Template {
        stack: String,
        path: String,
        text: Arc<str>,
    },
}

/// Parses and validates every file; see the module docs.
pub fn load(files: Vec<SourceFile>) -> Loaded {
    let results: Vec<(FileRole, ParseResult)> = files
        .into_par_iter()
        .with_max_len(64) // small pieces keep both threads busy to the end
        .map(|file| {
            let role = FileRole::of(&file.path);
            let parsed = parse_file(&role, file);
            (role, parsed)
        })
        .collect();

    let mut diagnostics = Vec::new();
    let mut broken = BTreeSet::new();
    let mut platform = None;
    let mut regions = BTreeMap::new();
    let mut workspaces = BTreeMap::new();
    let mut stacks: BTreeMap<String, Entity<Stack>> = BTreeMap::new();
    let mut templates: BTreeMap<String, BTreeMap<String, Arc<str>>> = BTreeMap::new();

    for (role, result) in results {
        match result {
            Err(diags) => {
                diagnostics.extend(diags);
                if let Some(entity) = role.entity() {
                    broken.insert(entity);
                }
            }
            Ok(None) => {}
            Ok(Some(Parsed::Platform(p))) => platform = Some(p),
            Ok(Some(Parsed::Region(r))) => {
                insert_unique(&mut regions, r, |d| &d.metadata.name, &mut diagnostics)
            }
            Ok(Some(Parsed::Workspace(w))) => {
                insert_unique(&mut workspaces, w, |d| &d.metadata.name, &mut diagnostics)
            }
            Ok(Some(Parsed::Stack(s))) => {
                insert_unique(&mut stacks, s, |d| &d.metadata.name, &mut diagnostics)
            }
            Ok(Some(Parsed::Template { stack, path, text })) => {
                templates.entry(stack).or_default().insert(path, text);
            }
        }
    }

    let Some(platform) = platform else {
        if !broken.contains(&EntityRef::Platform) {
            diagnostics.push(Diagnostic::file(
                PLATFORM_FILE,
                "missing: every state repo has a cplane.yaml (kind: Platform) at its root",
            ));
        }
        sort_dedup(&mut diagnostics);
        return Loaded {
            model: None,
            diagnostics,
            broken,
        };
    };

    // Templates whose stack.yaml is missing (or failed to parse).
    let mut stack_entries = BTreeMap::new();
    for (name, entity) in stacks {
        let own = templates.remove(&entity.path_id).unwrap_or_default();
        stack_entries.insert(
            name,
            StackEntry {
                entity,
                templates: own,
            },
        );
    }
    for (stack, files) in templates {
        if broken.contains(&EntityRef::Stack(stack.clone())) {
            continue;
        }
        for path in files.keys() {
            diagnostics.push(Diagnostic::file(
                path,
                format!(
                    "template of unknown stack `{stack}`: stacks/{stack}/stack.yaml is missing"
                ),
            ));
        }
    }

    let model = Model {
        platform,
        regions,
        workspaces,
        stacks: stack_entries,
    };
    diagnostics.extend(validate::validate(&model, &broken));
    sort_dedup(&mut diagnostics);
    Loaded {
        model: Some(model),
        diagnostics,
        broken,
    }
}

fn insert_unique<T>(
    map: &mut BTreeMap<String, Entity<T>>,
    entity: Entity<T>,
    name: impl Fn(&T) -> &String,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let id = name(&entity.doc).clone();
    if let Some(first) = map.get(&id) {
        // Keep the file whose name matches the id; report the other.
        let (keep_first, other) = if first.path_id == id {
            (true, &entity)
        } else {
            (false, first)
        };
        let kept_file = if keep_first {
            &first.file
        } else {
            &entity.file
        };
        diagnostics.push(other.diag(
            "metadata.name",
            format!("duplicate id `{id}`: already defined in {kept_file}"),
        ));
        if keep_first {
            return;
        }
    }
    map.insert(id, entity);
}

fn parse_file(role: &FileRole, file: SourceFile) -> ParseResult {
    let SourceFile { path, bytes } = file;
    let what = match role {
        FileRole::Ignored => return Ok(None),
        FileRole::Misplaced(expected) => {
            return Err(vec![Diagnostic::file(
                &path,
                format!("unexpected file: cplane reads {expected} here"),
            )])
        }
        FileRole::Platform => "Platform",
        FileRole::Region(_) => "Region",
        FileRole::Workspace(_) => "Workspace",
        FileRole::Stack(_) => "Stack",
        FileRole::Template { .. } => "template",
    };
    let text: Arc<str> = Arc::from(check_text(&path, &bytes, what).map_err(|d| vec![d])?);
    Ok(Some(match role {
        FileRole::Platform => Parsed::Platform(typed(&path, String::new(), text)?),
        FileRole::Region(id) => Parsed::Region(typed(&path, id.clone(), text)?),
        FileRole::Workspace(id) => Parsed::Workspace(typed(&path, id.clone(), text)?),
        FileRole::Stack(name) => Parsed::Stack(typed(&path, name.clone(), text)?),
        FileRole::Template { stack } => Parsed::Template {
            stack: stack.clone(),
            path,
            text,
        },
        FileRole::Misplaced(_) | FileRole::Ignored => unreachable!("returned above"),
    }))
}

/// Size, encoding and emptiness checks shared by documents and templates.
fn check_text<'a>(path: &str, bytes: &'a [u8], what: &str) -> Result<&'a str, Diagnostic> {
    if bytes.len() > MAX_FILE_BYTES {
        return Err(Diagnostic::file(
            path,
            format!(
                "file is {} bytes; the limit is {} bytes (1 MiB)",
                bytes.len(),
                MAX_FILE_BYTES
            ),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let valid = &bytes[..e.valid_up_to()];
        let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
        let line_start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&valid[line_start..])
            .chars()
            .count()
            + 1;
        Diagnostic::new(
            path,
            Pos { line, column },
            "",
            format!(
                "file is not valid UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
    })?;
    let blank = text
        .lines()
        .all(|l| l.trim().is_empty() || (what != "template" && l.trim_start().starts_with('#')));
    if blank {
        return Err(Diagnostic::file(
            path,
            format!("file is empty; expected a {what}"),
        ));
    }
    Ok(text)
}

/// libyaml (under serde_yaml) takes time quadratic in flow nesting depth (`[[[[…`): 30,000
/// levels cost seconds. Where a cheap byte count suggests deep flow nesting, yaml-rust2 — which
/// stops at depth 128 in microseconds — parses first and its error is reported instead.
pub fn refuse_deep_flow_nesting(path: &str, text: &str) -> Result<(), Diagnostic> {
    // Nesting never goes deeper than the number of openers: counting them is a loop the
    // compiler vectorizes, and it settles nearly every document before the depth is followed.
    let openers = text.bytes().filter(|&b| b == b'[' || b == b'{').count();
    if openers <= 64 {
        return Ok(());
    }
    let mut depth: i64 = 0;
    let mut max = 0;
    for b in text.bytes() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth -= 1,
            _ => {}
        }
    }
    if max <= 64 {
        return Ok(());
    }
    struct Ignore;
    impl yaml_rust2::parser::MarkedEventReceiver for Ignore {
        fn on_event(&mut self, _: yaml_rust2::Event, _: yaml_rust2::scanner::Marker) {}
    }
    let mut parser = yaml_rust2::parser::Parser::new_from_str(text);
    parser.load(&mut Ignore, true).map_err(|e| {
        let m = e.marker();
        Diagnostic::new(
            path,
            Pos {
                line: m.line(),
                column: m.col() + 1,
            },
            "",
            e.info(),
        )
    })
}

/// Parses one workspace file (`workspaces/<id>.yaml`) with every check `load` applies to it
/// on its own (size, encoding, emptiness, strict shape). For incremental reloads: the caller
/// then runs [`crate::validate::workspace`] against the unchanged rest of the model.
///
/// Reports every problem of the file (never an empty list), sorted by position.
pub fn parse_workspace(path: &str, bytes: &[u8]) -> Result<Entity<Workspace>, Vec<Diagnostic>> {
    let FileRole::Workspace(id) = FileRole::of(path) else {
        return Err(vec![Diagnostic::file(
            path,
            "unexpected file: cplane reads workspaces/<id>.yaml here",
        )]);
    };
    let text: Arc<str> = Arc::from(check_text(path, bytes, "Workspace").map_err(|d| vec![d])?);
    typed(path, id, text)
}

/// The fast path parses with serde_yaml alone; only a document it rejects is walked again
/// ([`crate::shape::errors`]) to report every error in it, not just serde's first.
fn typed<T: DeserializeOwned>(
    path: &str,
    path_id: String,
    text: Arc<str>,
) -> Result<Entity<T>, Vec<Diagnostic>> {
    refuse_deep_flow_nesting(path, &text).map_err(|d| vec![d])?;
    match serde_yaml::from_str::<T>(&text) {
        Ok(doc) => Ok(Entity::new(doc, path.to_owned(), path_id, text)),
        Err(err) => Err(shape_diagnostics::<T>(path, &text, &err)),
    }
}

/// Every shape error of a document serde_yaml rejected with `err`, sorted by position; serde's
/// own error alone when the document is not well-formed YAML (or, defensively, when the walk
/// attributes nothing).
pub(crate) fn shape_diagnostics<T: DeserializeOwned>(
    path: &str,
    text: &str,
    err: &serde_yaml::Error,
) -> Vec<Diagnostic> {
    let found = crate::shape::errors::<T>(text).unwrap_or_default();
    if found.is_empty() {
        return vec![yaml_error(path, err)];
    }
    let mut diags: Vec<Diagnostic> = found
        .into_iter()
        .map(|e| Diagnostic::new(path, e.pos, &e.path, reword(&e.message)))
        .collect();
    sort_dedup(&mut diags);
    diags
}

/// Turns a serde_yaml error into a diagnostic: position from `location()`, field path split off
/// the message (serde_yaml prefixes it as `spec.aws: `), and the trailing position text removed.
pub fn yaml_error(path: &str, err: &serde_yaml::Error) -> Diagnostic {
    let pos = err.location().map_or(Pos::START, |l| Pos {
        line: l.line(),
        column: l.column(),
    });
    let mut message = err.to_string();
    if let Some(i) = message.rfind(" at line ") {
        if message[i + 9..]
            .split(' ')
            .next()
            .is_some_and(|n| n.parse::<usize>().is_ok())
        {
            message.truncate(i);
        }
    }
    let (field, text) = match message.split_once(": ") {
        Some((p, rest))
            if !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-[]".contains(c)) =>
        {
            (p.to_owned(), rest.to_owned())
        }
        _ => (String::new(), message),
    };
    Diagnostic::new(path, pos, &field, reword(&text))
}

/// serde_yaml's wordings that would puzzle a state-repo author, in cplane's words.
fn reword(text: &str) -> String {
    // serde_yaml's wording for a map or list where a plain enum value belongs.
    text.replace(
        "expected a YAML tag starting with '!'",
        "expected a plain value (see the schema for the allowed ones)",
    )
    .replace(
        "deserializing from YAML containing more than one document is not supported",
        "expected one YAML document, found several (remove the `---` separator)",
    )
}
