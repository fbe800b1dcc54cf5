//! Parsing a tenant document once for every workspace id: the generalized form, its
//! soundness argument, and the off switch.

/// The placeholder character: a letter no YAML null, boolean or number contains.
pub(super) const PLACEHOLDER: char = 'Z';

/// Generalizes rendered documents for one workspace id: the id replaced by a placeholder of the
/// same length made of [`PLACEHOLDER`] characters (`acme` → `ZZZZ`, so `bff.w-acme.sgp-1.cogrion.com` →
/// `bff.w-ZZZZ.sgp-1.cogrion.com`).
///
/// Guarantee: when [`Generalizer::of`] gives `text` and [`Generalizer::specialize`] succeeds,
/// `specialize(parse(text)) == parse(doc)`. Why this holds:
/// - The id is a DNS label (`[a-z0-9-]`, no leading or trailing `-`); the placeholder has its
///   length, so lines, columns and YAML's 1024-character limit on simple keys are unchanged.
///   Letters, digits and an inner `-` mean the same to YAML's scanner, so both texts tokenize
///   alike, except where YAML reads letters or digits as syntax. In a tag (`!!str`) or a
///   directive (`%TAG`) a renamed id could change a value's type: documents with the id there
///   are not generalized ([`in_tag_or_directive`]). In a block scalar header (`|2`) or an
///   escape (`\n`) the placeholder is invalid (no indentation indicator or escape contains a
///   `Z`), so the generalized text fails to parse and the document is parsed as it is.
/// - `doc` contains no `Z` at all (checked), so every `Z` of `text` comes from a replaced id:
///   the placeholder occurs exactly where the id was, and anchor names stay distinct.
/// - A string's value is its text up to whitespace folding and escapes. The id contains no
///   whitespace, and documents with an escape that spells a `Z` (`\x5a`, `\u005A`, ...) are
///   not generalized: every `Z` of a parsed value is a placeholder.
/// - A plain scalar containing `Z` is always a string (no null, boolean or number contains a
///   `Z`), but the same scalar with the id back might not be (`1234`, `0xdead`). So
///   [`Generalizer::specialize`] refuses any specialized string that YAML could read as
///   something else ([`could_be_non_string`]), and the document is parsed as it is.
pub(super) struct Generalizer<'a> {
    pub(super) id: &'a str,
    pub(super) placeholder: String,
    pub(super) finder: memchr::memmem::Finder<'a>,
}

impl<'a> Generalizer<'a> {
    /// `None` when `id` is not a DNS label (then nothing is generalized). The searches are
    /// prepared once, for every document of a cluster.
    pub(super) fn new(id: &'a str) -> Option<Self> {
        cplane_schema::domain::is_dns_label(id).then(|| Self {
            id,
            placeholder: PLACEHOLDER.to_string().repeat(id.len()),
            finder: memchr::memmem::Finder::new(id),
        })
    }

    /// Where the id occurs in `doc` (byte offsets, not overlapping), or `None` when the
    /// guarantee could not be given.
    pub(super) fn occurrences(&self, doc: &str) -> Option<Vec<usize>> {
        if memchr::memchr(PLACEHOLDER as u8, doc.as_bytes()).is_some() || escapes_placeholder(doc) {
            return None;
        }
        let mut at = Vec::new();
        for found in self.finder.find_iter(doc.as_bytes()) {
            if in_tag_or_directive(doc, found) {
                return None;
            }
            at.push(found);
        }
        Some(at)
    }

    /// `doc` with the placeholder at `at` (from [`Generalizer::occurrences`]).
    pub(super) fn generalize(&self, doc: &str, at: &[usize]) -> String {
        let mut text = String::with_capacity(doc.len());
        let mut copied = 0;
        for &found in at {
            text.push_str(&doc[copied..found]);
            text.push_str(&self.placeholder);
            copied = found + self.id.len();
        }
        text.push_str(&doc[copied..]);
        text
    }

    /// `doc` generalized, or `None` when the guarantee could not be given. A document that
    /// does not mention the id is its own generalization.
    pub(super) fn of<'d>(&self, doc: &'d str) -> Option<std::borrow::Cow<'d, str>> {
        let at = self.occurrences(doc)?;
        Some(if at.is_empty() {
            doc.into()
        } else {
            self.generalize(doc, &at).into()
        })
    }

    /// The value parsed from the generalized text with the id put back, or `None` when a
    /// string with the id back could be read by YAML as a null, boolean or number.
    pub(super) fn specialize(&self, value: &serde_json::Value) -> Option<serde_json::Value> {
        use serde_json::Value as V;
        let put_back = |s: &str| {
            if !s.contains(PLACEHOLDER) {
                return Some(s.to_owned());
            }
            let back = s.replace(&self.placeholder, self.id);
            (!could_be_non_string(&back)).then_some(back)
        };
        Some(match value {
            V::String(s) => V::String(put_back(s)?),
            V::Array(items) => V::Array(
                items
                    .iter()
                    .map(|v| self.specialize(v))
                    .collect::<Option<_>>()?,
            ),
            V::Object(map) => V::Object(
                map.iter()
                    .map(|(k, v)| Some((put_back(k)?, self.specialize(v)?)))
                    .collect::<Option<_>>()?,
            ),
            other => other.clone(),
        })
    }
}

/// Whether `doc` has a `\x`, `\u` or `\U` escape that spells the placeholder character (looked
/// for everywhere, not only in double-quoted scalars: a false alarm only costs a parse).
pub(super) fn escapes_placeholder(doc: &str) -> bool {
    let bytes = doc.as_bytes();
    memchr::memchr_iter(b'\\', bytes).any(|i| {
        let digits = match bytes.get(i + 1) {
            Some(b'x') => 2,
            Some(b'u') => 4,
            Some(b'U') => 8,
            _ => return false,
        };
        doc.get(i + 2..i + 2 + digits)
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            == Some(u32::from(PLACEHOLDER))
    })
}

/// Whether the id found at byte `at` of `doc` is inside a tag (`!!str`, `!acme`,
/// `!<tag:...>`) or on a directive line (`%TAG`), where renaming it would change how YAML types
/// a value rather than the value's text. Conservative: a `!` anywhere earlier in the same run of
/// non-blank characters counts (a verbatim tag `!<tag:yaml.org,2002:int>` has no blanks, but
/// may have `,`).
pub(super) fn in_tag_or_directive(doc: &str, at: usize) -> bool {
    let before = &doc.as_bytes()[..at];
    let token = before.iter().rev().take_while(|b| !b.is_ascii_whitespace());
    let line_start = memchr::memrchr(b'\n', before).map_or(0, |i| i + 1);
    token.clone().any(|&b| b == b'!') || before.get(line_start) == Some(&b'%')
}

/// Whether YAML could read `s`, as a plain scalar, as anything but a string. Conservative: true
/// unless `s` has a character that no null (`~`, `null`), boolean (`true`, `yes`, `on`, ...) or
/// number (`0x1f`, `-1.5e3`, `.inf`, `NaN`, `1_000`, `1:30`) can contain.
pub(super) fn could_be_non_string(s: &str) -> bool {
    s.chars().all(|c| {
        c.is_ascii_digit()
            || "+-._:~".contains(c)
            || "abcdefilnorstuxy".contains(c.to_ascii_lowercase())
    })
}
