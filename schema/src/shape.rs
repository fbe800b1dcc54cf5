//! Every shape error of one document, for the slow path after serde_yaml rejected it.
//!
//! serde stops at the first error. Loading parses with serde_yaml first (the fast path, taken by
//! every valid document); only when that fails does [`errors`] walk the document again to find
//! every unknown field, wrong type, unknown variant and missing field, each at its own position.
//!
//! It does so without a second description of the schema: the document's YAML node tree
//! (yaml-rust2, positions kept) is handed to the model types' own `Deserialize` impls through a
//! deserializer that follows serde_yaml's rules and wording. A wrong type found by the
//! deserializer itself is recorded and the value stands in as a placeholder that is whatever the
//! type asks for (a *wildcard*), so the walk goes on. An error raised by a type (unknown field or
//! variant, missing or duplicate field) ends that walk; it is recorded with its place, the place
//! is patched (the unknown key skipped, the value made a wildcard, the missing field supplied as
//! one) and the walk starts again, until it gets through. Each error thus costs one walk of a
//! small document, and only documents that are already wrong pay it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Expected, IntoDeserializer, Unexpected, Visitor,
};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::diagnostic::Pos;
use crate::suggest;

/// At most this many errors are collected from one document.
pub const MAX_ERRORS: usize = 100;

/// Node visits allowed per walk: aliases may make a small file a large tree.
const MAX_VISITS: usize = 100_000;

/// Nesting deeper than serde_yaml's own limit is not walked.
const MAX_DEPTH: usize = 128;

/// One shape error: where, at which field path, and serde's message (without the path prefix).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ShapeError {
    /// Position, as serde_yaml would report it.
    pub pos: Pos,
    /// Field path in serde_yaml's notation (`spec.stacks[0]`), empty for the document itself.
    pub path: String,
    /// The message.
    pub message: String,
}

/// Every shape error of `text` as a `T`, sorted by position. `None` when the text is not one
/// well-formed YAML document (the caller then reports serde_yaml's own error), and empty when no
/// error could be attributed (likewise).
pub fn errors<T: DeserializeOwned>(text: &str) -> Option<Vec<ShapeError>> {
    // A syntax error (or several documents) is one error, reported as serde_yaml words it.
    serde_yaml::from_str::<de::IgnoredAny>(text).ok()?;
    let tree = Tree::parse(text)?;
    let mut ctx = Ctx::default();
    while ctx.found.len() < MAX_ERRORS {
        ctx.visits = 0;
        let error = match T::deserialize(Node::root(&tree, &mut ctx)) {
            Ok(_) => break,
            Err(error) => error,
        };
        let Some(site) = error.site else { break };
        if !ctx.record_and_fix(error.kind, error.message, site) {
            break;
        }
    }
    let Ctx { found, hidden, .. } = ctx;
    Some(found.into_iter().filter(|e| !hidden.contains(e)).collect())
}

// ---------------------------------------------------------------------------------------------
// The node tree.

#[derive(Debug)]
enum Content {
    Scalar {
        value: String,
        style: TScalarStyle,
        tagged: bool,
    },
    Seq(Vec<usize>),
    Map(Vec<(usize, usize)>),
}

#[derive(Debug)]
struct Tree {
    nodes: Vec<(Content, Pos)>,
    root: usize,
}

impl Tree {
    /// The first document's node tree; `None` on a syntax error or without a document.
    /// Aliases point at their anchor's node (shared, not copied).
    fn parse(text: &str) -> Option<Tree> {
        #[derive(Default)]
        struct Builder {
            nodes: Vec<(Content, Pos)>,
            stack: Vec<(usize, Option<usize>)>, // (collection node, pending key of a map)
            anchors: HashMap<usize, usize>,
            root: Option<usize>,
            broken: bool,
        }
        impl Builder {
            fn attach(&mut self, node: usize) {
                match self.stack.last_mut() {
                    None => {
                        if self.root.is_none() {
                            self.root = Some(node);
                        }
                    }
                    Some((parent, pending)) => match &mut self.nodes[*parent].0 {
                        Content::Seq(items) => items.push(node),
                        Content::Map(entries) => match pending.take() {
                            None => *pending = Some(node),
                            Some(key) => entries.push((key, node)),
                        },
                        Content::Scalar { .. } => self.broken = true,
                    },
                }
            }
            fn push(&mut self, content: Content, mark: Marker, anchor: usize) -> usize {
                let id = self.nodes.len();
                self.nodes.push((
                    content,
                    Pos {
                        line: mark.line(),
                        column: mark.col() + 1,
                    },
                ));
                if anchor != 0 {
                    self.anchors.insert(anchor, id);
                }
                id
            }
        }
        impl MarkedEventReceiver for Builder {
            fn on_event(&mut self, event: Event, mark: Marker) {
                match event {
                    Event::Scalar(value, style, anchor, tag) => {
                        let tagged = tag.as_ref().is_some_and(is_enum_tag);
                        let id = self.push(
                            Content::Scalar {
                                value,
                                style,
                                tagged,
                            },
                            mark,
                            anchor,
                        );
                        self.attach(id);
                    }
                    Event::SequenceStart(anchor, ref tag)
                    | Event::MappingStart(anchor, ref tag) => {
                        let content = if matches!(event, Event::SequenceStart(..)) {
                            Content::Seq(Vec::new())
                        } else {
                            Content::Map(Vec::new())
                        };
                        if tag.as_ref().is_some_and(is_enum_tag) {
                            // serde_yaml reads `!Tag` collections as enum variants: not walked.
                            self.broken = true;
                        }
                        let id = self.push(content, mark, anchor);
                        self.attach(id);
                        self.stack.push((id, None));
                    }
                    Event::SequenceEnd | Event::MappingEnd => {
                        // yaml-rust2 marks a block mapping at its first `:`; libyaml (so
                        // serde_yaml) at its first key.
                        if let Some((id, _)) = self.stack.pop() {
                            if let Content::Map(entries) = &self.nodes[id].0 {
                                if let Some(&(key, _)) = entries.first() {
                                    let key_pos = self.nodes[key].1;
                                    if key_pos < self.nodes[id].1 {
                                        self.nodes[id].1 = key_pos;
                                    }
                                }
                            }
                        }
                    }
                    Event::Alias(anchor) => match self.anchors.get(&anchor) {
                        Some(&id) => self.attach(id),
                        None => self.broken = true,
                    },
                    _ => {}
                }
            }
        }
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        parser.load(&mut builder, false).ok()?;
        if builder.broken {
            return None;
        }
        let mut tree = Tree {
            root: builder.root?,
            nodes: builder.nodes,
        };
        tree.place_empty_values(text);
        Some(tree)
    }
}

impl Tree {
    /// yaml-rust2 marks an empty value (`metadata:` and nothing) where the next token starts;
    /// libyaml, right after its key's `:`. Moves such values there.
    fn place_empty_values(&mut self, text: &str) {
        let lines: Vec<&str> = text.lines().collect();
        let mut moves = Vec::new();
        for (content, _) in &self.nodes {
            let Content::Map(entries) = content else {
                continue;
            };
            for &(key, value) in entries {
                let (Content::Scalar { value: k, .. }, key_pos) = &self.nodes[key] else {
                    continue;
                };
                let is_empty = matches!(
                    &self.nodes[value].0,
                    Content::Scalar { value, style: TScalarStyle::Plain, .. } if value.is_empty()
                );
                let Some(line) = lines.get(key_pos.line.wrapping_sub(1)) else {
                    continue;
                };
                if !is_empty {
                    continue;
                }
                let after_key = key_pos.column - 1 + k.chars().count();
                if let Some(colon) = line.chars().skip(after_key).position(|c| c == ':') {
                    let column = after_key + colon + 2;
                    moves.push((
                        value,
                        Pos {
                            line: key_pos.line,
                            column,
                        },
                    ));
                }
            }
        }
        for (node, pos) in moves {
            self.nodes[node].1 = pos;
        }
    }
}

/// `!Name` (serde_yaml's enum tags); standard `!!str` and friends are not enum tags.
fn is_enum_tag(tag: &Tag) -> bool {
    tag.handle == "!" && !tag.suffix.is_empty()
}

// ---------------------------------------------------------------------------------------------
// Errors and the state shared by the walks.

/// What a type's error asks for, so the next walk gets past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Fix {
    /// Skip this key's entry.
    SkipKey(usize),
    /// Read this node as a wildcard.
    Wildcard(usize),
    /// Give this map a wildcard entry for the field.
    Supply(usize, &'static str),
}

#[derive(Debug)]
struct Site {
    pos: Pos,
    path: String,
    fix: Fix,
}

#[derive(Debug)]
enum Kind {
    Other,
    Missing(&'static str),
    Duplicate,
    Unknown(Option<&'static str>),
}

/// The error type of the walking deserializer: serde's message plus where it arose.
#[derive(Debug)]
struct Error {
    message: String,
    kind: Kind,
    site: Option<Site>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self {
            message: msg.to_string(),
            kind: Kind::Other,
            site: None,
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let suggestion = suggest::closest(field, expected.iter().copied());
        let mut error = Self::custom(format_args!(
            "unknown field `{field}`, {}{}",
            OneOf(expected, "fields"),
            suffix(suggestion)
        ));
        error.kind = Kind::Unknown(suggestion);
        error
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        let suggestion = suggest::closest(variant, expected.iter().copied());
        Self::custom(format_args!(
            "unknown variant `{variant}`, {}{}",
            OneOf(expected, "variants"),
            suffix(suggestion)
        ))
    }

    fn missing_field(field: &'static str) -> Self {
        let mut error = Self::custom(format_args!("missing field `{field}`"));
        error.kind = Kind::Missing(field);
        error
    }

    fn duplicate_field(field: &'static str) -> Self {
        let mut error = Self::custom(format_args!("duplicate field `{field}`"));
        error.kind = Kind::Duplicate;
        error
    }
}

fn suffix(suggestion: Option<&str>) -> String {
    suggestion
        .map(|c| format!("; did you mean `{c}`?"))
        .unwrap_or_default()
}

/// serde's wording of a list of names: "expected `a`", "expected `a` or `b`", "expected one of
/// `a`, `b`, `c`", "there are no fields".
struct OneOf(&'static [&'static str], &'static str);

impl fmt::Display for OneOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [] => write!(f, "there are no {}", self.1),
            [a] => write!(f, "expected `{a}`"),
            [a, b] => write!(f, "expected `{a}` or `{b}`"),
            names => {
                f.write_str("expected one of ")?;
                for (i, name) in names.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "`{name}`")?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Default)]
struct Ctx {
    found: BTreeSet<ShapeError>,
    /// Missing-field errors implied by an unknown field's "did you mean" in the same map.
    hidden: BTreeSet<ShapeError>,
    skipped_keys: HashSet<usize>,
    wildcards: HashSet<usize>,
    supplied: HashMap<usize, Vec<&'static str>>,
    /// (map, field) pairs some unknown key of the map was taken for.
    suggested: HashSet<(usize, &'static str)>,
    visits: usize,
}

impl Ctx {
    fn found(&mut self, pos: Pos, path: &str, message: String) {
        self.found.insert(ShapeError {
            pos,
            path: path.to_owned(),
            message,
        });
    }

    /// Records a type's error and patches its site; false when there is nothing left to patch
    /// (the walk would fail the same way again).
    fn record_and_fix(&mut self, kind: Kind, message: String, site: Site) -> bool {
        let Site { pos, path, fix } = site;
        let error = ShapeError { pos, path, message };
        let progress = match fix {
            Fix::SkipKey(key) => self.skipped_keys.insert(key),
            Fix::Wildcard(node) => self.wildcards.insert(node),
            Fix::Supply(map, field) => {
                let fields = self.supplied.entry(map).or_default();
                let new = !fields.contains(&field);
                fields.push(field);
                new
            }
        };
        if let (Kind::Missing(field), Fix::Supply(map, _)) = (kind, fix) {
            if self.suggested.contains(&(map, field)) {
                self.hidden.insert(error.clone());
            }
        }
        self.found.insert(error);
        progress
    }
}

// ---------------------------------------------------------------------------------------------
// The deserializer over one node.

struct Node<'t, 'c> {
    tree: &'t Tree,
    ctx: &'c mut Ctx,
    id: usize,
    path: String,
    depth: usize,
    /// A map's key: its errors are placed by the map (at the key, with the map's path).
    is_key: bool,
}

impl<'t, 'c> Node<'t, 'c> {
    fn root(tree: &'t Tree, ctx: &'c mut Ctx) -> Self {
        Node {
            tree,
            ctx,
            id: tree.root,
            path: String::new(),
            depth: 0,
            is_key: false,
        }
    }

    fn pos(&self) -> Pos {
        self.tree.nodes[self.id].1
    }

    fn content(&self) -> &'t Content {
        &self.tree.nodes[self.id].0
    }

    /// Whether this node is read as a wildcard (patched, too deep, or over budget).
    fn is_wildcard(&mut self) -> bool {
        self.ctx.visits += 1;
        self.ctx.wildcards.contains(&self.id)
            || self.depth > MAX_DEPTH
            || self.ctx.visits > MAX_VISITS
    }

    /// Places a type's error at this node, unless an inner node already claimed it.
    fn here(&self, mut error: Error) -> Error {
        if error.site.is_none() && !self.is_key {
            error.site = Some(Site {
                pos: self.pos(),
                path: self.path.clone(),
                fix: Fix::Wildcard(self.id),
            });
        }
        error
    }

    /// serde_yaml's "invalid type" error for this node, recorded; the node then stands in as a
    /// wildcard so the walk continues.
    fn mismatch(&mut self, exp: &dyn Expected) {
        let unexpected = match self.content() {
            Content::Seq(_) => "sequence".to_owned(),
            Content::Map(_) => "map".to_owned(),
            Content::Scalar { value, style, .. } => {
                if *style == TScalarStyle::Plain {
                    describe_plain(value)
                } else {
                    Unexpected::Str(value).to_string()
                }
            }
        };
        let message = format!("invalid type: {unexpected}, expected {exp}");
        let (pos, path) = (self.pos(), self.path.clone());
        self.ctx.found(pos, &path, message);
    }

    fn plain(&self) -> Option<&'t str> {
        match self.content() {
            Content::Scalar {
                value,
                style: TScalarStyle::Plain,
                ..
            } => Some(value),
            _ => None,
        }
    }

    fn is_empty_plain(&self) -> bool {
        self.plain().is_some_and(str::is_empty)
    }

    fn child(&mut self, id: usize, path: String) -> Node<'t, '_> {
        Node {
            tree: self.tree,
            ctx: self.ctx,
            id,
            path,
            depth: self.depth + 1,
            is_key: false,
        }
    }

    fn visit_map<'de, V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Error> {
        let entries: &'t [(usize, usize)] = match self.content() {
            Content::Map(entries) => entries,
            _ => &[],
        };
        let supplied = self.ctx.supplied.get(&self.id).cloned().unwrap_or_default();
        let mut access = Entries {
            node: &mut self,
            entries,
            next: 0,
            supplied,
            value: None,
            last_key: None,
        };
        let result = visitor.visit_map(&mut access);
        let last_key = access.last_key;
        result.map_err(|mut error| {
            if error.site.is_none() {
                let fix = match (&error.kind, last_key) {
                    (Kind::Missing(field), _) => Fix::Supply(self.id, field),
                    (Kind::Duplicate, Some(key)) => Fix::SkipKey(key),
                    _ => Fix::Wildcard(self.id),
                };
                error.site = Some(Site {
                    pos: self.pos(),
                    path: self.path.clone(),
                    fix,
                });
            }
            error
        })
    }
}

/// serde_yaml's reading of an unquoted scalar, as serde's `Unexpected` words it.
fn describe_plain(value: &str) -> String {
    if value.is_empty() || matches!(value, "null" | "Null" | "NULL" | "~") {
        return Unexpected::Unit.to_string();
    }
    if let Some(b) = parse_bool(value) {
        return Unexpected::Bool(b).to_string();
    }
    if let Some(i) = parse_int(value) {
        return match i {
            Int::Unsigned(u) => Unexpected::Unsigned(u).to_string(),
            Int::Signed(i) => Unexpected::Signed(i).to_string(),
        };
    }
    if let Some(f) = parse_float(value) {
        return Unexpected::Float(f).to_string();
    }
    Unexpected::Str(value).to_string()
}

fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

enum Int {
    Unsigned(u64),
    Signed(i64),
}

/// Decimal, `0x`, `0o` and `0b` integers as serde_yaml reads them (a leading zero before more
/// digits makes a string, per YAML 1.2).
fn parse_int(value: &str) -> Option<Int> {
    let (negative, body) = match value.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, value.strip_prefix('+').unwrap_or(value)),
    };
    if body.starts_with(['+', '-']) {
        return None;
    }
    let (radix, digits) = if let Some(d) = body.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = body.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = body.strip_prefix("0b") {
        (2, d)
    } else {
        if body.len() > 1 && body.starts_with('0') && body.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        (10, body)
    };
    if digits.starts_with(['+', '-']) {
        return None;
    }
    if negative {
        i64::from_str_radix(&format!("-{digits}"), radix)
            .ok()
            .map(Int::Signed)
    } else {
        u64::from_str_radix(digits, radix).ok().map(Int::Unsigned)
    }
}

fn parse_float(value: &str) -> Option<f64> {
    let body = value.strip_prefix('+').unwrap_or(value);
    match body {
        ".inf" | ".Inf" | ".INF" => return Some(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Some(f64::NAN),
        _ => {}
    }
    if body.len() > 1
        && body.trim_start_matches('-').starts_with('0')
        && body.trim_start_matches('-')[1..]
            .bytes()
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    body.parse::<f64>().ok().filter(|f| f.is_finite())
}

struct Entries<'n, 't, 'c> {
    node: &'n mut Node<'t, 'c>,
    entries: &'t [(usize, usize)],
    next: usize,
    supplied: Vec<&'static str>,
    /// The value node of the key just read; `None` for a supplied field.
    value: Option<Option<(usize, String)>>,
    last_key: Option<usize>,
}

impl<'de> de::MapAccess<'de> for Entries<'_, '_, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        while let Some(&(key, value)) = self.entries.get(self.next) {
            self.next += 1;
            if self.node.ctx.skipped_keys.contains(&key) {
                continue;
            }
            let key_text = match &self.node.tree.nodes[key].0 {
                Content::Scalar { value, .. } => Some(value.as_str()),
                _ => None,
            };
            let value_path = match (key_text, self.node.path.is_empty()) {
                (Some(k), true) => k.to_owned(),
                (Some(k), false) => format!("{}.{k}", self.node.path),
                (None, true) => "?".to_owned(),
                (None, false) => format!("{}.?", self.node.path),
            };
            self.last_key = Some(key);
            self.value = Some(Some((value, value_path)));
            // serde_yaml reports a key's errors at the key, with the map's path.
            let map = self.node.id;
            let path = self.node.path.clone();
            let mut key_node = self.node.child(key, path);
            key_node.is_key = true;
            let result = seed.deserialize(key_node);
            return match result {
                Ok(k) => Ok(Some(k)),
                Err(mut error) => {
                    if error.site.is_none() {
                        if let Kind::Unknown(Some(field)) = error.kind {
                            self.node.ctx.suggested.insert((map, field));
                        }
                        error.site = Some(Site {
                            pos: self.node.tree.nodes[key].1,
                            path: self.node.path.clone(),
                            fix: Fix::SkipKey(key),
                        });
                    }
                    Err(error)
                }
            };
        }
        if let Some(field) = self.supplied.pop() {
            self.value = Some(None);
            return seed.deserialize(field.into_deserializer()).map(Some);
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.value.take() {
            Some(Some((value, path))) => seed.deserialize(self.node.child(value, path)),
            _ => seed.deserialize(Wildcard),
        }
    }
}

struct Items<'n, 't, 'c> {
    node: &'n mut Node<'t, 'c>,
    items: &'t [usize],
    next: usize,
}

impl<'de> de::SeqAccess<'de> for Items<'_, '_, '_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let Some(&item) = self.items.get(self.next) else {
            return Ok(None);
        };
        let path = format!("{}[{}]", self.node.path, self.next);
        self.next += 1;
        seed.deserialize(self.node.child(item, path)).map(Some)
    }
}

/// A unit variant named by a scalar (serde_yaml's `UnitVariantAccess`).
struct Variant<'t, 'c>(Node<'t, 'c>);

impl<'de, 't, 'c> de::EnumAccess<'de> for Variant<'t, 'c> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        let Variant(node) = self;
        let value = match node.content() {
            Content::Scalar { value, .. } => value.clone(),
            _ => String::new(),
        };
        let variant = seed.deserialize(de::value::StringDeserializer::<Error>::new(value))?;
        Ok((variant, Variant(node)))
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'_, '_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _seed: T) -> Result<T::Value, Error> {
        Err(de::Error::invalid_type(
            Unexpected::UnitVariant,
            &"newtype variant",
        ))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _visitor: V) -> Result<V::Value, Error> {
        Err(de::Error::invalid_type(
            Unexpected::UnitVariant,
            &"tuple variant",
        ))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Error> {
        Err(de::Error::invalid_type(
            Unexpected::UnitVariant,
            &"struct variant",
        ))
    }
}

macro_rules! wildcard_if_patched {
    ($self:ident, $method:ident($($arg:expr),*)) => {
        if $self.is_wildcard() {
            return Wildcard.$method($($arg),*);
        }
    };
}

macro_rules! forward {
    ($($method:ident => $to:ident),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.$to(visitor)
        })*
    };
}

impl<'de> de::Deserializer<'de> for Node<'_, '_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Error> {
        wildcard_if_patched!(self, deserialize_any(visitor));
        let result = match self.content() {
            Content::Seq(items) => {
                let items: &[usize] = items;
                let mut access = Items {
                    node: &mut self,
                    items,
                    next: 0,
                };
                visitor.visit_seq(&mut access)
            }
            Content::Map(_) => return self.visit_map(visitor),
            Content::Scalar { value, style, .. } => {
                if *style != TScalarStyle::Plain {
                    visitor.visit_str(value)
                } else if value.is_empty()
                    || matches!(value.as_str(), "null" | "Null" | "NULL" | "~")
                {
                    visitor.visit_unit()
                } else if let Some(b) = parse_bool(value) {
                    visitor.visit_bool(b)
                } else if let Some(i) = parse_int(value) {
                    match i {
                        Int::Unsigned(u) => visitor.visit_u64(u),
                        Int::Signed(i) => visitor.visit_i64(i),
                    }
                } else if let Some(f) = parse_float(value) {
                    visitor.visit_f64(f)
                } else {
                    visitor.visit_str(value)
                }
            }
        };
        result.map_err(|e| self.here(e))
    }

    fn deserialize_bool<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Error> {
        wildcard_if_patched!(self, deserialize_bool(visitor));
        match self.plain().and_then(parse_bool) {
            Some(b) => visitor.visit_bool(b).map_err(|e| self.here(e)),
            None => {
                self.mismatch(&visitor);
                Wildcard.deserialize_bool(visitor)
            }
        }
    }

    fn deserialize_i64<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Error> {
        wildcard_if_patched!(self, deserialize_i64(visitor));
        match self.plain().and_then(parse_int) {
            Some(Int::Unsigned(u)) => visitor.visit_u64(u).map_err(|e| self.here(e)),
            Some(Int::Signed(i)) => visitor.visit_i64(i).map_err(|e| self.here(e)),
            None => {
                self.mismatch(&visitor);
                Wildcard.deserialize_i64(visitor)
            }
        }
    }

    fn deserialize_f64<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Error> {
        wildcard_if_patched!(self, deserialize_f64(visitor));
        let plain = self.plain();
        let number = plain.and_then(|v| match parse_int(v) {
            Some(Int::Unsigned(u)) => Some(u as f64),
            Some(Int::Signed(i)) => Some(i as f64),
            None => parse_float(v),
        });
        match number {
            Some(f) => visitor.visit_f64(f).map_err(|e| self.here(e)),
            None => {
                self.mismatch(&visitor);
                Wildcard.deserialize_f64(visitor)
            }
        }
    }

    forward! {
        deserialize_i8 => deserialize_i64,
        deserialize_i16 => deserialize_i64,
        deserialize_i32 => deserialize_i64,
        deserialize_u8 => deserialize_i64,
        deserialize_u16 => deserialize_i64,
        deserialize_u32 => deserialize_i64,
        deserialize_u64 => deserialize_i64,
        deserialize_f32 => deserialize_f64,
        deserialize_char => deserialize_str,
        deserialize_string => deserialize_str,
        deserialize_identifier => deserialize_str,
        deserialize_bytes => deserialize_str,
        deserialize_byte_buf => deserialize_str,
        deserialize_seq => deserialize_seq_inner,
    }

    fn deserialize_str<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Error> {
        wildcard_if_patched!(self, deserialize_str(visitor));
        match self.content() {
            Content::Scalar { value, .. } => visitor.visit_str(value).map_err(|e| self.here(e)),
            _ => {
                self.mismatch(&visitor);
                Wildcard.deserialize_str(visitor)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Error> {
        wildcard_if_patched!(self, deserialize_option(visitor));
        let none = self
            .plain()
            .is_some_and(|v| v.is_empty() || matches!(v, "null" | "Null" | "NULL" | "~"));
        if none {
            visitor.visit_none().map_err(|e| self.here(e))
        } else {
            // Errors inside are placed by the inner reads; `self` is consumed by them.
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Error> {
        wildcard_if_patched!(self, deserialize_unit(visitor));
        let unit = self
            .plain()
            .is_some_and(|v| v.is_empty() || matches!(v, "null" | "Null" | "NULL" | "~"));
        if unit {
            visitor.visit_unit().map_err(|e| self.here(e))
        } else {
            self.mismatch(&visitor);
            Wildcard.deserialize_unit(visitor)
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq_inner(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq_inner(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_struct("", &[], visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        wildcard_if_patched!(self, deserialize_struct("", fields, visitor));
        if matches!(self.content(), Content::Map(_)) || self.is_empty_plain() {
            self.visit_map(visitor)
        } else {
            self.mismatch(&visitor);
            Wildcard.deserialize_struct("", fields, visitor)
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        mut self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        wildcard_if_patched!(self, deserialize_enum(name, variants, visitor));
        match self.content() {
            Content::Scalar { tagged: false, .. } => {
                let (pos, path, id) = (self.pos(), self.path.clone(), self.id);
                visitor.visit_enum(Variant(self)).map_err(|mut e| {
                    if e.site.is_none() {
                        e.site = Some(Site {
                            pos,
                            path,
                            fix: Fix::Wildcard(id),
                        });
                    }
                    e
                })
            }
            Content::Scalar { .. } => Wildcard.deserialize_enum(name, variants, visitor),
            _ => {
                self.mismatch(&"a YAML tag starting with '!'");
                Wildcard.deserialize_enum(name, variants, visitor)
            }
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

impl<'de> Node<'_, '_> {
    fn deserialize_seq_inner<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Error> {
        use de::Deserializer as _;
        if self.is_wildcard() {
            return Wildcard.deserialize_seq(visitor);
        }
        let items: &[usize] = match self.content() {
            Content::Seq(items) => items,
            _ if self.is_empty_plain() => &[],
            _ => {
                self.mismatch(&visitor);
                return Wildcard.deserialize_seq(visitor);
            }
        };
        let mut access = Items {
            node: &mut self,
            items,
            next: 0,
        };
        let result = visitor.visit_seq(&mut access);
        result.map_err(|e| self.here(e))
    }
}

// ---------------------------------------------------------------------------------------------
// The wildcard: whatever the type asks for, never an error.

struct Wildcard;

struct WildcardFields(&'static [&'static str]);

impl<'de> de::MapAccess<'de> for WildcardFields {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.0.split_first() {
            Some((field, rest)) => {
                self.0 = rest;
                seed.deserialize(field.into_deserializer()).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(Wildcard)
    }
}

struct WildcardItems(usize);

impl<'de> de::SeqAccess<'de> for WildcardItems {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        if self.0 == 0 {
            return Ok(None);
        }
        self.0 -= 1;
        seed.deserialize(Wildcard).map(Some)
    }
}

struct WildcardVariant(&'static str);

impl<'de> de::EnumAccess<'de> for WildcardVariant {
    type Error = Error;
    type Variant = Wildcard;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Wildcard), Error> {
        let variant = seed.deserialize(self.0.into_deserializer())?;
        Ok((variant, Wildcard))
    }
}

impl<'de> de::VariantAccess<'de> for Wildcard {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(Wildcard)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(WildcardItems(len))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_map(WildcardFields(fields))
    }
}

impl<'de> de::Deserializer<'de> for Wildcard {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bool(false)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(0)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f64(0.0)
    }

    forward! {
        deserialize_i8 => deserialize_i64,
        deserialize_i16 => deserialize_i64,
        deserialize_i32 => deserialize_i64,
        deserialize_u8 => deserialize_i64,
        deserialize_u16 => deserialize_i64,
        deserialize_u32 => deserialize_i64,
        deserialize_u64 => deserialize_i64,
        deserialize_f32 => deserialize_f64,
        deserialize_char => deserialize_str,
        deserialize_string => deserialize_str,
        deserialize_identifier => deserialize_str,
        deserialize_bytes => deserialize_str,
        deserialize_byte_buf => deserialize_str,
        deserialize_unit => deserialize_any,
        deserialize_ignored_any => deserialize_any,
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("")
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_none()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(WildcardItems(0))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(WildcardItems(len))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_seq(WildcardItems(len))
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_map(WildcardFields(&[]))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_map(WildcardFields(fields))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_enum(WildcardVariant(variants.first().copied().unwrap_or("")))
    }
}

#[cfg(test)]
mod tests {
    use crate::diagnostic::Diagnostic;
    use crate::load::shape_diagnostics;
    use crate::model::{Platform, Region, Stack, Workspace};
    use serde::de::DeserializeOwned;

    fn template(path: &str) -> String {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../state-repo-template/");
        std::fs::read_to_string(format!("{root}{path}")).expect("template file")
    }

    fn edit(text: &str, from: &str, to: &str) -> String {
        assert!(text.contains(from), "{from:?} not in the document");
        text.replacen(from, to, 1)
    }

    /// What loading reports for a broken document, as `line:column: message`.
    fn report<T: DeserializeOwned>(text: &str) -> Vec<String> {
        let err = serde_yaml::from_str::<T>(text)
            .err()
            .expect("the document should be invalid");
        shape_diagnostics::<T>("f", text, &err)
            .iter()
            .map(|d| format!("{}:{}: {}", d.line, d.column, d.message))
            .collect()
    }

    /// serde_yaml's own (first) error, in the same form.
    fn serde_first<T: DeserializeOwned>(text: &str) -> String {
        let err = serde_yaml::from_str::<T>(text).err().expect("invalid");
        let d: Diagnostic = crate::load::yaml_error("f", &err);
        format!("{}:{}: {}", d.line, d.column, d.message)
    }

    /// A document with one error is reported exactly as serde_yaml reports it: same position,
    /// path and words (plus a "did you mean" for a mistyped name).
    fn same_as_serde<T: DeserializeOwned>(text: &str) {
        let ours = report::<T>(text);
        let serde = serde_first::<T>(text);
        assert_eq!(ours.len(), 1, "{ours:#?} vs serde's {serde}");
        let ours = &ours[0];
        let ours_plain = ours.split("; did you mean").next().expect("split");
        assert_eq!(ours_plain, serde, "\n{text}");
    }

    #[test]
    fn one_error_reads_as_serde_yaml_words_it() {
        let w = template("workspaces/acme.yaml");
        for (from, to) in [
            ("  region: sgp-1", "  regoin: sgp-1"),
            (
                "    roleArn: arn:aws:iam::111111111111:role/cogrion-provisioner\n",
                "",
            ),
            ("  region: sgp-1\n", ""),
            ("  deletionPolicy: Retain", "  deletionPolicy: [Retain]"),
            ("  deletionPolicy: Retain", "  deletionPolicy: {a: 1}"),
            ("  deletionPolicy: Retain", "  deletionPolicy: Retian"),
            ("    - name: bff", "    - nam: bff"),
            ("    - name: bff", "    - bff"),
            ("  environment: prod", "  environment: [prod]"),
            ("  environment: prod", "  environment: {a: b}"),
            ("kind: Workspace", "kind: Region"),
            ("apiVersion: cplane/v1", "apiVersion: cplane/v2"),
            ("metadata:\n  name: acme", "metadata: {}"),
            ("metadata:\n  name: acme", "metadata:"),
            ("metadata:\n  name: acme", "metadata: 7"),
            (
                "  account: acme-corp",
                "  account: acme-corp\n  region: sgp-2",
            ),
            ("  account: acme-corp", "  account: acme-corp\n  owner: bob"),
            ("  account: acme-corp", "  account: [acme-corp]"),
            (
                "  stacks:\n    - name: bff",
                "  stacks:\n  - name: bff\n    colour: red\n  - name: x",
            ),
        ] {
            same_as_serde::<Workspace>(&edit(&w, from, to));
        }
        let r = template("regions/sgp-1.yaml");
        for (from, to) in [
            ("  status: live", "  status: alive"),
            ("  status: live", "  status: 3"),
            ("  status: live", "  status: ~"),
            ("  environments: [dev, prod]", "  environments: dev"),
            (
                "  environments: [dev, prod]",
                "  environments: [dev, [prod]]",
            ),
            ("  environments: [dev, prod]", "  environments: 1.5"),
            ("  environments: [dev, prod]", "  environments: true"),
            ("  environments: [dev, prod]", "  environments: -3"),
        ] {
            same_as_serde::<Region>(&edit(&r, from, to));
        }
        let s = template("stacks/trino/stack.yaml");
        for (from, to) in [
            ("  required: false", "  required: maybe"),
            ("  required: false", "  required: 1"),
            ("  required: false", "  required: \"true\""),
            ("      type: integer", "      type: int"),
            ("      type: integer", "      typ: integer"),
            (
                "  description: Distributed SQL query engine.",
                "  description: [a]",
            ),
        ] {
            same_as_serde::<Stack>(&edit(&s, from, to));
        }
        let p = template("cplane.yaml");
        for (from, to) in [
            ("  environments: [dev, prod]", "  environments: {dev: 1}"),
            ("  baseDomain: cogrion.com\n", ""),
            ("  bucketPrefix: cogrion", "  bucketPrefix: {a: 1}"),
        ] {
            same_as_serde::<Platform>(&edit(&p, from, to));
        }
    }

    #[test]
    fn every_error_of_a_document_is_reported_each_at_its_place() {
        let w = template("workspaces/acme.yaml");
        let mut text = w.clone();
        for (from, to) in [
            ("  environment: prod", "  enviroment: prod"),
            ("  account: acme-corp", "  account: acme-corp\n  owner: bob"),
            ("    externalId: acme-7f3c2a9e\n", ""),
            ("  deletionPolicy: Retain", "  deletionPolicy: Retian"),
            ("    - name: trino", "    - name: [trino]"),
            ("    - name: bff", "    - name: bff\n      colour: red"),
        ] {
            text = edit(&text, from, to);
        }
        let fields =
            "expected one of `region`, `environment`, `account`, `aws`, `deletionPolicy`, `stacks`, `suspend`, `syncWindows`";
        assert_eq!(
            report::<Workspace>(&text),
            [
                format!("10:3: spec: unknown field `enviroment`, {fields}; did you mean `environment`?"),
                format!("12:3: spec: unknown field `owner`, {fields}"),
                "14:5: spec.aws: missing field `externalId`".to_owned(),
                "16:19: spec.deletionPolicy: unknown variant `Retian`, expected `Retain` or `Delete`; did you mean `Retain`?".to_owned(),
                "19:7: spec.stacks[0]: unknown field `colour`, expected `name` or `values`".to_owned(),
                "25:13: spec.stacks[1].name: invalid type: sequence, expected a string".to_owned(),
            ]
        );
    }

    #[test]
    fn every_missing_field_is_reported() {
        let text =
            "apiVersion: cplane/v1\nkind: Workspace\nmetadata: {name: acme}\nspec:\n  aws: {}\n";
        assert_eq!(
            report::<Workspace>(text),
            [
                "5:3: spec: missing field `account`",
                "5:3: spec: missing field `environment`",
                "5:3: spec: missing field `region`",
                "5:8: spec.aws: missing field `accountId`",
                "5:8: spec.aws: missing field `externalId`",
                "5:8: spec.aws: missing field `roleArn`",
            ]
        );
    }

    #[test]
    fn a_duplicate_key_is_reported_once_and_the_rest_still_checked() {
        let w = template("workspaces/acme.yaml");
        let text = edit(
            &w,
            "  account: acme-corp",
            "  account: acme-corp\n  region: [x]\n  account: b",
        );
        let ours = report::<Workspace>(&text);
        assert!(ours.contains(&serde_first::<Workspace>(&text)), "{ours:#?}");
        assert!(
            ours.iter().any(|e| e.contains("duplicate field `account`")),
            "{ours:#?}"
        );
    }

    #[test]
    fn syntax_errors_and_aliases_fall_back_to_serde_yaml_error() {
        let w = template("workspaces/acme.yaml");
        let bad = edit(
            &w,
            "  environment: prod",
            "  environment: prod\n    account: x",
        );
        assert_eq!(report::<Workspace>(&bad), [serde_first::<Workspace>(&bad)]);
        let several = format!("{w}---\n{w}");
        assert_eq!(
            report::<Workspace>(&several),
            [serde_first::<Workspace>(&several)]
        );
        // Aliases are followed (shared, not copied), within a budget: a "billion laughs"
        // document costs little.
        let mut laughs = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            laughs.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let start = std::time::Instant::now();
        let errors = crate::shape::errors::<Workspace>(&laughs).expect("well-formed");
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        assert!(!errors.is_empty());
    }
}
