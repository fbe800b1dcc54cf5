//! Rendering a tenant stack's templates once for every cluster that shares its *generalized
//! context*, rather than once per cluster.
//!
//! A cluster's tokens for one stack are its workspace id, its AWS account id and account name,
//! and the values its workspace gives the stack ([`Subst`]). Its generalized context is its
//! context with every occurrence of a token inside the strings of `workspace`, `cluster`,
//! `domains` and (when the stack's templates pass it through) `values` replaced by a run of the
//! token's placeholder character, as long as the token (map keys, numbers and booleans
//! untouched). Ten thousand copies of one workspace share a handful of generalized contexts.
//!
//! Why the output is exact:
//! 1. Every template of the stack passes those roots through ([`super::passthrough`]): its
//!    output for the real context is its output for the generalized one with the text at the
//!    placeholders' positions put back.
//! 2. The placeholder characters occur in no token, in none of the stack's templates and
//!    value defaults, and in none of the real strings they are written into (the workspace,
//!    the cluster id, the workspace's domains, the workspace's values): in the generalized
//!    context a placeholder character occurs only where it stands for its token. Which
//!    characters stand for tokens is part of the key.
//! 3. The *output* may still hold a placeholder character that stands for no token: one the
//!    template makes (`{{ "z" | upper }}`), or one in text the region, environment, platform
//!    or stack contribute (`region.displayName`). So where the placeholders land is established
//!    once per key, at its second sighting, by rendering both ways and comparing ([`marks`]):
//!    every run of a placeholder character in the generalized output must be that cluster's
//!    token (once or several times over) in the real output, and every other byte the same. A
//!    stray placeholder character fails this, as no token holds one, and that key's output is
//!    never reused.
//! 4. The generalized output is a function of the key: the renderer holds one model, so the
//!    stack's name, region and environment stand for its templates, value defaults and scope
//!    variables, and the key holds the generalized strings and values and the placeholder
//!    characters used. For a later cluster with the same key, 1 says its real output is the
//!    generalized output with its own tokens put back where the placeholders landed, which 3
//!    established; each run there is a whole number of its token, as every placeholder run in
//!    the (same) generalized strings was made from whole tokens.
//!
//! A first sighting only renders as usual and remembers the key's hash, so clusters whose
//! contexts are all distinct cost one hash each (a different key with the same hash is taken
//! for a second sighting, and checked as one). The property test in `render/tests.rs`
//! (`rendering_once_per_generalized_context_is_exact`) compares this route with the full one
//! over generated templates and workspaces.

use std::fmt::Write as _;
use std::hash::Hasher as _;

use super::passthrough::{self, Root};
use super::*;

/// What [`OnceCache`] holds for one hash.
enum Slot {
    /// Seen once.
    Seen,
    /// By full key (more than one only on a hash collision).
    Kept(Vec<(Box<str>, Generals)>),
}

/// Each template's generalized output, in [`PreparedStack::templates`] order, or `None` where
/// it may not be reused.
type Generals = Arc<[Option<General>]>;

/// A template's output for a generalized context, and where the placeholders are in it.
pub(super) struct General {
    text: Box<str>,
    /// Byte offset, length of the run, and the placeholder character (whose token goes there,
    /// once or several times over).
    marks: Vec<(usize, usize, u8)>,
}

/// Stacks' generalized outputs by generalized context, for one renderer (one model).
#[derive(Default)]
pub(super) struct OnceCache {
    shards: [Mutex<HashMap<u64, Slot>>; 16],
    /// Template renders saved, for tests and benchmarks.
    pub(super) saved: std::sync::atomic::AtomicUsize,
}

/// The roots a stack must pass through for its clusters to share generalized contexts: without
/// any of these, each cluster's context would be its own.
const NEEDED: u8 = Root::Workspace as u8 | Root::Cluster as u8 | Root::Domains as u8;

/// Placeholder characters, in the order they are given out: capitals, the rarest in manifests
/// first, then punctuation. The generalized output is never parsed (the real text is rebuilt
/// from it), so a placeholder only has to be a one-byte character that no operation a
/// template may apply to a passed-through string ([`super::passthrough`]) treats apart from a
/// token's letters and digits: not whitespace (`trim`, `indent`), not a quote or backslash
/// (`tojson`, a string's repr), not `<`, `>`, `&` or `'` (`tojson` escapes them for HTML), not
/// `-` (tokens hold it).
const ALPHABET: &[u8] = b"ZJQXWKHGYUVFBPDLMONTSCEARI~^@!?;$`|#%*+=";

/// Each byte's index in [`ALPHABET`], or `u8::MAX`.
const INDEX: [u8; 256] = {
    let mut index = [u8::MAX; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        index[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    index
};

/// The [`ALPHABET`] characters (bit = index) that occur in `s`.
pub(super) fn placeholder_chars(s: &str) -> u64 {
    s.bytes()
        .map(|b| INDEX[usize::from(b)])
        .filter(|&i| i != u8::MAX)
        .fold(0, |set, i| set | 1 << i)
}

/// [`placeholder_chars`] of every string of a JSON value (keys included).
pub(super) fn placeholder_chars_json(value: &serde_json::Value) -> u64 {
    let mut set = 0;
    visit_strings(value, &mut |s, _| set |= placeholder_chars(s));
    set
}

/// A cluster's tokens for one stack and the [`ALPHABET`] character that stands for each.
pub(super) struct Subst<'a> {
    pub(super) texts: Vec<&'a str>,
    /// Each token's placeholder character.
    chars: Vec<u8>,
    /// Per byte: the token it stands for.
    token_of: [Option<u8>; 256],
    /// The characters [`Subst::general`] wrote (bit = index in [`ALPHABET`]).
    used: std::cell::Cell<u64>,
}

impl<'a> Subst<'a> {
    /// The workspace id (which must be a DNS label, or `None`), then the other candidates that
    /// are [`is_token`], without repeats, each given the next [`ALPHABET`] character not in
    /// `taken` (those of every real string the generalized context is made from, and of the
    /// templates); tokens beyond the free characters are left out. So is a token holding a
    /// character not in `taken`: callers put every token's characters there, and point 3 of
    /// the module doc needs that no token holds a placeholder.
    pub(super) fn new(
        id: &'a str,
        others: impl IntoIterator<Item = &'a str>,
        taken: u64,
    ) -> Option<Self> {
        if !cplane_schema::domain::is_dns_label(id) {
            return None;
        }
        let mut free = (0..ALPHABET.len())
            .filter(|&i| taken & 1 << i == 0)
            .map(|i| ALPHABET[i]);
        let mut texts = vec![id];
        let mut chars = vec![free.next()?];
        for t in others {
            if is_token(t) && !texts.contains(&t) && placeholder_chars(t) & !taken == 0 {
                let Some(c) = free.next() else { break };
                texts.push(t);
                chars.push(c);
            }
        }
        let mut token_of = [None; 256];
        for (i, &c) in chars.iter().enumerate() {
            token_of[usize::from(c)] = Some(u8::try_from(i).expect("a short alphabet"));
        }
        Some(Self {
            texts,
            chars,
            token_of,
            used: Default::default(),
        })
    }

    /// `s` with every occurrence of each token replaced by a run of its character of its
    /// length, tokens in order (a later token never matches across a placeholder: it holds no
    /// given character).
    pub(super) fn general(&self, s: &str) -> String {
        let mut out = s.to_owned();
        for (i, text) in self.texts.iter().enumerate() {
            if out.contains(text) {
                let c = self.chars[i];
                out = out.replace(text, &char::from(c).to_string().repeat(text.len()));
                self.used.set(self.used.get() | 1 << INDEX[usize::from(c)]);
            }
        }
        out
    }

    /// `value` with [`Subst::general`] applied to every string, map keys left as they are.
    pub(super) fn general_json(&self, value: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value as V;
        match value {
            V::String(s) => V::String(self.general(s)),
            V::Array(items) => V::Array(items.iter().map(|v| self.general_json(v)).collect()),
            V::Object(map) => V::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), self.general_json(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// The token a character [`Subst::general`] wrote stands for.
    fn placeholder_token(&self, b: u8) -> Option<&'a str> {
        let index = INDEX[usize::from(b)];
        let used = index != u8::MAX && self.used.get() & 1 << index != 0;
        let token = self.token_of[usize::from(b)].filter(|_| used)?;
        Some(self.texts[usize::from(token)])
    }

    /// `general` with this cluster's tokens put back at its marks, or `None` when a mark is
    /// not a whole number of this cluster's token for its character.
    pub(super) fn put_back(&self, general: &General) -> Option<String> {
        let mut out = String::with_capacity(general.text.len());
        let mut copied = 0;
        for &(at, run, c) in &general.marks {
            out.push_str(&general.text[copied..at]);
            let text = self.placeholder_token(c)?;
            if run % text.len() != 0 {
                return None;
            }
            for _ in 0..run / text.len() {
                out.push_str(text);
            }
            copied = at + run;
        }
        out.push_str(&general.text[copied..]);
        Some(out)
    }
}

/// Where the placeholders of `general` (rendered for the generalized context) are, when
/// `real` (rendered for the real one) is `general` with `subst`'s tokens put back at every run
/// of a character [`Subst::general`] wrote and nothing else changed; `None` otherwise.
pub(super) fn marks(general: &str, real: &str, subst: &Subst<'_>) -> Option<General> {
    let (g, r) = (general.as_bytes(), real.as_bytes());
    if g.len() != r.len() {
        return None;
    }
    let mut marks = Vec::new();
    let mut i = 0;
    while i < g.len() {
        let Some(text) = subst.placeholder_token(g[i]) else {
            if g[i] != r[i] {
                return None;
            }
            i += 1;
            continue;
        };
        let run = g[i..].iter().take_while(|&&b| b == g[i]).count();
        let text = text.as_bytes();
        if run % text.len() != 0 || !r[i..i + run].chunks(text.len()).all(|c| c == text) {
            return None;
        }
        marks.push((i, run, g[i]));
        i += run;
    }
    Some(General {
        text: general.into(),
        marks,
    })
}

impl OnceCache {
    /// What is kept for `key` (hashed as `hash`), and whether it was seen before.
    fn lookup(&self, hash: u64, key: &str) -> Result<Generals, bool> {
        let mut shard = self.shards[(hash % 16) as usize]
            .lock()
            .expect("cache lock");
        match shard.get(&hash) {
            Some(Slot::Kept(kept)) => match kept.iter().find(|(k, _)| **k == *key) {
                Some((_, outputs)) => Ok(outputs.clone()),
                None => Err(true),
            },
            Some(Slot::Seen) => Err(true),
            None => {
                shard.insert(hash, Slot::Seen);
                Err(false)
            }
        }
    }

    fn keep(&self, hash: u64, key: &str, outputs: Generals) {
        let mut shard = self.shards[(hash % 16) as usize]
            .lock()
            .expect("cache lock");
        match shard.entry(hash).or_insert(Slot::Seen) {
            Slot::Kept(kept) => {
                if !kept.iter().any(|(k, _)| **k == *key) {
                    kept.push((key.into(), outputs));
                }
            }
            slot => *slot = Slot::Kept(vec![(key.into(), outputs)]),
        }
    }
}

impl Renderer<'_> {
    /// Each template's output (in [`PreparedStack::templates`] order) of stack `name` on the
    /// tenant cluster `cluster` whose strings are `tenant` and whose workspace gives the stack
    /// `overrides`, through the generalized-context memo; `None` when the stack's templates do
    /// not pass the tenant roots through. `context` makes the template context of given
    /// strings (`None`: the cluster's own) and values, `render` renders a template.
    pub(super) fn stack_once(
        &self,
        name: &str,
        cluster: &Cluster,
        tenant: &TenantStrings,
        overrides: Option<&BTreeMap<String, serde_json::Value>>,
        context: impl Fn(Option<&TenantStrings>, Value) -> Value,
        render: impl Fn(&str, &Value) -> Result<String, minijinja::Error>,
    ) -> Option<Vec<Result<String, minijinja::Error>>> {
        let through = self.through.get(name)?;
        if through.roots & NEEDED != NEEDED {
            return None;
        }
        let values_through = through.roots & Root::Values as u8 != 0;
        let overrides = overrides.map(|o| serde_json::to_value(o).expect("JSON values serialize"));
        let mut taken = through.taken | tenant.all().map(placeholder_chars).fold(0, |a, b| a | b);
        let mut candidates = Vec::new();
        if let Some(json) = &overrides {
            taken |= placeholder_chars_json(json);
            visit_strings(json, &mut |s, is_key| {
                if !is_key {
                    candidates.push(s.to_owned());
                }
            });
        }
        let [id, _, account, aws] = &tenant.workspace;
        let others = [aws.as_str(), account.as_str()]
            .into_iter()
            .chain(candidates.iter().map(String::as_str));
        let subst = Subst::new(id, others, taken)?;

        // The key: everything the generalized context is made of, and which characters in it
        // are placeholders.
        let general_strings = tenant.map(|s| subst.general(s));
        let general_overrides = match values_through {
            true => overrides.as_ref().map(|json| subst.general_json(json)),
            false => None,
        };
        let general_values = general_overrides.as_ref().or(overrides.as_ref());
        let mut key = String::with_capacity(256);
        let scope = [name, &cluster.region, &cluster.environment];
        for part in scope.into_iter().chain(general_strings.all()) {
            key.push_str(part);
            key.push('\0');
        }
        match general_values {
            None => key.push('\u{1}'),
            Some(json) => key.push_str(&json.to_string()),
        }
        let _ = write!(key, "\0{:x}", subst.used.get());
        let mut h = rustc_hash::FxHasher::default();
        h.write(key.as_bytes());
        let hash = h.finish();

        let prepared = &self.stacks[name];
        let values = |json: Option<&serde_json::Value>| match json {
            None => prepared.values(None),
            Some(json) => prepared.merged(json),
        };
        let real = || context(None, values(overrides.as_ref()));
        let seen = match self.once.lookup(hash, &key) {
            Ok(kept) => {
                let mut ctx = None;
                let mut reused = 0;
                let outputs = kept
                    .iter()
                    .zip(&prepared.templates)
                    .map(|(kept, path)| {
                        // `put_back` cannot fail for an equal key (point 4 of the module doc);
                        // should it, the template is rendered.
                        match kept.as_ref().and_then(|g| subst.put_back(g)) {
                            Some(text) => {
                                reused += 1;
                                Ok(text)
                            }
                            None => render(path, ctx.get_or_insert_with(&real)),
                        }
                    })
                    .collect();
                self.once
                    .saved
                    .fetch_add(reused, std::sync::atomic::Ordering::Relaxed);
                return Some(outputs);
            }
            Err(seen) => seen,
        };
        let ctx = real();
        let outputs: Vec<_> = prepared
            .templates
            .iter()
            .map(|path| render(path, &ctx))
            .collect();
        if seen {
            let general_ctx = context(Some(&general_strings), values(general_values));
            let kept: Generals = prepared
                .templates
                .iter()
                .zip(&outputs)
                .map(|(path, real)| {
                    let real = real.as_ref().ok()?;
                    let general = render(path, &general_ctx).ok()?;
                    marks(&general, real, &subst)
                })
                .collect();
            self.once.keep(hash, &key, kept);
        }
        Some(outputs)
    }
}

/// What the generalized contexts of one stack's clusters are made with.
pub(super) struct Through {
    /// The roots every template of the stack passes through ([`passthrough::passed_through`]).
    pub(super) roots: u8,
    /// The [`ALPHABET`] characters of its templates and of its values' defaults: placeholders
    /// the check would only refuse.
    pub(super) taken: u64,
}

/// [`Through`] of every stack.
pub(super) fn through_of(model: &Model) -> HashMap<String, Through> {
    model
        .stacks
        .iter()
        .map(|(name, stack)| {
            let dir = format!("stacks/{}/templates/", stack.entity.path_id);
            let sources = stack.templates.values().map(|s| placeholder_chars(s));
            let defaults = stack.entity.doc.spec.values.values();
            let defaults = defaults
                .filter_map(|v| v.default.as_ref())
                .map(placeholder_chars_json);
            let through = Through {
                roots: passthrough::passed_through(&stack.templates, &dir),
                taken: sources.chain(defaults).fold(0, |a, b| a | b),
            };
            (name.clone(), through)
        })
        .collect()
}
