//! The caches that make rendering 10,000 clusters cheap: parsed documents by text (exact or
//! generalized, see [`super::generalize`]) and, for digests, canonical lines.

use super::*;

/// The outcome of parsing one rendered document, cached by its exact text.
pub(super) enum ParsedDoc {
    Object(serde_json::Value),
    /// Message, and the line within the document it concerns (0 when unknown).
    Invalid(String, usize),
}

/// Rendered documents parsed once per render pass; YAML parsing is the expensive part of
/// rendering, and most documents repeat across clusters.
///
/// - Many documents (Namespaces, Services, RBAC, ...) come out byte-identical in thousands of
///   clusters: they are cached by their exact text.
/// - Most of the rest differ between tenant clusters only in the workspace id (host names, zone
///   names, client ids, values such as repository URLs). Those are cached in *generalized* form,
///   the id replaced by a placeholder of the same length (see [`Generalizer`]), and the parsed
///   value is specialized back to the cluster, so thousands of tenant clusters share a few
///   hundred distinct parsed documents (the figures are in `benches/validate.rs`).
///
/// Keyed by the SHA-256 of the text (a hit is exact for all practical purposes). A document is
/// kept only from its second sighting on, so the cache never holds documents that are unique
/// after generalization: memory stays flat on large repos.
#[derive(Default)]
pub(super) struct ParseCache {
    pub(super) shards: [Mutex<CacheShard>; 16],
    /// YAML parses done (cache misses), for tests.
    pub(super) parses: std::sync::atomic::AtomicUsize,
    /// Whether tenant documents may be parsed in generalized form (see
    /// [`super::Renderer::generalizing`]).
    pub(super) no_generalizing: bool,
}

/// Document digest → parsed document, or `None` when seen only once so far.
pub(super) type CacheShard = HashMap<[u8; 32], Option<Arc<ParsedDoc>>>;

impl ParseCache {
    /// Parses `doc`, rendered for `workspace`'s cluster (tenant clusters). Errors come from
    /// parsing the exact text, so their messages and lines are the user's.
    pub(super) fn parse(
        &self,
        doc: &str,
        workspace: Option<&str>,
    ) -> Result<serde_json::Value, (String, usize)> {
        let generalizer = workspace
            .filter(|id| !self.no_generalizing && doc.contains(*id))
            .and_then(Generalizer::new);
        if let Some((g, text)) = generalizer.as_ref().and_then(|g| Some((g, g.of(doc)?))) {
            if let ParsedDoc::Object(value) = &*self.get(&text) {
                if let Some(value) = g.specialize(value) {
                    return Ok(value);
                }
            }
        }
        match &*self.get(doc) {
            ParsedDoc::Object(value) => Ok(value.clone()),
            ParsedDoc::Invalid(message, line) => Err((message.clone(), *line)),
        }
    }

    /// Parses `doc` without looking it up or remembering it (counted in `parses`), for a
    /// caller that keeps the result in a cache of its own.
    pub(super) fn parse_uncached(&self, doc: &str) -> ParsedDoc {
        self.parses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        parse_document(doc)
    }

    pub(super) fn get(&self, doc: &str) -> Arc<ParsedDoc> {
        let key: [u8; 32] = Sha256::digest(doc.as_bytes()).into();
        let shard = &self.shards[usize::from(key[0]) % 16];
        let seen = match shard.lock().expect("cache lock").get(&key) {
            Some(Some(hit)) => return hit.clone(),
            Some(None) => true,
            None => false,
        };
        let parsed = Arc::new(self.parse_uncached(doc));
        shard
            .lock()
            .expect("cache lock")
            .insert(key, seen.then(|| parsed.clone()));
        parsed
    }
}

/// A tenant document reduced to what a bundle's digest needs, in generalized form: each token
/// (see [`Tokens`]) replaced by its placeholder everywhere, the cluster label included.
pub(super) struct Line {
    /// The object's canonical JSON (labels and annotation added, keys sorted, compact).
    pub(super) json: String,
    /// The placeholders in `json`: byte offset, length of the run of one letter, and the token
    /// (index into [`Tokens::texts`]) that goes there, once or several times over.
    pub(super) marks: Vec<(usize, usize, usize)>,
    /// The object's [`object_key`].
    pub(super) key: ObjectKey,
    /// Whether a string of `key` holds a placeholder.
    pub(super) key_has_placeholder: bool,
    /// For each string holding placeholders whose other characters are all ones that YAML
    /// numbers, booleans and nulls are made of: the tokens it holds (a bit per token). Such a
    /// string is a string with the tokens back only when one of them has another character
    /// ([`could_be_non_string`]); otherwise the line does not hold for the cluster.
    pub(super) plain: Vec<u16>,
}

impl Line {
    /// Whether the line holds for a cluster whose tokens are `tokens`: every run is a whole
    /// number of its token, and no string turns into a number, boolean or null.
    pub(super) fn holds_for(&self, tokens: &Tokens<'_>) -> bool {
        let numberish = |token: usize| could_be_non_string(tokens.texts[token]);
        self.marks
            .iter()
            .all(|&(_, run, token)| tokens.texts.get(token).is_some_and(|t| run % t.len() == 0))
            && !self.plain.iter().any(|&set| {
                (0..tokens.texts.len())
                    .filter(|t| set & (1 << t) != 0)
                    .all(numberish)
            })
    }
}

/// Canonical lines of generalized tenant documents, by stack, generalized cluster id,
/// generalized text and the letters standing for the tokens. Like [`ParseCache`], an entry is
/// kept from its second sighting on. `None`: the document has no line (it does not parse, or a
/// map key holds a placeholder, whose sort order would differ from the token's): it is parsed
/// as it is.
///
/// Looked up for every tenant document, so keyed by a fast hash (FxHash) of the document as
/// generalized, computed piecewise from the document and the tokens' offsets without building
/// the generalized text. A first sighting is remembered by its hash only; a kept entry holds its
/// key in full, compared on every hit (a hash collision costs a parse, never a wrong line).
#[derive(Default)]
pub(super) struct LineCache {
    pub(super) shards: [Mutex<HashMap<u64, LineSlot>>; 16],
}

/// What [`LineCache`] holds for one hash.
pub(super) enum LineSlot {
    /// Seen once.
    Seen,
    /// Kept lines by their full key (more than one only on a hash collision).
    Kept(Vec<(LineKey, Option<Arc<Line>>)>),
}

/// The full key of a kept line: stack, generalized cluster id, generalized text, and the
/// letter of each token ([`Generalized::slots`]).
pub(super) type LineKey = (Box<str>, Box<str>, Box<str>, [u8; LETTERS.len()]);

impl LineCache {
    /// The line of `doc`, whose tokens are where `g` says; `make` builds it from the generalized
    /// text on a miss.
    pub(super) fn get(
        &self,
        doc: &str,
        g: &Generalized,
        stack: &str,
        cluster: &str,
        make: impl FnOnce(&str) -> Option<Line>,
    ) -> Option<Arc<Line>> {
        use std::hash::Hasher as _;
        let pieces = || {
            let mut copied = 0;
            g.occurrences
                .iter()
                .flat_map(move |o| {
                    let piece = [&doc[copied..o.at], placeholder(o.slot, o.len)];
                    copied = o.at + o.len;
                    piece
                })
                .chain(std::iter::once(
                    &doc[g.occurrences.last().map_or(0, |o| o.at + o.len)..],
                ))
        };
        let mut h = rustc_hash::FxHasher::default();
        for part in [stack, cluster] {
            h.write_usize(part.len());
            h.write(part.as_bytes());
        }
        h.write(&g.slots);
        h.write_usize(doc.len());
        for piece in pieces() {
            h.write(piece.as_bytes());
        }
        let hash = h.finish();
        let is_key = |(s, c, t, slots): &LineKey| {
            **s == *stack && **c == *cluster && *slots == g.slots && t.len() == doc.len() && {
                let mut offset = 0;
                pieces().all(|piece| {
                    let same = t.as_bytes()[offset..offset + piece.len()] == *piece.as_bytes();
                    offset += piece.len();
                    same
                })
            }
        };
        let shard = &self.shards[(hash % 16) as usize];
        let seen = match shard.lock().expect("cache lock").get(&hash) {
            Some(LineSlot::Kept(kept)) => match kept.iter().find(|(key, _)| is_key(key)) {
                Some((_, line)) => return line.clone(),
                None => true,
            },
            Some(LineSlot::Seen) => true,
            None => false,
        };
        let text: String = pieces().collect();
        let line = make(&text).map(Arc::new);
        let mut shard = shard.lock().expect("cache lock");
        if !seen {
            shard.entry(hash).or_insert(LineSlot::Seen);
            return line;
        }
        let key = (stack.into(), cluster.into(), text.into(), g.slots);
        match shard.entry(hash).or_insert(LineSlot::Seen) {
            LineSlot::Kept(kept) => {
                if !kept.iter().any(|(k, _)| is_key(k)) {
                    kept.push((key, line.clone()));
                }
            }
            slot => *slot = LineSlot::Kept(vec![(key, line.clone())]),
        }
        line
    }
}

/// The canonical line of a generalized document rendered by `stack` for the (generalized)
/// cluster id `cluster`, the tokens written with the letters `slots` gives ([`Generalized`]),
/// or `None` when it has none (see [`LineCache`]).
pub(super) fn canonical_line(
    cache: &ParseCache,
    text: &str,
    stack: &str,
    cluster: &str,
    slots: &[u8; LETTERS.len()],
) -> Option<Line> {
    // Not through `cache.get`: the line cache keeps a document from its second sighting on,
    // by a key (stack, cluster, text) that holds the parse cache's (text), so a lookup here
    // would only hash the text and remember it for nothing (and the value would be cloned).
    let ParsedDoc::Object(mut value) = cache.parse_uncached(text) else {
        return None;
    };
    mark(&mut value, cluster, stack);
    // The token of each letter, for this document.
    let mut token_of = [None; 256];
    for (token, &slot) in slots.iter().enumerate() {
        if slot > 0 {
            token_of[usize::from(LETTERS[usize::from(slot) - 1])] = Some(token);
        }
    }
    let tokens_in = |s: &str| -> u16 {
        s.bytes()
            .filter_map(|b| token_of[usize::from(b)])
            .fold(0, |set, token| set | 1 << token)
    };
    let mut plain = Vec::new();
    let mut keys_plain = true;
    visit_strings(&value, &mut |s, is_key| {
        let set = tokens_in(s);
        if set != 0 {
            keys_plain &= !is_key;
            let rest: String = s
                .chars()
                .filter(|&c| !c.is_ascii() || token_of[c as usize].is_none())
                .collect();
            if could_be_non_string(&rest) && !plain.contains(&set) {
                plain.push(set);
            }
        }
    });
    if !keys_plain {
        return None;
    }
    let json = serde_json::to_string(&value).expect("JSON values serialize");
    let mut marks = Vec::new();
    let bytes = json.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match token_of[usize::from(bytes[i])] {
            Some(token) => {
                let run = bytes[i..].iter().take_while(|&&b| b == bytes[i]).count();
                marks.push((i, run, token));
                i += run;
            }
            None => i += 1,
        }
    }
    let key = object_key(&value);
    let (_, kind, namespace, name, group) = &key;
    Some(Line {
        marks,
        key_has_placeholder: [kind, namespace, name, group]
            .iter()
            .any(|s| tokens_in(s) != 0),
        json,
        key,
        plain,
    })
}

/// The canonical line of a tenant document as it is (no placeholder), when it cannot be
/// generalized: parsed through the parse cache, which shares it with other clusters that render
/// the same text. `None` when the document is not a valid object (the full route reports it).
pub(super) fn exact_line(
    cache: &ParseCache,
    doc: &str,
    stack: &str,
    cluster: &str,
) -> Option<Line> {
    let ParsedDoc::Object(value) = &*cache.get(doc) else {
        return None;
    };
    let mut value = value.clone();
    mark(&mut value, cluster, stack);
    Some(Line {
        json: serde_json::to_string(&value).expect("JSON values serialize"),
        marks: Vec::new(),
        key: object_key(&value),
        key_has_placeholder: false,
        plain: Vec::new(),
    })
}

/// Calls `f` with every string of `value` and whether it is a map key.
pub(super) fn visit_strings(value: &serde_json::Value, f: &mut impl FnMut(&str, bool)) {
    match value {
        serde_json::Value::String(s) => f(s, false),
        serde_json::Value::Array(items) => items.iter().for_each(|v| visit_strings(v, f)),
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                f(k, true);
                visit_strings(v, f);
            }
        }
        _ => {}
    }
}
